"""Stop a run that is training garbage: fp16 steps that keep overflowing, or a NaN/inf loss.

The training core installs TrainingHealthCallback in every run. It raises instead of logging a
warning, so a broken model is never trained on quietly; Lightning then stops without saving a
checkpoint (ModelCheckpoint's save_on_exception is off), so last.ckpt keeps the last good state.
"""

from __future__ import annotations

import math
from typing import Optional

import pytorch_lightning as pl
import torch

from utils.errors import KitError
from utils.training.amp_utils import SkippedStepCounter, loss_scale


class TrainingHealthError(KitError, RuntimeError):
    """Training stopped because the loss went NaN/inf; the message says what happened and what to try."""


class Fp16HealthError(TrainingHealthError):
    """fp16 training stopped: steps kept overflowing, the loss scale collapsed, or the loss went NaN/inf."""


class TrainingHealthCallback(pl.Callback):
    """Watches the loss of every micro-batch and, with fp16, the GradScaler after every optimizer step.

    max_consecutive_skips: optimizer steps in a row the GradScaler may skip for overflow. A fresh
        scaler starts at 2**16 and halves per skip, so a healthy run finds its scale in a few.
    min_loss_scale: a scale below this means gradients overflow fp16 even unscaled.
    max_nonfinite_losses: NaN/inf losses in a row before stopping; 1 stops at the first, since
        without a GradScaler to skip it, one NaN step turns every weight into NaN.
    """

    def __init__(self, max_consecutive_skips: int = 10, min_loss_scale: float = 1.0, max_nonfinite_losses: int = 1):
        if max_consecutive_skips < 1 or max_nonfinite_losses < 1 or not min_loss_scale > 0:
            raise ValueError("max_consecutive_skips and max_nonfinite_losses must be >= 1 and min_loss_scale > 0, got "
                             f"{max_consecutive_skips}, {max_nonfinite_losses} and {min_loss_scale}")
        self.max_consecutive_skips = max_consecutive_skips
        self.min_loss_scale = min_loss_scale
        self.max_nonfinite_losses = max_nonfinite_losses
        self.skipped = SkippedStepCounter()
        self.nonfinite_losses = 0  # in a row
        self.last_loss: Optional[float] = None

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.skipped.before_step(loss_scale(trainer))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = _loss_value(outputs)
        if loss is not None:
            self.last_loss = loss
            self.nonfinite_losses = 0 if math.isfinite(loss) else self.nonfinite_losses + 1
        scale = loss_scale(trainer)
        skipped = self.skipped.after_step(scale)
        if self.nonfinite_losses >= self.max_nonfinite_losses:
            times = "" if self.nonfinite_losses == 1 else f" for {self.nonfinite_losses} batches in a row"
            raise self._error(trainer, scale, f"the training loss is {loss}{times}")
        if skipped is None:
            return
        if self.skipped.consecutive >= self.max_consecutive_skips:
            raise self._error(trainer, scale, f"{self.skipped.consecutive} optimizer steps in a row overflowed "
                                              "in fp16 and were skipped")
        if scale < self.min_loss_scale:
            raise self._error(trainer, scale, f"the loss scale collapsed to {scale:g} (below {self.min_loss_scale:g}): "
                                              "gradients overflow fp16 even without scaling")

    def _error(self, trainer, scale: Optional[float], what: str) -> TrainingHealthError:
        fp16 = scale is not None
        facts = [f"last loss {self.last_loss}"]
        if fp16:
            facts = [f"loss scale {scale:g}", f"{self.skipped.consecutive} skipped steps in a row",
                     f"{self.skipped.total} skipped in total"] + facts
        lr = _learning_rate(trainer)
        lower_lr = f"lower learning_rate (now {lr:.2e})" if lr is not None else "lower learning_rate"
        advice = (f"Try: {lower_lr}; precision='bf16-mixed' on a GPU that has native bf16 (Ampere or newer, "
                  "e.g. A100, L4); or precision='32-true'." if fp16 else
                  f"Try: {lower_lr}, a smaller gradient_clip_val, or check the data for empty or very short texts.")
        message = (f"Training stopped at optimizer step {trainer.global_step} (epoch {trainer.current_epoch}): {what} "
                   f"({', '.join(facts)}). The weights from here on are not worth keeping, so no checkpoint was "
                   f"saved from this state. {advice}")
        return (Fp16HealthError if fp16 else TrainingHealthError)(message)


def _loss_value(outputs) -> Optional[float]:
    """The micro-batch loss from training_step's output (a tensor or a dict with "loss")."""
    loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
    return float(loss.detach()) if isinstance(loss, torch.Tensor) else None


def _learning_rate(trainer) -> Optional[float]:
    optimizers = getattr(trainer, "optimizers", None) or []
    return optimizers[0].param_groups[0]["lr"] if optimizers else None
