"""The attention check: each layer's attention weights on a sample text, seen without changing the model's code.

While the sample runs, torch.nn.functional.scaled_dot_product_attention is replaced by a wrapper that
calls the original and also recomputes the weights from q and k (with the same mask, causal flag and
scale); nn.MultiheadAttention modules that return their weights are read by a forward hook. Models
calling either (the templates, Hugging Face models in their default "sdpa" attention, most hand-built
transformers) are seen; a model that computes softmax(q k^T) itself is skipped with the reason.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from utils.inspection import plots
from utils.inspection.checks import evaluating
from utils.inspection.report import CheckResult
from utils.inspection.subject import Subject

SAMPLE_TOKENS = 32  # a heatmap stays readable up to about this many tokens
FUTURE_WEIGHT_WARN = 1e-3  # a language model's attention on later positions, summed per row


def attention_weights(q: torch.Tensor, k: torch.Tensor, attn_mask=None, is_causal: bool = False,
                      scale: Optional[float] = None, enable_gqa: bool = False) -> torch.Tensor:
    """softmax(q k^T * scale + mask): the weights scaled_dot_product_attention applies, (..., Tq, Tk)."""
    q, k = q.float(), k.float()
    if k.shape[-3:-2] != q.shape[-3:-2] and q.ndim == 4:  # grouped-query attention: fewer key heads
        k = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)
    scores = q @ k.transpose(-2, -1) * (scale if scale is not None else 1 / math.sqrt(q.shape[-1]))
    Tq, Tk = scores.shape[-2:]
    if is_causal:
        scores = scores.masked_fill(torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril().logical_not(),
                                    float("-inf"))
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool \
            else scores + attn_mask.float()
    return torch.softmax(scores, dim=-1).nan_to_num(0.0)


@contextmanager
def captured_attention(model: nn.Module):
    """Collect the weights of every attention call (first batch row, all heads) made inside the block."""
    calls: list[torch.Tensor] = []
    original = F.scaled_dot_product_attention

    def wrapper(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
        output = original(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                          scale=scale, **kwargs)
        with torch.no_grad():
            w = attention_weights(query, key, attn_mask, is_causal, scale, kwargs.get("enable_gqa", False))
        calls.append(w[0].detach().cpu() if w.ndim == 4 else w.detach().cpu())
        return output

    def hook(module, args, output):
        if isinstance(output, tuple) and len(output) > 1 and isinstance(output[1], torch.Tensor):
            w = output[1].detach().float().cpu()  # (B, [H,] Tq, Tk): need_weights=True
            calls.append(w[0] if w.ndim == 4 else w[:1])
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.MultiheadAttention)]
    F.scaled_dot_product_attention = wrapper
    try:
        yield calls
    finally:
        F.scaled_dot_product_attention = original
        for h in handles:
            h.remove()


def check_attention(s: Subject, folder: Optional[Path] = None) -> CheckResult:
    """Heatmaps of each layer's attention (averaged over heads) on the first tokens of a sample text."""
    T = min(SAMPLE_TOKENS, s.max_len, s.batch[0].shape[1])
    sample = tuple(t[:1, :T] if t.ndim == 2 else t[:1] for t in s.batch)
    with torch.no_grad(), evaluating(s.model), captured_attention(s.model) as calls:
        s.task.logits(s.model, sample)
    if not calls:
        return CheckResult("attention", "skipped", "the model calls neither F.scaled_dot_product_attention nor "
                           "nn.MultiheadAttention, so its attention cannot be seen without changing its code.")
    maps = [c.mean(dim=0) if c.ndim == 3 else c for c in calls]  # (T, T) per layer, averaged over heads
    tokens = _token_labels(s, sample[0][0].tolist())
    plot = plots.attention_plot(maps, tokens, folder / "attention.png") if folder else None
    numbers = {"layers": len(calls), "heads": [int(c.shape[0]) if c.ndim == 3 else 1 for c in calls],
               "tokens": len(tokens)}
    if s.is_lm:
        future = max(float(m.triu(1).sum(dim=-1).max()) for m in maps)
        numbers["future_weight"] = future
        if future > FUTURE_WEIGHT_WARN:
            return CheckResult("attention", "warn", f"{len(calls)} attention layers seen; a position puts "
                               f"{future:.2f} of its attention on later tokens (see the heatmaps).",
                               "mask the scores above the diagonal (is_causal=True).", numbers, plot)
    return CheckResult("attention", "pass", f"{len(calls)} attention layers seen on {len(tokens)} tokens of a "
                       "sample text.", numbers=numbers, plot=plot)


def _token_labels(s: Subject, ids: list[int]) -> list[str]:
    if s.tokenizer is None:
        return [str(i) for i in ids]
    return [repr(s.tokenizer.decode([i]))[1:-1][:8] for i in ids]
