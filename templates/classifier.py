"""An encoder text classifier in one file: bidirectional self-attention, mean pooling, linear head.

Pre-norm blocks like templates/gpt.py, but every token sees every other real token: the attention
mask (True = real token, False = padding) hides padding from attention and from the pooled mean,
so padding a sequence never changes its logits. `build(config)` is the entry the kit calls; copy
this file to make your own classifier.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

SIZES = {
    "tiny": dict(n_layer=4, n_head=4, n_embd=128),  # ~0.8M params plus embeddings: minutes on a CPU
    "small": dict(n_layer=6, n_head=6, n_embd=384),  # ~11M params: a T4 in minutes
    "base": dict(n_layer=12, n_head=12, n_embd=768),  # BERT-base shape, ~85M params plus embeddings
}


@dataclass
class ClassifierConfig:
    vocab_size: int
    num_classes: int
    max_seq_len: int  # longest sequence the position embedding covers
    pad_id: int = 0  # marks padding when forward() gets no attention_mask
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0


class SelfAttention(nn.Module):
    def __init__(self, cfg: ClassifierConfig):
        super().__init__()
        assert cfg.n_embd % cfg.n_head == 0, "n_embd must be divisible by n_head"
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # 3 x (B, T, C)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        p = self.dropout if self.training else 0.0
        keys = mask[:, None, None, :]  # (B, 1, 1, T): every query attends to the real tokens only
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=keys, dropout_p=p)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return F.dropout(self.proj(y), p, self.training)


class MLP(nn.Module):
    def __init__(self, cfg: ClassifierConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    def __init__(self, cfg: ClassifierConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.attn = SelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), mask)  # pre-norm residual
        return x + self.mlp(self.ln_2(x))


class Classifier(nn.Module):
    def __init__(self, cfg: ClassifierConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.max_seq_len, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.head = nn.Linear(cfg.n_embd, cfg.num_classes)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2's scaled init of residual projections
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """input_ids (B, T), attention_mask (B, T) bool (True = real token) -> logits (B, num_classes)."""
        B, T = input_ids.shape
        if T > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {T} tokens is longer than the model's max_seq_len {self.cfg.max_seq_len}")
        mask = (input_ids != self.cfg.pad_id) if attention_mask is None else attention_mask.bool()  # (B, T)
        mask = mask | ~mask.any(dim=1, keepdim=True)  # an all-padding row attends to everything, not to nothing (NaN)
        pos = torch.arange(T, device=input_ids.device)  # (T,)
        x = self.drop(self.wte(input_ids) + self.wpe(pos))  # (B, T, C)
        for block in self.blocks:
            x = block(x, mask)
        x = self.ln_f(x)  # (B, T, C)
        m = mask.unsqueeze(-1).to(x.dtype)  # (B, T, 1)
        pooled = (x * m).sum(dim=1) / m.sum(dim=1)  # (B, C): mean over real tokens only
        return self.head(self.drop(pooled))  # (B, num_classes)


def build(config: dict) -> Classifier:
    """Build a Classifier from a plain dict: vocab_size, max_seq_len, num_classes, pad_id, size, dropout."""
    size = config.get("size", "tiny")
    if size not in SIZES:
        raise ValueError(f"Unknown classifier size {size!r}; choose one of {', '.join(SIZES)}")
    num_classes = config.get("num_classes")
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes={num_classes!r}: a classifier needs at least 2 classes (the data's label names)")
    return Classifier(ClassifierConfig(vocab_size=config["vocab_size"], num_classes=num_classes,
                                       max_seq_len=config["max_seq_len"], pad_id=config.get("pad_id", 0),
                                       dropout=config.get("dropout", 0.0), **SIZES[size]))
