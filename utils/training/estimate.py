"""The estimate: how long a run takes and how much memory it needs, and whether its batch fits.

train() times nothing before training: it measures the memory model (measure_memory, two forward passes at
batch 1 and 2) and refuses a batch that does not fit (check_memory raises BatchTooLargeError, naming the batch
that fits) before anything allocates a batch; the time comes from the run's own first optimizer steps
(utils.training.run_estimate prints it after them). The `estimate` command and the wizard, asked for a time
before any run, call estimate_config(): the model itself, where it is placed, trains 1 warm-up and 2 timed steps
(forward, backward, AdamW step, in the run's precision) on a dummy batch of the run's shape; its trained tensors
and the global RNG are put back afterwards, so the run itself is unchanged (utils.training.stepper). From that:
seconds per optimizer step (gradient accumulation included), the run's total time (training.total_steps
optimizer steps plus validation, timed as forward passes), the memory it needs against the device's, and
whether it fits in one Colab session. A batch that does not fit is answered with the largest that does and the
gradient accumulation that keeps the effective batch.

    estimate = estimate_config(config, decision)   # builds data and model (the wizard, bench/)
    print(estimate.describe())

The memory model counts by utils.training.memory's rules (the ones fit_plan's paper model uses too). On a CPU
whose RAM is the capacity, its answer is the process's peak: its resident memory when measured plus what
training adds; on a GPU the device's allocations. memory_on() answers for a GPU this machine need not have
(`estimate --gpu`).

Under FSDP each device holds a shard: parameters, gradients and AdamW state divided by the number of
processes, plus the unit FSDP gathers whole while it computes. Nothing here copies the model, and what it
allocates is freed when its function returns (no reference cycles), so the run's own allocations start from
an empty device.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from utils.config import WizardConfig
from utils.env import DeviceInfo
from utils.errors import KitError
from utils.formatting import format_bytes, format_duration
from utils.training.memory import BYTES_PER_PARAMETER, USABLE_FRACTION, parameter_bytes, process_bytes_beside
from utils.precision import PrecisionDecision
from utils.training.stepper import Stepper, device_of, measuring, trained_weights_restored

COLAB_SESSION_SECONDS = 12 * 3600  # the free tier's documented maximum runtime; often less when idle or busy
# One warm-up step pays the first call's one-time costs (allocations, lazy kernel loading); a second one
# measured no different from the timed steps on a CPU. Only the `estimate` command and the wizard time steps.
WARMUP_STEPS, TIMED_STEPS = 1, 2
# Lightning's own work per training batch (hooks, logging, progress bar) that the bare steps above
# leave out. bench/estimate_accuracy.py found it lost in the noise on a CPU (estimates within 8%
# without it); a GPU run of tiny models may need it.
PER_BATCH_OVERHEAD_S = 0.0


class BatchTooLargeError(KitError, ValueError):
    """batch_size needs more memory than the device has; the message names the batch that fits."""


@dataclass(frozen=True)
class MemoryModel:
    """Training memory at batch b on one device: fixed_bytes + process_bytes + per_sequence_bytes * b (weights,
    grads, AdamW; what else the process holds; activations). Under FSDP fixed_bytes is one process's shard;
    whole_fixed_bytes what one device would hold with the whole model (None: the same)."""

    fixed_bytes: int
    per_sequence_bytes: int
    capacity_bytes: Optional[int]  # device memory (RAM on a CPU); None when unknown
    capacity_name: str
    shards: int = 1  # processes the model's state is divided among (FSDP's world size; 1 otherwise)
    whole_fixed_bytes: Optional[int] = None
    # On a CPU whose RAM is the capacity: the process's resident memory beside the model's own tensors when measured
    # (Python, torch, the data), so that bytes_at() is the process's peak. 0 on a GPU: its allocations alone.
    process_bytes: int = 0

    def whole(self) -> "MemoryModel":
        """The same model unsharded: what one device needs to hold all of it (the estimate's timing copy)."""
        if self.whole_fixed_bytes is None:
            return self
        return MemoryModel(self.whole_fixed_bytes, self.per_sequence_bytes, self.capacity_bytes, self.capacity_name,
                           process_bytes=self.process_bytes)

    def bytes_at(self, batch: int) -> int:
        return self.fixed_bytes + self.process_bytes + self.per_sequence_bytes * batch

    def fits(self, batch: int) -> bool:
        return self.capacity_bytes is None or self.bytes_at(batch) <= USABLE_FRACTION * self.capacity_bytes

    def largest_batch(self, limit: int) -> int:
        """The largest batch up to limit that fits (0: not even one sequence), by binary search."""
        low, high = 0, limit
        while low < high:
            mid = (low + high + 1) // 2
            low, high = (mid, high) if self.fits(mid) else (low, mid - 1)
        return low


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


def memory_line(memory: MemoryModel, batch: int, peak: Optional[int] = None, measured: bool = False,
                suggested: Optional[int] = None, accumulation: Optional[int] = None) -> str:
    """The memory answer for batch, as the estimate, the wizard and train() print it. peak: a measured CUDA peak
    (measured=True) instead of the memory model's figure. On a CPU it is the process's peak (see MemoryModel)."""
    how = "measured" if measured else "estimated"
    if memory.process_bytes:  # a CPU: the RAM holds the whole process
        how += ": the process's memory before training, plus the gradients, AdamW state and activations"
    need = f"about {_bytes(memory.bytes_at(batch) if peak is None else peak)} ({how}) at batch_size={batch}"
    if memory.process_bytes:
        need = f"the process peaks at {need}"
    if memory.shards > 1:
        need += f" on each device (one of {memory.shards} FSDP shards)"
    if memory.capacity_bytes is None:
        return f"Memory: {need}; not compared with {memory.capacity_name}."
    where = f"{memory.capacity_name} ({_bytes(memory.capacity_bytes)}, {USABLE_FRACTION:.0%} usable)"
    if suggested is None:
        return f"Memory: {need}, fits in {where}."
    advice = memory_advice(memory, batch, suggested, accumulation or 1)
    return f"Memory: {need} does NOT fit in {where}. {advice}{' (the time above is for that)' if suggested else ''}."


def memory_advice(memory: MemoryModel, batch: int, suggested: int, accumulation: int) -> str:
    """What to set instead of a batch that does not fit: the estimate's memory line and the error say the same."""
    if not suggested:
        return "Not even batch_size=1 fits: pick a smaller model_size or max_seq_len"
    return (f"The largest batch that fits is {memory.largest_batch(batch)}: batch_size={suggested} with "
            f"gradient_accumulation_steps={accumulation} keeps the effective batch")


def measure_memory(config: WizardConfig, decision: PrecisionDecision, model: nn.Module, task, vocab_size: int,
                   num_classes: int, world_size: int = 1, seq_len: Optional[int] = None) -> MemoryModel:
    """The memory model of model where it is (train() places it on the training device first): two forward
    passes at batch 1 and 2 in the run's autocast dtype, their saved tensors counted (see Stepper.peak_bytes);
    no batch of the config's size is ever built, so a huge batch_size costs nothing here, and no copy is made.
    The capacity compared against is decision.device's.

    world_size: training processes. Under strategy="fsdp" each holds 1/world_size of the model's state. seq_len:
    the longest batch the data makes (chat examples pad to their batch's longest; default max_seq_len).
    """
    shards = world_size if config.strategy == "fsdp" else 1
    with measuring(model):
        step = Stepper(model, None, task, decision, vocab_size, num_classes, seq_len or config.max_seq_len)
        saved_1, saved_2 = step.peak_bytes(1), step.peak_bytes(2)
        del step
    return _memory_model(model, saved_1, saved_2, decision.device, shards)


SHORT_SEQUENCE = 512  # check_sequence_length steps at this length first; longer runs are announced


def check_sequence_length(config: WizardConfig, decision: PrecisionDecision, model: nn.Module, task,
                          vocab_size: int, num_classes: int) -> None:
    """Before measure_memory steps at max_seq_len (minutes for a very long one): one sequence of SHORT_SEQUENCE
    tokens, scaled to max_seq_len, is a floor (activations grow at least linearly with the length, attention's
    faster), above the parameters at what they cost (utils.training.memory: a frozen base at its storage). A floor
    above the device's memory is refused at once; a long length that may fit is said first. Measured on the model
    itself, where it is, in the run's autocast dtype: nothing is copied."""
    T = config.max_seq_len
    if T <= SHORT_SEQUENCE:
        return
    with measuring(model):
        short = Stepper(model, None, task, decision, vocab_size, num_classes, SHORT_SEQUENCE).peak_bytes(1)
    weights = parameter_bytes(model)
    floor = weights + short * T // SHORT_SEQUENCE
    capacity, name = device_capacity(decision.device)
    if capacity is not None and floor > USABLE_FRACTION * capacity:
        raise BatchTooLargeError(
            f"max_seq_len={T} needs at least {_bytes(floor)} for one sequence, more than {name} ({_bytes(capacity)}, "
            f"{USABLE_FRACTION:.0%} usable); lower max_seq_len (a {SHORT_SEQUENCE}-token sequence needs "
            f"{_bytes(weights + short)}) or pick a smaller model.")
    if T > 8 * SHORT_SEQUENCE:
        print(f"Memory: measuring a training step of {T:,} tokens per sequence; sequences this long take a while "
              "(attention grows with the square of the length).", flush=True)


def check_memory(memory: MemoryModel, config: WizardConfig) -> None:
    """Raise BatchTooLargeError when the config's batch does not fit in the device's memory."""
    B, A = config.batch_size, config.gradient_accumulation_steps
    if memory.fits(B):
        return
    suggested, accumulation = _batch_that_fits(memory, B, A)
    raise BatchTooLargeError(
        f"batch_size={B} needs about {_bytes(memory.bytes_at(B))} for training, more than "
        f"{memory.capacity_name} ({_bytes(memory.capacity_bytes)}, {USABLE_FRACTION:.0%} usable). "
        f"{memory_advice(memory, B, suggested, accumulation)}.")


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
    batch, accumulation = _batch_that_fits(memory, B, A)
    suggested = (batch, accumulation) if batch != B else (None, None)
    timed_batch, timed_accumulation = batch, accumulation
    if memory.shards > 1:  # FSDP: one device times the whole model, at a batch that holds it whole
        timed_batch, timed_accumulation = _batch_that_fits(memory.whole(), B, A)
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
            f"expected about {_bytes(memory.bytes_at(B))}); batch_size={batch} with gradient_accumulation_steps="
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
    """Prepare the config's data and build its model (as train() does), then estimate_run().

    refuse_oversize: raise BatchTooLargeError for a batch that does not fit, as train() does, instead of timing
    the largest batch that fits (the command line's `estimate`: that batch can fill most of the memory).
    """
    from utils.training.builder import batch_lengths, build_dataloaders

    config = config.validate()
    data, model, task = _built(config, decision, decision.torch_device())  # timed where the run trains
    check_sequence_length(config, decision, model, task, data.tokenizer.vocab_size, data.num_classes)
    typical, longest = batch_lengths(config, data)
    memory = measure_memory(config, decision, model, task, data.tokenizer.vocab_size, data.num_classes,
                            seq_len=longest)
    if refuse_oversize:
        check_memory(memory, config)
    train_loader, val_loader = build_dataloaders(config, data.train, data.val, pin_memory=False)  # for their lengths
    return estimate_run(config, decision, model, task, data.tokenizer.vocab_size, data.num_classes,
                        len(train_loader), len(val_loader), memory=memory, refuse_oversize=refuse_oversize,
                        seq_len=typical)


def memory_on(config: WizardConfig, decision: PrecisionDecision) -> MemoryModel:
    """The memory config's run needs on decision.device (`estimate --gpu`: a GPU this machine need not have),
    measured here: the data prepared and the model built as train() builds them, left on this machine's CPU,
    its forward passes counted in the GPU's autocast dtype (CPU autocast runs fp16 and bf16). Raises
    BatchTooLargeError, naming the batch that fits, where train() on that GPU would."""
    config = config.validate()
    data, model, task = _built(config, decision)
    check_sequence_length(config, decision, model, task, data.tokenizer.vocab_size, data.num_classes)
    memory = measure_memory(config, decision, model, task, data.tokenizer.vocab_size, data.num_classes)
    check_memory(memory, config)
    return memory


def _built(config: WizardConfig, decision: PrecisionDecision, device: Optional[torch.device] = None):
    """(data, model, task) as train() prepares them, the model placed on device (None: the CPU)."""
    from utils.data import prepare_data
    from utils.training.builder import build_data_spec
    from utils.models.build import build_model, build_task

    data = prepare_data(build_data_spec(config))
    torch.manual_seed(config.seed)
    model = build_model(config, data.tokenizer.vocab_size, data.num_classes, data.pad_id, decision=decision,
                        device=device)
    return data, model, build_task(config)


def count_validations(config: WizardConfig, train_batches: int, steps: int) -> int:
    """Validation runs in a run of `steps` optimizer steps (val_check_interval per epoch, and one at max_steps)."""
    steps_per_epoch = max(1, math.ceil(train_batches / config.gradient_accumulation_steps))
    epochs = steps / steps_per_epoch
    interval = config.val_check_interval
    per_epoch = max(1, int(1 / interval)) if interval <= 1 else max(1, train_batches // int(interval))
    return max(1, math.floor(epochs * per_epoch) + (0 if steps % steps_per_epoch == 0 else 1))


def device_capacity(device: DeviceInfo) -> tuple[Optional[int], str]:
    """The memory a run can use: the DeviceInfo's (tests give a small one), else this machine's RAM on a CPU."""
    if device.total_memory_bytes:
        return device.total_memory_bytes, f"{device.name} memory"
    if device.kind == "cpu":
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine's RAM"
        except (ValueError, OSError, AttributeError):  # not every OS exposes these
            return None, "RAM (not checked on this OS)"
    return None, f"{device.name} memory (unknown)"


def _memory_model(model: nn.Module, saved_1: int, saved_2: int, device: DeviceInfo, shards: int = 1) -> MemoryModel:
    per_sequence = max(saved_2 - saved_1, 0)  # what grows with the batch; the rest (weight casts) does not
    other = max(saved_1 - per_sequence, 0)
    state = parameter_bytes(model)
    capacity, name = device_capacity(device)
    # A CPU run's capacity is the RAM the whole process lives in: count what it holds beside the model, so the
    # answer is the process's peak (a capacity given for the device, as tests give one, is the device's alone).
    beside = process_bytes_beside(model) if device.kind == "cpu" and not device.total_memory_bytes else 0
    if shards == 1:
        return MemoryModel(state + other, per_sequence, capacity, name, process_bytes=beside)
    # One shard of the state, plus the unit FSDP gathers whole for its forward and backward: its fp32
    # parameters and their gradient before the reduce-scatter (an overestimate under mixed precision).
    gathered = 2 * 4 * largest_fsdp_unit(model)
    return MemoryModel(math.ceil(state / shards) + gathered + other, per_sequence, capacity, name, shards,
                       state + other)


def largest_fsdp_unit(model: nn.Module) -> int:
    """Parameters of the largest piece FSDP gathers at once: a template's Block or what is left outside the
    blocks (embeddings, head); for another model, its largest top-level child, or the rest."""
    from utils.training.builder import template_blocks  # the wrap policy's own choice of units

    kinds = template_blocks(model)
    units = [m for m in model.modules() if type(m) in kinds] if kinds else list(model.children())
    sizes = [sum(p.numel() for p in unit.parameters()) for unit in units]
    total = sum(p.numel() for p in model.parameters())
    return max(sizes + [total - sum(sizes)])


def _batch_that_fits(memory: MemoryModel, batch: int, accumulation: int) -> tuple[int, int]:
    """The config's batch if it fits; else the largest that does (a divisor of the effective batch when one
    is at least half as large) and the accumulation that keeps the effective batch."""
    if memory.fits(batch):
        return batch, accumulation
    largest = memory.largest_batch(batch)
    if largest == 0:
        return 0, accumulation
    effective = batch * accumulation
    divisor = next((b for b in range(largest, largest // 2, -1) if effective % b == 0), largest)
    return divisor, math.ceil(effective / divisor)


_bytes = format_bytes  # the name this module's messages and its tests use
