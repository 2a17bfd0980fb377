"""Stop a run that is training garbage: fp16 steps that keep overflowing, or a NaN/inf loss.

The training core installs TrainingHealthCallback in every run. It raises instead of logging a
warning, so a broken model is never trained on quietly; it checks the steps the RunRecorder flushes,
and the recorder flushes before every checkpoint, so last.ckpt keeps the last good state.
"""

from __future__ import annotations

import math
from typing import Optional

import pytorch_lightning as pl

from utils.config import SETTINGS
from utils.errors import KitError
from utils.training.callbacks.recorder import RunRecorder


class TrainingHealthError(KitError, RuntimeError):
    """Training stopped because the loss went NaN/inf; the message says what happened and what to try."""


class Fp16HealthError(TrainingHealthError):
    """fp16 training stopped: steps kept overflowing, the loss scale collapsed, or the loss went NaN/inf."""


class TrainingHealthCallback(pl.Callback):
    """Checks every optimizer step the RunRecorder flushes: the loss, and with fp16 the GradScaler.

    The recorder reads its values back every log_every_n_steps steps (and before every checkpoint
    and validation), so a problem is found up to that many steps after it happened, and never after
    a checkpoint of that state was written.

    max_consecutive_skips: optimizer steps in a row the GradScaler may skip for overflow. A fresh
        scaler starts at 2**16 and halves per skip, so a healthy run finds its scale in a few.
    min_loss_scale: a scale below this means gradients overflow fp16 even unscaled.
    max_nonfinite_losses: NaN/inf losses in a row before stopping; 1 stops at the first, since
        without a GradScaler to skip it, one NaN step turns every weight into NaN.
    wizard_words: the advice names settings as the wizard shows them (the notebook), not by config name.
    """

    def __init__(self, max_consecutive_skips: int = 10, min_loss_scale: float = 1.0, max_nonfinite_losses: int = 1,
                 wizard_words: bool = False):
        if max_consecutive_skips < 1 or max_nonfinite_losses < 1 or not min_loss_scale > 0:
            raise ValueError("max_consecutive_skips and max_nonfinite_losses must be >= 1 and min_loss_scale > 0, got "
                             f"{max_consecutive_skips}, {max_nonfinite_losses} and {min_loss_scale}")
        self.max_consecutive_skips = max_consecutive_skips
        self.min_loss_scale = min_loss_scale
        self.max_nonfinite_losses = max_nonfinite_losses
        self.consecutive_skips = 0
        self.skipped_total = 0  # the recorder's count, as of the newest step checked
        self.nonfinite_losses = 0  # in a row
        self.last_loss: Optional[float] = None
        self.wizard_words = wizard_words

    def setup(self, trainer, pl_module, stage) -> None:
        for callback in trainer.callbacks:
            if isinstance(callback, RunRecorder) and self.check not in callback.listeners:
                callback.listeners.append(self.check)

    def check(self, trainer, records) -> None:
        """Raise on the first unhealthy step among the flushed records."""
        for record in records:
            loss, scale = record.metrics.get("train/loss"), record.metrics.get("amp/loss_scale")
            if loss is not None:
                self.last_loss = loss
                self.nonfinite_losses = 0 if math.isfinite(loss) else self.nonfinite_losses + 1
            if record.skipped is not None:
                self.skipped_total = int(record.metrics["amp/skipped_steps"])
                self.consecutive_skips = self.consecutive_skips + 1 if record.skipped else 0
            if self.nonfinite_losses >= self.max_nonfinite_losses:
                times = "" if self.nonfinite_losses == 1 else f" for {self.nonfinite_losses} steps in a row"
                raise self._error(trainer, record.step, scale, f"the training loss is {loss}{times}")
            if record.skipped is None:
                continue
            if self.consecutive_skips >= self.max_consecutive_skips:
                raise self._error(trainer, record.step, scale, f"{self.consecutive_skips} optimizer steps in a row "
                                                               "overflowed in fp16 and were skipped")
            if scale < self.min_loss_scale:
                raise self._error(trainer, record.step, scale, f"the loss scale collapsed to {scale:g} (below "
                                                               f"{self.min_loss_scale:g}): gradients overflow fp16 even "
                                                               "without scaling")

    def _error(self, trainer, step: int, scale: Optional[float], what: str) -> TrainingHealthError:
        fp16 = scale is not None
        facts = [f"last loss {self.last_loss}"]
        if fp16:
            facts = [f"loss scale {scale:g}", f"{self.consecutive_skips} skipped steps in a row",
                     f"{self.skipped_total} skipped in total"] + facts
        lr = _learning_rate(trainer)
        say = _wizard_words if self.wizard_words else _config_words
        lower_lr = f"lower {say['lr']}" + (f" (now {lr:.2e})" if lr is not None else "")
        advice = (f"Try: {lower_lr}; {say['bf16']} on a GPU that has native bf16 (Ampere or newer, "
                  f"e.g. A100, L4); or {say['fp32']}." if fp16 else
                  f"Try: {lower_lr}, a smaller {say['clip']}, or check the data for empty or very short texts.")
        late = "" if step == trainer.global_step else \
            f" (found at step {trainer.global_step}: steps are checked every {say['log_every']})"
        message = (f"Training stopped at optimizer step {step}{late} (epoch {trainer.current_epoch}): {what} "
                   f"({', '.join(facts)}). The weights from here on are not worth keeping, so no checkpoint was "
                   f"saved from this state. {advice}")
        return (Fp16HealthError if fp16 else TrainingHealthError)(message)


_config_words = {"lr": "learning_rate", "bf16": "precision='bf16-mixed'", "fp32": "precision='32-true'",
                 "clip": "gradient_clip_val", "log_every": "log_every_n_steps"}
_wizard_words = {"lr": SETTINGS["learning_rate"].label,
                 "bf16": f"{SETTINGS['precision'].label} = {SETTINGS['precision'].choices['bf16-mixed'].split(' — ')[0]}",
                 "fp32": f"{SETTINGS['use_mixed_precision'].label} off",
                 "clip": SETTINGS["gradient_clip_val"].label, "log_every": f"'{SETTINGS['log_every_n_steps'].label}'"}


def _learning_rate(trainer) -> Optional[float]:
    optimizers = getattr(trainer, "optimizers", None) or []
    return optimizers[0].param_groups[0]["lr"] if optimizers else None
