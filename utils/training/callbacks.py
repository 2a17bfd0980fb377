"""Callbacks the training core always installs: loss history and throughput."""

from __future__ import annotations

import time

import pytorch_lightning as pl


class RunStatsCallback(pl.Callback):
    """Keeps the loss curves and the training throughput of this run (validation time excluded)."""

    def __init__(self, tokens_in_batch):
        self.tokens_in_batch = tokens_in_batch  # batch -> number of tokens trained on
        self.train_history: list[tuple[int, float]] = []  # (global_step, loss) per optimizer step
        self.val_history: list[tuple[int, float]] = []  # (global_step, loss) per validation
        self.tokens = 0
        self.train_seconds = 0.0
        self.start_step = None  # global step when training started (> 0 when resumed); None: it never started
        self._t0 = None

    @property
    def tokens_per_sec(self) -> float:
        return self.tokens / self.train_seconds if self.train_seconds > 0 else 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self.start_step = trainer.global_step

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._stop_clock()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.tokens += self.tokens_in_batch(batch)
        loss = trainer.callback_metrics.get("train/loss")  # as logged: not divided by accumulation
        if loss is not None:
            self.train_history.append((trainer.global_step, float(loss)))

    def on_validation_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._stop_clock()

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        if "val/loss" in trainer.callback_metrics:
            self.val_history.append((trainer.global_step, float(trainer.callback_metrics["val/loss"])))
        if trainer.training:
            self._t0 = time.perf_counter()

    def _stop_clock(self) -> None:
        if self._t0 is not None:
            self.train_seconds += time.perf_counter() - self._t0
            self._t0 = None


class ValidateAtMaxSteps(pl.Callback):
    """Ends a max_steps run through Lightning's stop path, so the last step is validated and checkpointed.

    Lightning's own max_steps stop skips that final validation, leaving no best checkpoint and no
    validation loss for a run that ends mid-epoch.
    """

    def __init__(self, max_steps: int):
        self.max_steps = max_steps

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.max_steps:
            trainer.should_stop = True
