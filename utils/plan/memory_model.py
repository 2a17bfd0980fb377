"""The one memory model of a training run: what it needs at batch b on one device, and whether that fits.

measure_memory counts two forward passes of the model itself, where it is (batch 1 and 2, in the run's autocast
dtype; utils.plan.stepper) by utils.plan.memory's rules: parameters at what they cost in training, activations,
the LM loss's backward, checkpointed recomputation. On a CPU whose RAM is the capacity the answer is the
process's peak (its resident memory beside the model, plus what training adds); on a GPU the device's
allocations. train(), the `estimate` command, the inspection's memory check and the wizard's review all read
this model (the review through utils.plan.plan_run), and memory_line says it in the same words for each.

Under FSDP each device holds a shard: parameters, gradients and AdamW state divided by the number of
processes, plus the unit FSDP gathers whole while it computes.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Optional

from torch import nn

from utils.config import WizardConfig
from utils.env import DeviceInfo
from utils.errors import KitError
from utils.formatting import format_bytes
from utils.plan.memory import USABLE_FRACTION, parameter_bytes, process_bytes_beside
from utils.plan.stepper import Stepper, measuring
from utils.precision import PrecisionDecision


def template_blocks(model: nn.Module) -> set[type]:
    """The Block classes of a template model (templates/gpt.py, classifier.py): FSDP's units."""
    return {type(m) for m in model.modules()
            if type(m).__name__ == "Block" and type(m).__module__.startswith("templates.")}


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


def memory_line(memory: MemoryModel, batch: int, peak: Optional[int] = None, measured: bool = False,
                suggested: Optional[int] = None, accumulation: Optional[int] = None) -> str:
    """The memory answer for batch, as the estimate, the wizard and train() print it. peak: a measured CUDA peak
    (measured=True) instead of the memory model's figure. On a CPU it is the process's peak (see MemoryModel)."""
    how = "measured" if measured else "estimated"
    if memory.process_bytes:  # a CPU: the RAM holds the whole process
        how += ": the process's memory before training, plus the gradients, AdamW state and activations"
    need = f"about {format_bytes(memory.bytes_at(batch) if peak is None else peak)} ({how}) at batch_size={batch}"
    if memory.process_bytes:
        need = f"the process peaks at {need}"
    if memory.shards > 1:
        need += f" on each device (one of {memory.shards} FSDP shards)"
    if memory.capacity_bytes is None:
        return f"Memory: {need}; not compared with {memory.capacity_name}."
    where = f"{memory.capacity_name} ({format_bytes(memory.capacity_bytes)}, {USABLE_FRACTION:.0%} usable)"
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
    faster), above the parameters at what they cost (utils.plan.memory: a frozen base at its storage). A floor
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
            f"max_seq_len={T} needs at least {format_bytes(floor)} for one sequence, more than {name} "
            f"({format_bytes(capacity)}, "
            f"{USABLE_FRACTION:.0%} usable); lower max_seq_len (a {SHORT_SEQUENCE}-token sequence needs "
            f"{format_bytes(weights + short)}) or pick a smaller model.")
    if T > 8 * SHORT_SEQUENCE:
        print(f"Memory: measuring a training step of {T:,} tokens per sequence; sequences this long take a while "
              "(attention grows with the square of the length).", flush=True)


def check_memory(memory: MemoryModel, config: WizardConfig) -> None:
    """Raise BatchTooLargeError when the config's batch does not fit in the device's memory."""
    B, A = config.batch_size, config.gradient_accumulation_steps
    if memory.fits(B):
        return
    suggested, accumulation = batch_that_fits(memory, B, A)
    raise BatchTooLargeError(
        f"batch_size={B} needs about {format_bytes(memory.bytes_at(B))} for training, more than "
        f"{memory.capacity_name} ({format_bytes(memory.capacity_bytes)}, {USABLE_FRACTION:.0%} usable). "
        f"{memory_advice(memory, B, suggested, accumulation)}.")


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
    kinds = template_blocks(model)
    units = [m for m in model.modules() if type(m) in kinds] if kinds else list(model.children())
    sizes = [sum(p.numel() for p in unit.parameters()) for unit in units]
    total = sum(p.numel() for p in model.parameters())
    return max(sizes + [total - sum(sizes)])


def batch_that_fits(memory: MemoryModel, batch: int, accumulation: int) -> tuple[int, int]:
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
