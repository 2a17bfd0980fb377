"""Shared test fixtures: the repo root on sys.path, a small corpus and config, and a tiny LM that can
fake an fp16 overflow or a NaN loss on chosen steps."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from utils.config import WizardConfig  # noqa: E402


@pytest.fixture(scope="session")
def small_text(tmp_path_factory) -> Path:
    """The first 40 kB of the embedded corpus: ~1,100 training sequences of 32 characters."""
    path = tmp_path_factory.mktemp("data") / "small.txt"
    text = (REPO_ROOT / "utils/data/embedded/python_reference.txt").read_text(encoding="utf-8")
    path.write_text(text[:40_000], encoding="utf-8")
    return path


@pytest.fixture
def tiny_config(tmp_path, small_text) -> WizardConfig:
    """A run small enough to train in a few seconds on a CPU."""
    return WizardConfig(dataset_source="file", dataset_path=str(small_text), max_seq_len=32, batch_size=8,
                        max_steps=8, max_epochs=1, learning_rate=3e-3, warmup_ratio=0.0, log_every_n_steps=1,
                        output_dir=str(tmp_path / "run"))


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
