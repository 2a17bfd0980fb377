"""The wizard's model step: parameter count, a forward/backward check and a memory estimate.

The parameter count builds the model on the meta device (no memory, instant), so it can follow
every change. The forward/backward check runs on CPU at batch 1 and 2 and only when asked.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Optional

import torch

from utils.config import PRECISION_WORDS, WizardConfig
from utils.data.spec import vocab_size_for
from utils.formatting import format_bytes
from utils.precision import PrecisionDecision
from utils.models.build import build_model, build_task
from utils.training.estimate import BYTES_PER_PARAMETER, USABLE_FRACTION, device_capacity  # one memory model



# The wizard does not read the labels; a classifier's head is sized for this many classes until
# training reads the data (the head is a tiny share of the parameters).
ASSUMED_CLASSES = 2


def _build(config: WizardConfig, vocab_size: int):
    classes = ASSUMED_CLASSES if config.task == "classification" else 0
    return build_model(config, vocab_size, num_classes=classes, pad_id=0)


def count_parameters(config: WizardConfig, vocab_size: int) -> int:
    """Distinct parameters (tied weights once) of the model the config builds."""
    with torch.device("meta"):
        model = _build(config, vocab_size)
    return sum(p.numel() for p in model.parameters())


@dataclass(frozen=True)
class ModelCheck:
    parameters: int
    vocab_size: int
    loss: float  # loss of the untrained model on the dummy batch, about ln(vocab_size)
    seconds: float  # the forward/backward at batch 2 on CPU
    weights_bytes: int  # parameters, gradients and AdamW states
    activation_bytes: int  # tensors autograd keeps for backward, at the config's batch size
    capacity_bytes: Optional[int]  # device memory (or RAM on CPU), None when unknown
    capacity_name: str  # what capacity_bytes is, e.g. "Tesla T4 memory"

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.activation_bytes

    @property
    def fits(self) -> Optional[bool]:
        return None if self.capacity_bytes is None else self.total_bytes <= USABLE_FRACTION * self.capacity_bytes


def measure_model(config: WizardConfig, decision: PrecisionDecision) -> ModelCheck:
    """Build the model on CPU, run forward/backward on a dummy batch and estimate training memory."""
    vocab, _ = vocab_size_for(config)
    torch.manual_seed(config.seed)
    model = _build(config, vocab)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved_1 = _saved_bytes(model, config, vocab, 1, decision, params, backward=False)[0]
    start = time.perf_counter()
    saved_2, loss = _saved_bytes(model, config, vocab, 2, decision, params, backward=True)
    seconds = time.perf_counter() - start
    per_sequence = saved_2 - saved_1  # what grows with the batch; the rest (weight casts) does not
    activations = saved_1 - per_sequence + per_sequence * config.batch_size
    parameters = sum(p.numel() for p in model.parameters())
    capacity, capacity_name = device_capacity(decision.device)
    return ModelCheck(parameters, vocab, loss, seconds, parameters * BYTES_PER_PARAMETER, max(activations, 0),
                      capacity, capacity_name)


def _saved_bytes(model, config, vocab, batch, decision, params, backward: bool) -> tuple[int, float]:
    """Bytes of the tensors autograd saves for backward (parameters excluded), and the loss."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            storages[ptr] = t.untyped_storage().nbytes()
        return t

    task = build_task(config)
    dummy, _ = task.dummy_batch(batch, config.max_seq_len, vocab, ASSUMED_CLASSES)  # as the data gives it
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), _autocast(decision):
        loss, _ = task.loss(model, dummy)
    if backward:
        loss.backward()
    return sum(storages.values()), loss.item()


def _autocast(decision: PrecisionDecision):
    # Measured on the CPU whatever the device: CPU autocast runs both fp16 and bf16, so the activations are
    # measured in the dtype training uses.
    return torch.autocast("cpu", dtype=decision.autocast_dtype) if decision.autocast_dtype else nullcontext()


def describe_check(check: ModelCheck, config: WizardConfig, decision: PrecisionDecision) -> str:
    """Plain lines for the wizard, in its words: what an untrained model should score and what this one did,
    what training needs in memory, whether that fits."""
    outputs = build_task(config).chance_loss_outputs(check.vocab_size, ASSUMED_CLASSES)
    expected = math.log(outputs)  # a model that has learnt nothing guesses uniformly among its outputs
    if abs(check.loss - expected) <= LOSS_TOLERANCE * expected:
        verdict = "as expected"
    else:
        verdict = (f"{'higher' if check.loss > expected else 'lower'} than expected: check how the model sets up its "
                   "weights")
    precision = PRECISION_WORDS.get(decision.precision, decision.precision)
    lines = [
        f"An untrained model should score a loss of about {expected:.1f} (it guesses among {outputs:,} outputs); "
        f"yours: {check.loss:.2f} — {verdict}. One training step on 2 dummy sequences took {check.seconds:.2f} s "
        "on the CPU.",
        f"Training memory at Batch size {config.batch_size} and Sequence length {config.max_seq_len}, in {precision}: "
        f"about {format_bytes(check.total_bytes)} = {format_bytes(check.weights_bytes)} for the weights, gradients "
        f"and AdamW + {format_bytes(check.activation_bytes)} for activations.",
    ]
    if check.fits is None:
        lines.append(f"Not compared with {check.capacity_name}.")
    else:
        verdict = "fits" if check.fits else "does NOT fit"
        lines.append(f"That {verdict} in {check.capacity_name} ({format_bytes(check.capacity_bytes)}, "
                     f"{USABLE_FRACTION:.0%} usable)." + ("" if check.fits else
                                                          " Lower Batch size or Sequence length, or pick a smaller "
                                                          "Model size."))
    return "\n".join(lines)


LOSS_TOLERANCE = 0.15  # an untrained model's loss within 15% of ln(outputs) reads "as expected"
