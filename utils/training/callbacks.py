"""Callbacks the training core always installs: throughput, and the max_steps stop."""

from __future__ import annotations

import time

import pytorch_lightning as pl

from utils.training.history import write_segment_start


class RunStatsCallback(pl.Callback):
    """The training throughput of the whole run (validation time excluded), kept in every checkpoint.

    It also marks where each stretch of training started in its log folder, so the run's history
    can be pieced together after resumes (utils.training.history).
    """

    def __init__(self, tokens_in_batch):
        self.tokens_in_batch = tokens_in_batch  # batch -> number of tokens trained on
        self.tokens = 0  # in the whole run, resumed stretches included
        self.train_seconds = 0.0
        self.start_step = None  # global step when this call's training started (> 0 when resumed); None: it never started
        self._t0 = None
        self._trainer = None
        self._resumed_loss = None

    @property
    def tokens_per_sec(self) -> float:
        return self.tokens / self.train_seconds if self.train_seconds > 0 else 0.0

    def state_dict(self) -> dict:
        self._lap()
        loss = self._trainer.callback_metrics.get("train/loss") if self._trainer is not None else None
        # The loss of the step a checkpoint follows: Lightning logs it just after the checkpoint is written,
        # so a kill in between would drop it from the logs. The next stretch writes it back (history).
        return {"tokens": self.tokens, "train_seconds": self.train_seconds,
                "train_loss": None if loss is None else float(loss)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.tokens = state_dict.get("tokens", 0)
        self.train_seconds = state_dict.get("train_seconds", 0.0)
        self._resumed_loss = state_dict.get("train_loss")

    def setup(self, trainer, pl_module, stage) -> None:
        self._trainer = trainer

    def on_train_start(self, trainer, pl_module) -> None:
        self.start_step = trainer.global_step
        if trainer.logger is not None and trainer.logger.log_dir:
            logged = self._resumed_loss is not None and trainer.global_step % trainer.log_every_n_steps == 0
            write_segment_start(trainer.logger.log_dir, trainer.global_step, self._resumed_loss if logged else None)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._stop_clock()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.tokens += self.tokens_in_batch(batch)

    def on_validation_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._stop_clock()

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking and trainer.training:
            self._t0 = time.perf_counter()

    def _lap(self) -> None:
        """Bank the running clock (a checkpoint is being written) and keep it running."""
        if self._t0 is not None:
            now = time.perf_counter()
            self.train_seconds += now - self._t0
            self._t0 = now

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
