"""The estimate: how long a run takes and how much memory it needs, and whether its batch fits.

train() times nothing before training: it measures the memory model (measure_memory, two forward passes at
batch 1 and 2) and refuses a batch that does not fit (check_memory raises BatchTooLargeError, naming the batch
that fits) before anything allocates a batch; the time comes from the run's own first optimizer steps
(utils.training.run_estimate prints it after them). The `estimate` command and the wizard, asked for a time
before any run, call estimate_config(): the model itself, where it is placed, trains 1 warm-up and 2 timed steps
(forward, backward, AdamW step, in the run's precision) on a dummy batch of the run's shape; its trained tensors
and the global RNG are put back afterwards, so the run itself is unchanged (utils.plan.stepper). From that:
seconds per optimizer step (gradient accumulation included), the run's total time (training.total_steps
optimizer steps plus validation, timed as forward passes), the memory it needs against the device's, and
whether it fits in one Colab session. A batch that does not fit is answered with the largest that does and the
gradient accumulation that keeps the effective batch.

    estimate = estimate_config(config, decision)   # plans the run (utils.plan.plan_run; the wizard, bench/)
    print(estimate.describe())

The memory model is utils.plan.memory_model's (the one train(), the inspection and the wizard read), counted
by utils.plan.memory's rules (the ones fit_plan's paper model uses too). memory_on() answers for a GPU this
machine need not have (`estimate --gpu`).

Under FSDP each device holds a shard: parameters, gradients and AdamW state divided by the number of
processes, plus the unit FSDP gathers whole while it computes. Nothing here copies the model, and what it
allocates is freed when its function returns (no reference cycles), so the run's own allocations start from
an empty device.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from utils.config import WizardConfig
from utils.data.spec import batch_lengths
from utils.formatting import format_bytes, format_duration
from utils.plan.memory import BYTES_PER_PARAMETER, USABLE_FRACTION  # noqa: F401  (importers of this module)
from utils.plan.memory_model import (SHORT_SEQUENCE, BatchTooLargeError, MemoryModel,  # noqa: F401  (importers)
                                     batch_that_fits, check_memory, check_sequence_length, device_capacity,
                                     largest_fsdp_unit, measure_memory, memory_advice, memory_line)
from utils.plan import plan_run
from utils.precision import PrecisionDecision
from utils.plan.stepper import Stepper, device_of, trained_weights_restored

COLAB_SESSION_SECONDS = 12 * 3600  # the free tier's documented maximum runtime; often less when idle or busy
# One warm-up step pays the first call's one-time costs (allocations, lazy kernel loading); a second one
# measured no different from the timed steps on a CPU. Only the `estimate` command and the wizard time steps.
WARMUP_STEPS, TIMED_STEPS = 1, 2
# Lightning's own work per training batch (hooks, logging, progress bar) that the bare steps above
# leave out. bench/estimate_accuracy.py found it lost in the noise on a CPU (estimates within 8%
# without it); a GPU run of tiny models may need it.
PER_BATCH_OVERHEAD_S = 0.0


@dataclass(frozen=True)
class Estimate:
    device: str  # what the steps were timed on, e.g. "CPU", "Tesla T4 (compute capability 7.5)"
    precision: str
    batch_size: int  # the batch the steps were timed at (the config's, or the suggested one)
    accumulation: int
    seconds_per_step: float  # one optimizer step: accumulation x (forward + backward), then AdamW
    total_steps: int
    validations: int
    seconds_per_validation: float
    peak_memory_bytes: int  # at the config's batch: measured on CUDA, the memory model elsewhere
    memory_measured: bool  # True: torch.cuda.max_memory_allocated; False: the memory model
    memory: MemoryModel
    config_batch_size: int
    suggested_batch_size: Optional[int] = None  # set when the config's batch does not fit
    suggested_accumulation: Optional[int] = None
    notes: tuple[str, ...] = ()  # what the time above leaves out (compile time, FSDP's communication)
    seq_len: Optional[int] = None  # the padded length the steps were timed at, when shorter than max_seq_len
    timed_on: str = ""  # what was timed when not dummy steps: "this run's steps 2-4"

    @property
    def total_seconds(self) -> float:
        return self.total_steps * self.seconds_per_step + self.validations * self.seconds_per_validation

    @property
    def fits_memory(self) -> bool:
        return self.suggested_batch_size is None

    @property
    def fits_session(self) -> bool:
        return self.total_seconds <= COLAB_SESSION_SECONDS

    def describe(self) -> str:
        """One line on time, one on memory."""
        return "\n".join([self.time_line(), self._memory_line(), *self.notes])

    def time_line(self) -> str:
        session = ("fits in one Colab session" if self.fits_session else
                   "longer than a Colab session (12 h at most): checkpoints carry it across sessions")
        shape = f" of about {self.seq_len} tokens (the data's padded batches)" if self.seq_len else ""
        timed_on = self.timed_on or self.device
        return (f"Estimate: {self.seconds_per_step:.3g} s per optimizer step ({self.precision}, batch "
                f"{self.batch_size} x {self.accumulation} accumulation{shape}, timed on {timed_on}); "
                f"{self.total_steps:,} steps + {self.validations} validation(s) = about "
                f"{format_duration(self.total_seconds)}: {session}.")

    def _memory_line(self) -> str:
        return memory_line(self.memory, self.config_batch_size, self.peak_memory_bytes, self.memory_measured,
                           self.suggested_batch_size, self.suggested_accumulation)

    def compare(self, seconds_per_step: float, total_seconds: float) -> str:
        """The summary's line: this estimate against what the run took."""
        return (f"{self.seconds_per_step:.3g} s/step, {format_duration(self.total_seconds)} in total; actual "
                f"{seconds_per_step:.3g} s/step, {format_duration(total_seconds)}")


