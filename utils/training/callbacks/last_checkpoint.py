"""When last.ckpt is written, so a disconnect, a kill or a Stop costs minutes at most (how it is
written, never torn: utils.run_folder.checkpoint_io).

- `LastCheckpoint`: writes `last.ckpt` every `every_seconds` of training, after the first step of
  every new epoch, when training ends, and when the user presses Stop (SIGINT) or the process gets
  SIGTERM. It only writes right after an optimizer step and never on an epoch's last batch:
  Lightning 2.6 resumes a checkpoint taken there by skipping the next epoch, so such a save waits
  one step. The best-by-validation checkpoints are ModelCheckpoint's business, not this one's.
  The global RNG state of every process (its CPU generator and its own GPU's) travels in the
  checkpoint, so dropout after a resume draws what it would have drawn; a resume on another number
  of processes restores what fits and says so in one line. With several processes every one must call
  save_checkpoint at the same step (it is a collective; only global rank zero writes the file), so the
  clock and a stop signal are agreed on: one process due or stopped means all save (and stop). They
  meet for that every `agree_every` optimizer steps (the logging interval, when the RunRecorder meets
  too), not every step: each meeting waits for the GPU.
- A run that ends at `max_steps` inside an epoch: Lightning closes the epoch when training stops, and
  resumed from a checkpoint written then it starts the next epoch, skipping the rest of this one (with
  one epoch, "raise Max steps to train further" would train nothing). So the position in the epoch
  (the loops' state, the data loader's place in the epoch's order) and the random state are taken
  right after that last step, and the save when training ends (after the final validation, so the
  best-checkpoint record includes it) carries those: raising `max_steps` continues the same epoch with
  the batches and the random draws an uninterrupted longer run would have had there.
"""

from __future__ import annotations

