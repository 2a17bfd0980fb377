"""Does a pretrained model fine-tune on a T4, an L4 or an A100? Answered from its config.json alone.

Before anything downloads, the model is built on PyTorch's meta device from its config (shapes, no
memory, no weights) to count its parameters and find its linear layers; the memory a training step
needs then follows from the method, the batch and the sequence length:

    weights      full: 16 bytes a parameter (fp32 weights and gradients, AdamW's two moments);
                 LoRA: the frozen base in the run's 16 bits (2 bytes); QLoRA: its block linears in 4-bit nf4
                 with double quantisation (about 0.52 bytes), the rest (embeddings, norms, head) in 16 bits
    adapters     16 bytes per adapter parameter: rank x (in + out) for each targeted linear layer
    activations  what autograd keeps for the backward pass, per token and block, in 16 bits: the block's
                 input and norm outputs (the norms upcast to fp32), q, k, v and the attention output, the
                 MLP's gate, up and activation outputs; with gradient checkpointing only the block's input
    logits       vocab_size scores per token: the fp32 log-probabilities the loss keeps (4 bytes)
    backward     what the backward adds at once: the loss's fp32 gradients of its logits (8 bytes a logit),
                 or under gradient checkpointing one block's activations while it is recomputed, the larger

The per-parameter and per-logit rules are utils.plan.memory's, which the measured memory model
(utils.plan.memory_model: check_sequence_length, measure_memory) counts with too. This is that model on
paper, from a config alone; `python -m utils.training estimate` prints it for a pretrained model, and
`estimate --gpu t4` the verdict for one GPU (gpu_verdict).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from utils.env import DeviceInfo
from utils.models.adapters import HEADS
from utils.formatting import format_bytes
from utils.plan.memory import (LOGIT_SAVED_BYTES, NF4_BYTES, USABLE_FRACTION, frozen_bytes, logit_backward_bytes,
                                   trained_bytes)

_bytes = format_bytes
# The GPUs `estimate --gpu` answers for, with the memory their runtimes report (Colab's T4, L4, A100; an H100).
GPUS = {"t4": DeviceInfo("cuda", "Tesla T4", (7, 5), 15 * 2**30),
        "l4": DeviceInfo("cuda", "NVIDIA L4", (8, 9), int(22.5 * 2**30)),
        "a100": DeviceInfo("cuda", "NVIDIA A100-SXM4-40GB", (8, 0), 40 * 2**30),
        "h100": DeviceInfo("cuda", "NVIDIA H100 80GB HBM3", (9, 0), 80 * 2**30)}
GPU_MEMORY = {name.upper(): gpu.total_memory_bytes for name, gpu in GPUS.items()}
HALF = 2  # bytes of a 16-bit number


@dataclass(frozen=True)
class ModelShape:
    """What the memory model needs of a transformer, read from its config and a meta-device build."""

    parameters: int
    block_linear_parameters: int  # weights of the linear layers inside the blocks (LoRA's all-linear targets)
    adapter_parameters_per_rank: int  # sum of (in + out) over those layers
    layers: int
    hidden: int
    intermediate: int
    kv_width: int  # key/value projection width (heads x head dim; smaller than hidden with grouped-query attention)
    vocab_size: int


@dataclass(frozen=True)
class FitPlan:
    method: str
    batch: int
    seq_len: int
    checkpointing: bool
    weight_bytes: int
    adapter_bytes: int
    activation_bytes: int
    logit_bytes: int
    backward_bytes: int = 0

    @property
    def total_bytes(self) -> int:
        return self.weight_bytes + self.adapter_bytes + self.activation_bytes + self.logit_bytes + self.backward_bytes

    def fits(self, capacity_bytes: float) -> bool:
        return self.total_bytes <= USABLE_FRACTION * capacity_bytes

    def describe(self) -> str:
        return (f"{_bytes(self.total_bytes)} = weights {_bytes(self.weight_bytes)} + adapters and optimizer "
                f"{_bytes(self.adapter_bytes)} + activations {_bytes(self.activation_bytes)} + logits "
                f"{_bytes(self.logit_bytes)} + backward {_bytes(self.backward_bytes)}")


def shape_of(model: nn.Module) -> ModelShape:
    """The memory model's view of a (meta-device) transformers model."""
    config = model.config
    linear = [(name, m) for name, m in model.named_modules()
              if (isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D") and name.rsplit(".", 1)[-1] not in HEADS]
    hidden = _first(config, "hidden_size", "n_embd", "d_model")
    heads = _first(config, "num_attention_heads", "n_head")
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    return ModelShape(
        parameters=sum(p.numel() for p in {id(p): p for p in model.parameters()}.values()),
        block_linear_parameters=sum(m.weight.numel() for _, m in linear),
        adapter_parameters_per_rank=sum(sum(m.weight.shape) for _, m in linear),
        layers=_first(config, "num_hidden_layers", "n_layer"), hidden=hidden,
        intermediate=getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * hidden,
        kv_width=kv_heads * head_dim, vocab_size=config.vocab_size)


def plan(shape: ModelShape, method: str, batch: int, seq_len: int, rank: int = 16,
         checkpointing: bool = False, base_bytes: int = HALF) -> FitPlan:
    """The memory of one training step at batch x seq_len tokens, by the module docstring's model. base_bytes: what
    a frozen base parameter is stored in (the run's base_dtype: 2 on a GPU in mixed precision, 4 in fp32)."""
    tokens = batch * seq_len
    if method == "full":
        weights, adapters = trained_bytes(shape.parameters), 0
    else:
        other = shape.parameters - shape.block_linear_parameters
        linear = frozen_bytes(shape.block_linear_parameters, NF4_BYTES if method == "qlora" else base_bytes)
        weights = linear + frozen_bytes(other, base_bytes)
        adapters = trained_bytes(rank * shape.adapter_parameters_per_rank)
    h, kv = shape.hidden, shape.kv_width
    # per token in one block: input 2h; two RMSNorms' fp32 input and 16-bit output 12h; q, attention output 4h;
    # k and v 4kv; gate, up, activation and their product 8 x intermediate
    block = HALF * h + 12 * h + 4 * h + 4 * kv + 8 * shape.intermediate
    kept = HALF * h * shape.layers if checkpointing else block * shape.layers
    recomputed = tokens * block if checkpointing else 0
    logits = tokens * shape.vocab_size
    return FitPlan(method, batch, seq_len, checkpointing, weights, adapters, tokens * kept,
                   logits * LOGIT_SAVED_BYTES, max(recomputed, logit_backward_bytes(logits)))


def fit_answer(shape: ModelShape, method: str, capacity: float, batch: int, seq_len: int, rank: int = 16) -> str:
    """'fits', 'fits with checkpointing' or 'does not fit', for one method on one device."""
    if plan(shape, method, batch, seq_len, rank).fits(capacity):
        return "fits"
    if plan(shape, method, batch, seq_len, rank, checkpointing=True).fits(capacity):
        return "fits with checkpointing"
    return "does not fit"


def describe_fit(name: str, shape: ModelShape, batch: int, seq_len: int, rank: int = 16) -> list[str]:
    """The lines `estimate` prints: the parameter count and, per GPU and method, the memory and the answer."""
    lines = [f"Fits where? {name}: {shape.parameters / 1e9:.2f}B parameters (from its config alone), batch "
             f"{batch} x {seq_len} tokens, LoRA rank {rank}:"]
    for gpu, capacity in GPU_MEMORY.items():
        answers = []
        for method in ("full", "lora", "qlora"):
            answer = fit_answer(shape, method, capacity, batch, seq_len, rank)
            need = plan(shape, method, batch, seq_len, rank, checkpointing=answer == "fits with checkpointing")
            answers.append(f"{method} {answer} ({_bytes(need.total_bytes)})")
        lines.append(f"  {gpu} ({_bytes(int(capacity))}): " + "; ".join(answers))
    return lines


def _first(config, *names: str) -> int:
    for name in names:
        value = getattr(config, name, None)
        if value:
            return int(value)
    raise ValueError(f"{type(config).__name__} has none of {', '.join(names)}")


def gpu_verdict(name: str, shape: ModelShape, config, decision) -> str:
    """`estimate --gpu`'s answer for a pretrained model from its config: one line saying that config's run fits
    decision.device (a GPU of GPUS), or BatchTooLargeError naming the batch, checkpointing or method that fits.
    gradient_checkpointing="auto" turns it on when the batch needs it, as train() does."""
    from utils.plan.memory_model import BatchTooLargeError

    gpu, B, T = decision.device, config.batch_size, config.max_seq_len
    where = f"{gpu.name} ({_bytes(gpu.total_memory_bytes)}, {USABLE_FRACTION:.0%} usable)"
    base = torch.finfo(decision.base_dtype).bits // 8
    choices = {"true": (True,), "false": (False,), "auto": (False, True)}[config.gradient_checkpointing]
    for checkpointing in choices:
        need = plan(shape, config.finetune_method, B, T, config.lora_rank, checkpointing, base)
        if need.fits(gpu.total_memory_bytes):
            return f"Fits: {_run_words(name, need)} needs about {need.describe()}, within {where}."
    raise BatchTooLargeError(f"Does not fit: {_run_words(name, need)} needs about {_bytes(need.total_bytes)}, more "
                             f"than {where}. {_what_fits(shape, config, gpu.total_memory_bytes, base)}.")


def _what_fits(shape: ModelShape, config, capacity: int, base: int) -> str:
    """The nearest change that fits: gradient checkpointing, then a smaller batch, then another method."""
    method, B, A, T, rank = (config.finetune_method, config.batch_size, config.gradient_accumulation_steps,
                             config.max_seq_len, config.lora_rank)
    checkpointing = config.gradient_checkpointing != "false"
    if not checkpointing and plan(shape, method, B, T, rank, True, base).fits(capacity):
        return f"gradient_checkpointing=true fits ({_bytes(plan(shape, method, B, T, rank, True, base).total_bytes)})"
    fitting = [b for b in range(B - 1, 0, -1) if plan(shape, method, b, T, rank, checkpointing, base).fits(capacity)]
    if fitting:
        b = fitting[0]
        return (f"batch_size={b} with gradient_accumulation_steps={math.ceil(B * A / b)} keeps the effective batch "
                f"and fits ({_bytes(plan(shape, method, b, T, rank, checkpointing, base).total_bytes)})")
    for other in ("lora", "qlora"):
        need = plan(shape, other, B, T, rank, True, base)
        if other != method and need.fits(capacity):
            return (f"finetune_method={other} with gradient_checkpointing=true fits at batch_size={B} "
                    f"({_bytes(need.total_bytes)})")
    return "Nothing fits this GPU at this max_seq_len: lower max_seq_len or pick a smaller model"


def _run_words(name: str, need: FitPlan) -> str:
    checkpointing = ", gradient checkpointing" if need.checkpointing else ""
    return f"{name} ({need.method}, batch {need.batch} x {need.seq_len} tokens{checkpointing})"
