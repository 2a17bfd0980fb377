"""When last.ckpt is written, so a disconnect, a kill or a Stop costs minutes at most (how it is
written, never torn: utils.run_folder.checkpoint_io).

- `LastCheckpoint`: writes `last.ckpt` every `every_seconds` of training, after the first step of
  every new epoch, when training ends, and when the user presses Stop (SIGINT) or the process gets
  SIGTERM. It only writes right after an optimizer step and never on an epoch's last batch:
  Lightning 2.6 resumes a checkpoint taken there by skipping the next epoch, so such a save waits
  one step. The best-by-validation checkpoints are ModelCheckpoint's business, not this one's.
  The global RNG state travels in the checkpoint, so dropout after a resume draws what it would
  have drawn. With several processes every one must call save_checkpoint at the same step (it is a
  collective; only global rank zero writes the file), so the clock and a stop signal are agreed on
  each step: one process due or stopped means all save (and stop).
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl
import torch

from utils.errors import KitError


class TrainingStopped(KitError, RuntimeError):
    """Training stopped on the user's Stop (SIGINT) or a SIGTERM; last.ckpt says where to continue."""


class LastCheckpoint(pl.Callback):
    """Keeps `path` (checkpoints/last.ckpt) at most `every_seconds` of training behind."""

    STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, path: str | Path, every_seconds: float):
        self.path = Path(path)
        self.every_seconds = every_seconds
        self.saved_step: Optional[int] = None  # global step of the last write by this run
        self.stop_signal: Optional[str] = None  # "SIGINT"/"SIGTERM" once the user or the host asked to stop
        self._rng_to_restore: Optional[dict] = None
        self._previous_handlers: dict = {}
        self._due = 0.0
        self._step_seen = -1
        self._epoch_saved = 0

    # ------------------------------------------------------------------ when to write
    def on_train_start(self, trainer, pl_module) -> None:
        self._due = time.monotonic() + self.every_seconds
        self._step_seen = trainer.global_step
        self._epoch_saved = trainer.current_epoch
        self._install_stop_handlers()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._rng_to_restore is not None:  # first batch after a resume: continue the saved random stream
            torch.set_rng_state(self._rng_to_restore["cpu"])
            if self._rng_to_restore.get("cuda") is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(self._rng_to_restore["cuda"])
            self._rng_to_restore = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        stepped, self._step_seen = trainer.global_step != self._step_seen, trainer.global_step
        if not stepped or batch_idx + 1 >= trainer.num_training_batches:
            return  # mid-accumulation, or an epoch's last batch (see the module docstring)
        new_epoch = trainer.current_epoch > self._epoch_saved
        due, stop = self._agree(trainer, time.monotonic() >= self._due, self.stop_signal is not None)
        if stop and self.stop_signal is None:
            self.stop_signal = "a stop signal to another training process"
        if stop or new_epoch or due:
            self.save(trainer)
        if self.stop_signal:
            raise TrainingStopped(
                f"Training stopped ({self.stop_signal}) at step {trainer.global_step}; saved {self.path}. "
                "Run again with the same output_dir (the Train cell, or the same command) to continue from there.")

    @staticmethod
    def _agree(trainer, due: bool, stop: bool) -> tuple[bool, bool]:
        """(due, stop) as any process sees them: the same answer in every process."""
        if getattr(trainer, "world_size", 1) == 1:
            return due, stop
        votes = torch.tensor([due, stop], dtype=torch.float32, device=trainer.strategy.root_device)
        due_any, stop_any = (trainer.strategy.reduce(votes, reduce_op="sum") > 0).tolist()
        return due_any, stop_any

    def on_train_end(self, trainer, pl_module) -> None:
        if self.saved_step != trainer.global_step:
            self.save(trainer)
        self._restore_stop_handlers()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        # No write here: an exception can land between a parameter update and its optimizer state.
        self._restore_stop_handlers()

    def save(self, trainer: pl.Trainer) -> None:
        # The full state (optimizer, loops, callbacks) is what a resume needs; said explicitly, Lightning
        # logs no "`weights_only` was not set" line after every save.
        trainer.save_checkpoint(self.path, weights_only=False)
        self.saved_step = trainer.global_step
        self._epoch_saved = trainer.current_epoch
        self._due = time.monotonic() + self.every_seconds

    # ------------------------------------------------------------------ checkpoint contents
    def state_dict(self) -> dict[str, Any]:
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        return {"rng": {"cpu": torch.get_rng_state(), "cuda": cuda}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._rng_to_restore = state_dict.get("rng")

    # ------------------------------------------------------------------ Stop and SIGTERM
    def _install_stop_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for sig in self.STOP_SIGNALS:
            self._previous_handlers[sig] = signal.getsignal(sig)
            signal.signal(sig, self._request_stop)

    def _restore_stop_handlers(self) -> None:
        for sig, handler in self._previous_handlers.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous_handlers = {}

    def _request_stop(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.stop_signal and signum == signal.SIGINT:  # pressed twice: stop now, without a new checkpoint
            self._restore_stop_handlers()
            raise KeyboardInterrupt
        self.stop_signal = name
        print(f"\n{name}: finishing the current step, then saving {self.path.name} and stopping "
              "(press Stop / Ctrl-C again to stop at once without saving).", flush=True)
