"""Does a pretrained model fine-tune on a T4, an L4 or an A100? Answered from its config.json alone.

Before anything downloads, the model is built on PyTorch's meta device from its config (shapes, no
memory, no weights) to count its parameters and find its linear layers; the memory a training step
needs then follows from the method, the batch and the sequence length:

    weights      full: 16 bytes a parameter (fp32 weights and gradients, AdamW's two moments);
                 LoRA: the frozen base in 16 bits (2 bytes); QLoRA: its block linears in 4-bit nf4 with
                 double quantisation (about 0.52 bytes), the rest (embeddings, norms, head) in 16 bits
    adapters     16 bytes per adapter parameter: rank x (in + out) for each targeted linear layer
    activations  what autograd keeps for the backward pass, per token and block, in 16 bits: the block's
                 input and norm outputs (the norms upcast to fp32), q, k, v and the attention output, the
                 MLP's gate, up and activation outputs; with gradient checkpointing only the block's input,
                 plus one block's activations while it is recomputed
    logits       vocab_size scores per token: fp16 from the head, fp32 for the loss, its gradient

This is the kit's memory model on paper; training measures the real one (utils.training.estimate)
before its first step. `python -m utils.training estimate` prints it for a pretrained model.
"""

from __future__ import annotations

from dataclasses import dataclass
from torch import nn

from utils.models.adapters import HEADS
from utils.training.estimate import BYTES_PER_PARAMETER, USABLE_FRACTION, _bytes

GPU_MEMORY = {"T4": 15.0 * 2**30, "L4": 22.5 * 2**30, "A100": 40.0 * 2**30}  # as Colab's runtimes report them
NF4_BYTES = 4.127 / 8  # 4-bit weights plus double-quantised absmax constants (QLoRA paper: 0.127 bits a weight)
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

    @property
    def total_bytes(self) -> int:
        return self.weight_bytes + self.adapter_bytes + self.activation_bytes + self.logit_bytes

    def fits(self, capacity_bytes: float) -> bool:
        return self.total_bytes <= USABLE_FRACTION * capacity_bytes

    def describe(self) -> str:
        return (f"{_bytes(self.total_bytes)} = weights {_bytes(self.weight_bytes)} + adapters and optimizer "
                f"{_bytes(self.adapter_bytes)} + activations {_bytes(self.activation_bytes)} + logits "
                f"{_bytes(self.logit_bytes)}")


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
         checkpointing: bool = False) -> FitPlan:
    """The memory of one training step at batch x seq_len tokens, by the module docstring's model."""
    tokens = batch * seq_len
    if method == "full":
        weights, adapters = shape.parameters * BYTES_PER_PARAMETER, 0
    else:
        other = shape.parameters - shape.block_linear_parameters
        linear = shape.block_linear_parameters * (NF4_BYTES if method == "qlora" else HALF)
        weights, adapters = int(linear + other * HALF), rank * shape.adapter_parameters_per_rank * BYTES_PER_PARAMETER
    h, kv = shape.hidden, shape.kv_width
    # per token in one block: input 2h; two RMSNorms' fp32 input and 16-bit output 12h; q, attention output 4h;
    # k and v 4kv; gate, up, activation and their product 8 x intermediate
    block = HALF * h + 12 * h + 4 * h + 4 * kv + 8 * shape.intermediate
    kept = HALF * h * shape.layers + block if checkpointing else block * shape.layers
    logits = shape.vocab_size * (HALF + 4 + 4)  # 16-bit scores, fp32 for the loss, the fp32 gradient
    return FitPlan(method, batch, seq_len, checkpointing, weights, adapters, tokens * kept, tokens * logits)


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
