"""A minimal training loop of the nanoGPT kind, written without the kit's builder, model or loaders: the
baseline that cannot move with the kit (bench/hand_loop.py shares the kit's model, loader and options).

Its own GPT of the kit's template shape (pre-norm blocks, fused QKV, GELU MLP, tied embeddings; the
same parameter count), its own character tokenizer of the same corpus, batches cut by index from one
token tensor, plain AdamW (betas 0.9/0.95, decay on matrices only), gradient clipping and the
kit's warmup + cosine schedule. fp32, on the CPU or one GPU. Used by bench/throughput.py.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

LAYERS = {"tiny": (4, 4, 128), "small": (6, 6, 384), "base": (12, 12, 768)}  # (layers, heads, width)


class Layer(nn.Module):
    """One transformer layer: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, heads: int, width: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.out = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.up, self.down = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, heads, T, C / heads)
        x = x + self.out(a.transpose(1, 2).reshape(B, T, C))
        return x + self.down(F.gelu(self.up(self.norm2(x))))


class TinyGPT(nn.Module):
    def __init__(self, vocab: int, context: int, layers: int, heads: int, width: int):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, width), nn.Embedding(context, width)
        self.layers = nn.Sequential(*(Layer(heads, width) for _ in range(layers)))
        self.norm = nn.LayerNorm(width)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.normal_(p, std=0.02)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.tok(ids) + self.pos(torch.arange(ids.size(1), device=ids.device))
        return F.linear(self.norm(self.layers(x)), self.tok.weight)  # tied output layer: (B, T, vocab)


def encode_chars(text: str) -> torch.Tensor:
    chars = sorted(set(text))
    index = {ch: i for i, ch in enumerate(chars)}
    return torch.tensor([index[ch] for ch in text], dtype=torch.long)


def minimal_tokens_per_sec(corpus: Path, size: str, seq: int, batch: int, lr: float, warmup_ratio: float,
                           warmup: int, steps: int, clock: Callable[[], float] = time.perf_counter,
                           seed: int = 42, device: str = "cpu") -> tuple[float, int]:
    """Tokens per second over steps warmup+1 .. warmup+steps, and the model's parameter count."""
    torch.manual_seed(seed)
    data = encode_chars(corpus.read_text(encoding="utf-8"))
    model = TinyGPT(int(data.max()) + 1, seq, *LAYERS[size]).to(device)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                                  lr=lr, betas=(0.9, 0.95), foreach=True)
    total = warmup + steps
    ramp = int(warmup_ratio * total)

    def schedule(step: int) -> float:  # linear warmup, cosine to 10%
        if step < ramp:
            return (step + 1) / ramp
        return 0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, (step - ramp) / max(1, total - ramp))))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    generator = torch.Generator().manual_seed(seed)
    t0 = None
    for step in range(total):
        if step == warmup:
            _sync(device)
            t0 = clock()
        starts = torch.randint(len(data) - seq - 1, (batch,), generator=generator)
        x = torch.stack([data[i:i + seq] for i in starts.tolist()]).to(device)  # (B, T)
        y = torch.stack([data[i + 1:i + seq + 1] for i in starts.tolist()]).to(device)  # (B, T)
        logits = model(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
    _sync(device)
    return batch * seq * steps / (clock() - t0), sum(p.numel() for p in model.parameters())


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()
