"""The run's own estimate: its first optimizer steps are the timing, and the whole run's time is said after them.

train() steps nothing before training for a time (measure once: the run's steps are the measurement, and extra
steps on the model would cost as much again before the first real one). Optimizer step 1 pays the one-time costs
(allocations, lazy kernels, torch.compile), so steps 2 to 1 + TIMED_STEPS are timed (a run of one step times
that one); the forward passes among them time a validation batch (no gradients there: a slight overestimate).
Validation inside those steps is not counted. After them, one line:

    Estimate: 3.2 s per optimizer step (32-true, batch 8 x 1 accumulation, timed on this run's steps 2-4 on CPU);
    40 steps + 1 validation(s) = about 2 min 10 s: fits in one Colab session.

On a GPU a second line gives the measured peak (torch.cuda.max_memory_allocated). result.estimate holds it, and
the summary compares it with what the run took.
"""

from __future__ import annotations

import time
from typing import Optional

import pytorch_lightning as pl
import torch

from utils.config import WizardConfig
from utils.training.estimate import Estimate, MemoryModel, count_validations, memory_line
from utils.precision import PrecisionDecision

TIMED_STEPS = 3  # after the first: their mean is the estimate (bench/estimate_accuracy.py --real checks it)


class RunEstimate(pl.Callback):
    """Times optimizer steps 2 .. 1 + TIMED_STEPS of this call's training and prints the estimate once."""

    def __init__(self, config: WizardConfig, decision: PrecisionDecision, memory: MemoryModel, train_batches: int,
                 val_batches: int, steps: int):
        self.config, self.decision, self.memory = config, decision, memory
        self.train_batches, self.val_batches, self.steps = train_batches, val_batches, steps
        self.first = 1 if steps > 1 else 0  # the optimizer steps done when the clock starts
        self.last = min(steps, self.first + TIMED_STEPS)  # ... and when it stops
        self.estimate: Optional[Estimate] = None
        self._start_step = 0
        self._t0: Optional[float] = None
        self._paused = 0.0  # validation inside the timed steps
        self._validation_t0: Optional[float] = None
        self._batch_t0: Optional[float] = None
        self._forwards: list[float] = []

    def _timing(self) -> bool:
        return self._t0 is not None and self.estimate is None

    def _now(self, pl_module) -> float:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        return time.perf_counter()

    def on_train_start(self, trainer, pl_module) -> None:
        self._start_step = trainer.global_step
        if self.first == 0:
            self._t0 = self._now(pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._timing():
            self._batch_t0 = self._now(pl_module)

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        if self._timing() and self._batch_t0 is not None:
            self._forwards.append(self._now(pl_module) - self._batch_t0)

    def on_validation_start(self, trainer, pl_module) -> None:
        if self._timing():
            self._validation_t0 = self._now(pl_module)

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._validation_t0 is not None:
            self._paused += self._now(pl_module) - self._validation_t0
            self._validation_t0 = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.estimate is not None:
            return
        done = trainer.global_step - self._start_step
        if self._t0 is None and done >= self.first:
            self._t0 = self._now(pl_module)
        elif self._t0 is not None and done >= self.last:
            self._finish(trainer, pl_module, done)

    def _finish(self, trainer, pl_module, done: int) -> None:
        seconds = (self._now(pl_module) - self._t0 - self._paused) / (done - self.first)
        forward = sum(self._forwards) / len(self._forwards) if self._forwards else 0.0
        cuda = pl_module.device.type == "cuda"
        B, A = self.config.batch_size, self.config.gradient_accumulation_steps
        peak = torch.cuda.max_memory_allocated(pl_module.device) if cuda else self.memory.bytes_at(B)
        device = self.decision.device.describe()
        steps = f"step {done}" if done - self.first == 1 else f"steps {self.first + 1}-{done}"
        self.estimate = Estimate(device, self.decision.precision, B, A, seconds, self.steps,
                                 count_validations(self.config, self.train_batches, self.steps),
                                 forward * self.val_batches, peak, cuda, self.memory, B,
                                 timed_on=f"this run's {steps} on {device}")
        if trainer.is_global_zero:
            print(self.estimate.time_line(), flush=True)
            if cuda:
                print(memory_line(self.memory, B, peak, measured=True) + f" (the memory model said about "
                      f"{self.memory.bytes_at(B) / 2**30:.1f} GB)", flush=True)
