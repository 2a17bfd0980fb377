"""The one LightningModule: wraps any model, computes the loss, owns the optimizer and schedule.

What differs between tasks is a small task object (utils.models.tasks): `logits(model, batch)`,
`loss(model, batch) -> (loss, metrics)` (each metric is logged as train/NAME and val/NAME) and `tokens_in(batch)`.

Lightning owns autocast, the GradScaler, clipping order and accumulation; nothing here touches them.
"""

from __future__ import annotations

import math
from typing import Optional

import pytorch_lightning as pl
import torch
from torch import nn

from utils.inference import model_logits


class TransformerModule(pl.LightningModule):
    def __init__(self, model: nn.Module, task, learning_rate: float, weight_decay: float, warmup_ratio: float,
                 total_steps: int, adamw_options: Optional[dict] = None):
        super().__init__()
        self.total_steps = total_steps  # for the LR schedule
        self.adamw_options = adamw_options or {}  # fused=True on CUDA, foreach=True elsewhere (see build_module)
        self.model = model
        self.task = task
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.warmup_ratio = warmup_ratio

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return model_logits(self.model, x)

    def training_step(self, batch, batch_idx: int) -> dict:
        # The metrics go back detached to the RunRecorder, which logs them once per optimizer step.
        loss, metrics = self.task.loss(self.model, batch)
        return {"loss": loss, "train/loss": loss.detach(), **{f"train/{k}": v.detach() for k, v in metrics.items()}}

    def validation_step(self, batch, batch_idx: int) -> None:
        # Averaged over the validation set by Lightning, for EarlyStopping, ModelCheckpoint and the bar;
        # the RunRecorder sends them to the loggers.
        loss, metrics = self.task.loss(self.model, batch)
        self.log("val/loss", loss, prog_bar=True, logger=False)
        for name, value in metrics.items():
            self.log(f"val/{name}", value, prog_bar=True, logger=False)

    def configure_optimizers(self):
        total = self.total_steps
        optimizer = torch.optim.AdamW(param_groups(self.model, self.weight_decay), lr=self.learning_rate,
                                      betas=(0.9, 0.95), **self.adamw_options)
        schedule = warmup_cosine(int(self.warmup_ratio * total), total)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices of Linear-like layers only: never on norms, biases or embeddings."""
    no_decay = set()
    for module in model.modules():
        if isinstance(module, (nn.Embedding, nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d)) \
                or "norm" in type(module).__name__.lower():
            no_decay.update(id(p) for p in module.parameters(recurse=False))
    decay, keep = [], []
    for p in {id(p): p for p in model.parameters() if p.requires_grad}.values():  # tied weights once
        (keep if id(p) in no_decay or p.ndim < 2 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]


def warmup_cosine(warmup_steps: int, total_steps: int, min_ratio: float = 0.1):
    """LR multiplier: linear warmup to 1, then cosine decay to min_ratio at total_steps."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor
