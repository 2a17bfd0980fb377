"""Shared test helpers: a tiny language model that can fake an fp16 overflow or a NaN loss on chosen steps."""

from __future__ import annotations

import pytest
import torch
from torch import nn


class _InfGrad(torch.autograd.Function):
    """Identity forward; the backward pass returns inf gradients, as an fp16 overflow does."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, float("inf"))


class TinyLM(nn.Module):
    """(B, T) ids -> (B, T, V) logits, a few thousand parameters so a CPU fp16 step takes milliseconds.

    Training forward calls are counted from 1 (one per optimizer step without accumulation); calls in
    `inf_grad_calls` get inf gradients (the GradScaler must skip that step), calls in `nan_loss_calls`
    give a NaN loss.
    """

    def __init__(self, vocab_size: int = 128, dim: int = 16, inf_grad_calls=(), nan_loss_calls=()):
        super().__init__()
        self.emb = nn.Embedding(vocab_size, dim)
        self.head = nn.Linear(dim, vocab_size)
        self.inf_grad_calls = set(inf_grad_calls)
        self.nan_loss_calls = set(nan_loss_calls)
        self.calls = 0

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.emb(idx))  # (B, T, V)
        if self.training:
            self.calls += 1
            if self.calls in self.inf_grad_calls:
                logits = _InfGrad.apply(logits)
            if self.calls in self.nan_loss_calls:
                logits = logits * float("nan")
        return logits


@pytest.fixture
def tiny_lm():
    return TinyLM