def estimate_run(config: WizardConfig, decision: PrecisionDecision, model: nn.Module, task, vocab_size: int,
                 num_classes: int, train_batches: int, val_batches: int,
                 steps: Optional[int] = None, memory: Optional[MemoryModel] = None,
                 refuse_oversize: bool = False, seq_len: Optional[int] = None) -> Estimate:
    """Time a few optimizer steps of a copy of model on decision.device at the config's batch; see the module doc.

    train_batches, val_batches: batches per epoch of this process's loaders. steps: the run's optimizer
    steps (default: training.builder.total_steps for train_batches). memory: measure_memory's answer, when
    the caller has it already. A batch that does not fit is timed at the largest that does (the wizard
    shows that; train() and the `estimate` command refuse such a batch before calling this). refuse_oversize:
    a config's batch that runs out of memory when timed (the memory model was too hopeful) raises
    BatchTooLargeError naming the batch that trained, instead of an estimate for it: train() never starts at a
    batch the estimate saw fail. seq_len: the length the run's batches have (a chat batch pads to its longest
    example, often several times shorter than max_seq_len; default max_seq_len).
    """
    from utils.training.builder import total_steps  # builder imports this module's users

    device = decision.device
    B, A = config.batch_size, config.gradient_accumulation_steps
    memory = memory or measure_memory(config, decision, model, task, vocab_size, num_classes)
    batch, accumulation = batch_that_fits(memory, B, A)
    suggested = (batch, accumulation) if batch != B else (None, None)
    timed_batch, timed_accumulation = batch, accumulation
    if memory.shards > 1:  # FSDP: one device times the whole model, at a batch that holds it whole
        timed_batch, timed_accumulation = batch_that_fits(memory.whole(), B, A)
    timed_batch = max(timed_batch, 1)
    T = seq_len or config.max_seq_len
    timing = _time_steps(config, decision, model, task, vocab_size, num_classes, timed_batch, T)
    while timing is None:  # out of memory after all: the memory model was too hopeful. Halve, outside the
        # except block, so the failed attempt's tensors (held by its traceback) are gone first.
        if timed_batch == 1:
            raise BatchTooLargeError(f"batch_size=1 ran out of {device.describe()} memory in a timed training step; "
                                     "pick a smaller model_size or max_seq_len (or finetune_method='qlora').")
        timed_batch = max(1, timed_batch // 2)
        timed_accumulation = math.ceil(B * A / timed_batch)
        if memory.shards == 1:
            batch, accumulation = timed_batch, timed_accumulation
            suggested = (batch, accumulation) if batch != B else (None, None)
        timing = _time_steps(config, decision, model, task, vocab_size, num_classes, timed_batch, T)
    if refuse_oversize and suggested[0] is not None:
        raise BatchTooLargeError(
            f"batch_size={B} ran out of {device.describe()} memory in a timed training step (the memory model "
            f"expected about {format_bytes(memory.bytes_at(B))}); batch_size={batch} with gradient_accumulation_steps="
            f"{accumulation} trained there and keeps the effective batch.")
    fb, opt, val_forward, peak = timing
    timed_batch = max(timed_batch, 1)
    n_steps = steps if steps is not None else total_steps(config, train_batches)
    measured = device.kind == "cuda" and batch == B and memory.shards == 1
    return Estimate(device.describe(), decision.precision, timed_batch, timed_accumulation,
                    timed_accumulation * (fb + PER_BATCH_OVERHEAD_S) + opt, n_steps,
                    count_validations(config, train_batches, n_steps),
                    val_forward * math.ceil(val_batches * B / timed_batch),
                    peak if measured else memory.bytes_at(B), measured, memory, B, *suggested,
                    notes=_estimate_notes(config, memory), seq_len=seq_len if T < config.max_seq_len else None)


def _time_steps(config: WizardConfig, decision: PrecisionDecision, model: nn.Module, task, vocab_size: int,
                num_classes: int, batch: int, seq_len: int) -> Optional[tuple[float, float, float, int]]:
    """(forward + backward s, optimizer step s, validation forward s, peak CUDA bytes) of model at batch, where
    it is; None when the device ran out of memory. Its trained weights are put back and everything it allocates
    is freed when it returns."""
    from utils.training.builder import adamw_options  # builder imports this module's users

    kind = device_of(model).type
    with trained_weights_restored(model) as work:
        optimizer = torch.optim.AdamW([p for p in work.parameters() if p.requires_grad], lr=config.learning_rate,
                                      **adamw_options(kind))
        step = Stepper(work, optimizer, task, decision, vocab_size, num_classes, seq_len)
        try:
            fb, opt, peak = step.time(batch, WARMUP_STEPS, TIMED_STEPS)
            timing = fb, opt, step.time_forward(batch), peak
        except torch.cuda.OutOfMemoryError:
            timing = None
        del work, optimizer, step
    return timing


def _estimate_notes(config: WizardConfig, memory: MemoryModel) -> tuple[str, ...]:
    notes = []
    if config.compile:
        notes.append("Compile: torch.compile is on, so the run's first steps also compile the model (often tens "
                     "of seconds, minutes for a large one); that time is not in the estimate above.")
    if memory.shards > 1:
        notes.append(f"FSDP: timed on one device holding the whole model; the {memory.shards} processes' "
                     "gathering and reducing of shards is not counted, and the memory above is one shard's.")
    return tuple(notes)


def estimate_config(config: WizardConfig, decision: PrecisionDecision, refuse_oversize: bool = False) -> Estimate:
    """The config's run as train() plans it (utils.plan.plan_run: data, model placed where the run trains, the
    memory model train() checks the batch with), then estimate_run().

    refuse_oversize: raise BatchTooLargeError for a batch that does not fit, as train() does, instead of timing
    the largest batch that fits (the command line's `estimate`: that batch can fill most of the memory).
    """
    from utils.training.builder import build_dataloaders

    # Timed where the run trains; under FSDP, on one whole device (train() shards a model it keeps on the CPU).
    plan = plan_run(config, decision, place_on=decision.torch_device())  # refuses a max_seq_len no device holds
    config = plan.config
    if refuse_oversize:
        check_memory(plan.memory, config)
    train_loader, val_loader = build_dataloaders(config, plan.data.train, plan.data.val, pin_memory=False)  # lengths
    estimate = estimate_run(config, decision, plan.model, plan.task, plan.vocab_size, plan.num_classes,
                            len(train_loader), len(val_loader), memory=plan.memory, refuse_oversize=refuse_oversize,
                            seq_len=batch_lengths(config, plan.data)[0])
    return dataclasses.replace(estimate, notes=tuple(plan.notes) + estimate.notes)


def memory_on(config: WizardConfig, decision: PrecisionDecision) -> MemoryModel:
    """The memory config's run needs on decision.device (`estimate --gpu`: a GPU this machine need not have),
    measured here: the run planned as train() plans it, its model left on this machine's CPU, its forward passes
    counted in the GPU's autocast dtype (CPU autocast runs fp16 and bf16). Raises BatchTooLargeError, naming the
    batch that fits, where train() on that GPU would."""
    plan = plan_run(config, decision, place_on=None)
    check_memory(plan.memory, plan.config)
    return plan.memory


def count_validations(config: WizardConfig, train_batches: int, steps: int) -> int:
    """Validation runs in a run of `steps` optimizer steps (val_check_interval per epoch, and one at max_steps)."""
    steps_per_epoch = max(1, math.ceil(train_batches / config.gradient_accumulation_steps))
    epochs = steps / steps_per_epoch
    interval = config.val_check_interval
    per_epoch = max(1, int(1 / interval)) if interval <= 1 else max(1, train_batches // int(interval))
    return max(1, math.floor(epochs * per_epoch) + (0 if steps % steps_per_epoch == 0 else 1))


_bytes = format_bytes  # the name this module's messages and its tests use
