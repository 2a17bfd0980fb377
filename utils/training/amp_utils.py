"""The reference kit's AMP helpers, for code written against it. Nothing in the kit imports this module.

- `compute_effective_precision(...)`: the reference kit's precision helper ('16'/'32' strings). The
  kit's own decision is utils.precision.resolve_precision (bf16 on Ampere, with a reason).
- `AmpWandbCallback(enabled, precision)`: logs amp/enabled, amp/precision and amp/loss_scale to the
  active W&B run at each epoch end. The kit's own runs log AMP metrics per optimizer step through
  utils.training.callbacks.recorder.RunRecorder instead.
- `loss_scale(trainer)`: the GradScaler's scale, which that callback logs.

The reference kit's TrainingCoordinator is in utils.training.training_core. This file imports
nothing of the kit, so it also loads on its own by file path; wandb is read only when a run exists.
"""

from __future__ import annotations

import sys
from typing import Optional

import pytorch_lightning as pl

__all__ = ["compute_effective_precision", "AmpWandbCallback", "loss_scale"]


def compute_effective_precision(requested_precision, use_amp, cuda_available, use_gpu) -> str:
    """use_amp None leaves the request untouched; use_amp on a usable GPU gives '16'; else '32'."""
    if use_amp is None:
        return requested_precision
    if use_amp and cuda_available and use_gpu:
        return "16"
    return "32"


def loss_scale(trainer) -> Optional[float]:
    """The scale of the GradScaler Lightning steps with (fp16 only), or None: no strategy, plugin or scaler."""
    plugin = getattr(getattr(trainer, "strategy", None), "precision_plugin", None)
    scaler = getattr(plugin, "scaler", None)
    return None if scaler is None else float(scaler.get_scale())


class AmpWandbCallback(pl.Callback):
    """Shows what mixed precision is doing in W&B: at each epoch end it logs `amp/enabled`,
    `amp/precision` and `amp/loss_scale` to the active W&B run: with wandb.log(step=epoch), or,
    when the trainer has a WandbLogger, through it, since that logger owns the run's step counter
    and W&B drops rows logged at an older step.
    """

    def __init__(self, enabled: bool, precision: str):
        self.enabled = enabled  # kept exactly as given
        self.precision = precision  # any spelling: '16', '16-mixed', 'bf16', '32-true', ...

    def _get_loss_scale(self, trainer) -> Optional[float]:
        return loss_scale(trainer)

    def on_train_epoch_end(self, trainer, pl_module=None) -> None:
        # A W&B run exists only if something imported wandb; importing it here (0.4 s) to find
        # wandb.run None would cost every run with logging off. A stub in sys.modules is honoured.
        wandb = sys.modules.get("wandb")
        if wandb is None or wandb.run is None:
            return
        data = {"amp/enabled": 1 if self.enabled else 0, "amp/precision": self.precision}
        scale = self._get_loss_scale(trainer)
        if scale is not None:
            data["amp/loss_scale"] = scale
        wandb_loggers = _wandb_loggers(trainer)
        if not wandb_loggers:
            wandb.log(data, step=trainer.current_epoch)
        for logger in wandb_loggers:
            logger.log_metrics(data, step=trainer.global_step)


def _wandb_loggers(trainer) -> list:
    from pytorch_lightning.loggers import WandbLogger

    return [logger for logger in getattr(trainer, "loggers", None) or [] if isinstance(logger, WandbLogger)]
