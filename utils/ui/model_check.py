"""The wizard's model step: parameter count, a forward/backward check and a memory estimate.

The parameter count builds the model on the meta device (no memory, instant), so it can follow
every change. The check runs on CPU and only when asked: the memory figure is train()'s memory model
(utils.plan.memory_model.measure_memory) of the model utils.plan builds, so the wizard, `estimate` and
train() say the same number for the same model.
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
from utils.plan.memory import USABLE_FRACTION, parameter_bytes  # train()'s memory model, not one of its own
from utils.plan.memory_model import MemoryModel, measure_memory
from utils.plan.run_plan import build_planned_model



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
    weights_bytes: int  # parameters at what they cost in training (utils.plan.memory: a frozen base at its storage)
    activation_bytes: int  # what training adds at the config's batch size: activations, the loss's backward
    capacity_bytes: Optional[int]  # device memory (or RAM on CPU), None when unknown
    capacity_name: str  # what capacity_bytes is, e.g. "Tesla T4 memory"
    process_bytes: int = 0  # a CPU run: what the process holds beside the model (see MemoryModel)
    memory: Optional[MemoryModel] = None  # train()'s memory model of this model, which the figures above read

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.activation_bytes + self.process_bytes

    @property
    def fits(self) -> Optional[bool]:
        return None if self.capacity_bytes is None else self.total_bytes <= USABLE_FRACTION * self.capacity_bytes


def measure_model(config: WizardConfig, decision: PrecisionDecision) -> ModelCheck:
    """Build the model on the CPU as training builds it (utils.plan: the vocabulary the wizard counts, a
    classifier's assumed head) and measure train()'s own memory model of it (measure_memory: its passes in the
    run's autocast dtype, compared with the run's device); then one forward/backward at batch 2."""
    vocab, _ = vocab_size_for(config)
    classes = ASSUMED_CLASSES if config.task == "classification" else 0
    model, _ = build_planned_model(config, decision, vocab, classes, 0)
    task, B = build_task(config), config.batch_size
    memory = measure_memory(config, decision, model, task, vocab, classes)
    start = time.perf_counter()
    loss = _loss_after_backward(model, task, config, vocab, decision)
    seconds = time.perf_counter() - start
    weights = parameter_bytes(model)
    return ModelCheck(sum(p.numel() for p in model.parameters()), vocab, loss, seconds, weights,
                      memory.bytes_at(B) - memory.process_bytes - weights, memory.capacity_bytes,
                      memory.capacity_name, memory.process_bytes, memory)


def _loss_after_backward(model, task, config: WizardConfig, vocab: int, decision: PrecisionDecision) -> float:
    """The untrained model's loss on 2 dummy sequences shaped as the data gives them, after its backward."""
    dummy, _ = task.dummy_batch(2, config.max_seq_len, vocab, ASSUMED_CLASSES)
    with _autocast(decision):
        loss, _ = task.loss(model, dummy)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return loss.item()


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
        f"and AdamW + {format_bytes(check.activation_bytes)} for activations"
        + (f" + {format_bytes(check.process_bytes)} the process holds beside the model (Python, torch, the data)."
           if check.process_bytes else "."),
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