import copy
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

    def __init__(self, path: str | Path, every_seconds: float, agree_every: int = 1):
        self.path = Path(path)
        self.every_seconds = every_seconds
        self.agree_every = max(1, agree_every)  # with several processes: optimizer steps between their votes
        self._trainer: Optional[pl.Trainer] = None
        self.saved_step: Optional[int] = None  # global step of the last write by this run
        self.stop_signal: Optional[str] = None  # "SIGINT"/"SIGTERM" once the user or the host asked to stop
        self._rng_to_restore: Optional[dict] = None
        self._previous_handlers: dict = {}
        self._due = 0.0
        self._step_seen = -1
        self._epoch_saved = 0
        self._stopped_mid_epoch: Optional[dict] = None  # see the module docstring: max_steps inside an epoch
        self._saving = False

    # ------------------------------------------------------------------ when to write
    def setup(self, trainer, pl_module, stage) -> None:
        self._trainer = trainer  # state_dict gathers every process's random state through its strategy

    def on_train_start(self, trainer, pl_module) -> None:
        self._due = time.monotonic() + self.every_seconds
        self._step_seen = trainer.global_step
        # A fresh run's first epoch is saved after its first step too; a resumed epoch was, before the resume.
        self._epoch_saved = trainer.current_epoch if trainer.global_step > 0 else -1
        self._stopped_mid_epoch = None
        self._install_stop_handlers()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._rng_to_restore is not None:  # first batch after a resume: continue the saved random stream
            device = trainer.strategy.root_device
            state, note = rng_to_restore(self._rng_to_restore, trainer.global_rank, trainer.world_size,
                                         on_gpu=device.type == "cuda")
            if state is not None:
                torch.set_rng_state(state["cpu"])
                if state.get("cuda") is not None and device.type == "cuda":
                    torch.cuda.set_rng_state(state["cuda"], device)
            if note and trainer.is_global_zero:
                print(note)
            self._rng_to_restore = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        stepped, self._step_seen = trainer.global_step != self._step_seen, trainer.global_step
        if not stepped or batch_idx + 1 >= trainer.num_training_batches:
            return  # mid-accumulation, or an epoch's last batch (see the module docstring)
        if 0 < trainer.max_steps <= trainer.global_step:  # the run ends after this step, inside the epoch
            self._stopped_mid_epoch = {"fit_loop": copy.deepcopy(trainer.fit_loop.state_dict()),
                                       "epoch": trainer.current_epoch, "rng": _local_rng(trainer)}
        new_epoch = trainer.current_epoch > self._epoch_saved  # the same in every process: no vote needed
        due, stop = False, False
        if getattr(trainer, "world_size", 1) == 1 or trainer.global_step % self.agree_every == 0:
            due, stop = self._agree(trainer, time.monotonic() >= self._due, self.stop_signal is not None)
        if stop and self.stop_signal is None:
            self.stop_signal = "a stop signal to another training process"
        if stop or new_epoch or due:
            self.save(trainer)
        if stop:  # agreed: every process stops at this step
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
        # After a max_steps stop inside an epoch, also when that step was saved already: this save holds the
        # final validation's best-checkpoint record too.
        if self.saved_step != trainer.global_step or self._stopped_mid_epoch is not None:
            self.save(trainer)
        self._restore_stop_handlers()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        # No write here: an exception can land between a parameter update and its optimizer state.
        self._restore_stop_handlers()

    def save(self, trainer: pl.Trainer) -> None:
        # The full state (optimizer, loops, callbacks) is what a resume needs; said explicitly, Lightning
        # logs no "`weights_only` was not set" line after every save.
        self._saving = True  # on_save_checkpoint: this save, not ModelCheckpoint's
        try:
            trainer.save_checkpoint(self.path, weights_only=False)
        finally:
            self._saving = False
        self.saved_step = trainer.global_step
        self._epoch_saved = trainer.current_epoch
        self._due = time.monotonic() + self.every_seconds

    # ------------------------------------------------------------------ checkpoint contents
    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        if self._saving and self._stopped_mid_epoch is not None:  # the save at the end of a max_steps run
            checkpoint["loops"]["fit_loop"] = self._stopped_mid_epoch["fit_loop"]
            checkpoint["epoch"] = self._stopped_mid_epoch["epoch"]

    def state_dict(self) -> dict[str, Any]:
        """Every process's random state, in rank order (a collective: every process saves at the same step)."""
        trainer = self._trainer
        saved = self._stopped_mid_epoch if self._saving and self._stopped_mid_epoch is not None else None
        cpu, cuda = saved["rng"] if saved else _local_rng(trainer)
        if trainer is None or getattr(trainer, "world_size", 1) == 1:
            return {"rng_per_rank": [{"cpu": cpu, "cuda": cuda}]}
        device = trainer.strategy.root_device
        gather = lambda t: trainer.strategy.all_gather(t.to(device)).cpu()  # noqa: E731  (world_size, n) bytes
        cpus = gather(cpu)
        cudas = gather(cuda) if cuda is not None else [None] * len(cpus)
        return {"rng_per_rank": [{"cpu": c.clone(), "cuda": None if g is None else g.clone()}
                                 for c, g in zip(cpus, cudas)]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._rng_to_restore = state_dict

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


def _local_rng(trainer: Optional[pl.Trainer]) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """This process's (CPU, own GPU or None) random state."""
    device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def rng_to_restore(saved: dict[str, Any], rank: int, world_size: int, on_gpu: bool) -> tuple[Optional[dict], str]:
    """This process's random state from a LastCheckpoint state, and a line to say when it does not all fit.

    Each process restores its own rank's state. Resumed on fewer processes, the ranks that remain take theirs;
    on more, the new ranks keep their seeded state. Checkpoints written before per-rank states held one
    process's CPU state and every visible GPU's state (get_rng_state_all); rank zero trained on the first GPU.
    """
    if "rng_per_rank" in saved:
        states = saved["rng_per_rank"]
    elif saved.get("rng") is not None:
        old = saved["rng"]
        cuda = old.get("cuda")
        states = [{"cpu": old["cpu"], "cuda": cuda[0] if isinstance(cuda, (list, tuple)) and cuda else None}]
    else:
        return None, ""
    state = states[rank] if rank < len(states) else None
    problems = []
    if len(states) != world_size:
        kept = f"processes 0-{min(len(states), world_size) - 1}" if min(len(states), world_size) > 1 else "process 0"
        problems.append(f"the checkpoint holds the random state of {len(states)} training process(es) and this run "
                        f"has {world_size}: restored for {kept}")
    if not on_gpu and any(s.get("cuda") is not None for s in states):
        problems.append("its GPU random state is not restored on this CPU")
    if not problems:
        return state, ""
    return state, ("Random state: " + "; ".join(problems)
                   + ". Dropout and other random draws differ from the uninterrupted run from here on.")
