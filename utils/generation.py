"""Sampling text from a trained language model (temperature and top-k)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


@torch.no_grad()
def generate(model: nn.Module, idx: torch.Tensor, max_new_tokens: int, block_size: int,
             temperature: float = 0.8, top_k: int | None = 40, generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample max_new_tokens after idx (B, T) from any model mapping (B, T) ids to (B, T, V) logits."""
    if temperature <= 0:
        raise ValueError(f"temperature={temperature} must be > 0")
    for _ in range(max_new_tokens):
        logits = model(idx[:, -block_size:])[:, -1, :].float() / temperature  # (B, V)
        if top_k is not None:
            kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]  # (B, 1)
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = F.softmax(logits, dim=-1)
        idx = torch.cat([idx, torch.multinomial(probs, 1, generator=generator)], dim=1)  # (B, T+1)
    return idx
