"""The kit's one counting of training memory: what each parameter and each logit costs on the device.

check_sequence_length, measure_memory (utils.plan.memory_model) and the paper model from a config alone
(utils.training.fit_plan) all count with these rules, so they print the same figure for the same thing:

    trained parameter   16 bytes: the fp32 weight (Lightning keeps fp32 weights under mixed precision too, and
                        adapters train in fp32), its gradient and AdamW's two moments
    frozen parameter    its storage and nothing else (no gradient, no optimizer state): 2 bytes in 16 bits;
                        a bitsandbytes 4-bit weight its packed bytes plus its quantisation constants
    logit               12 bytes: the loss upcasts the logits to fp32 (tasks' scored(), transformers'
                        ForCausalLMLoss too): cross_entropy keeps the fp32 log-probabilities (4 B, a saved
                        tensor), and its backward holds their gradient and the fp32 logits' gradient (8 B)
    checkpointing       the blocks' inputs are kept; during the backward one block's activations are alive
                        again while it is recomputed (the larger of that and the logits' gradient is the peak)
    the process         on a CPU the run lives in the machine's RAM beside Python, torch, the data and the
                        allocator: the answer there is the process's peak, its resident memory before training
                        (the model's weights, read once, included) plus what training adds; on a GPU it is the
                        device's allocations alone (torch.cuda.max_memory_allocated)
"""

from __future__ import annotations

import os
from typing import Optional

from torch import nn

BYTES_PER_PARAMETER = 16  # a trained parameter: fp32 weight + gradient + AdamW's two moments
NF4_BYTES = 4.127 / 8  # planned 4-bit weights: nf4 plus double-quantised absmax (QLoRA paper: 0.127 bits a weight)
LOGIT_SAVED_BYTES = 4  # the fp32 log-probabilities cross_entropy saves: measured as a saved tensor
LOGIT_BACKWARD_BYTES = 8  # the loss's backward: the log-probabilities' fp32 gradient and the fp32 logits' gradient
LOGIT_BYTES = LOGIT_SAVED_BYTES + LOGIT_BACKWARD_BYTES
# CUDA context, allocator fragmentation and workspace buffers take roughly a tenth of a GPU.
USABLE_FRACTION = 0.9


def parameter_bytes(model: nn.Module) -> int:
    """Every parameter at what it costs in training: trained ones at BYTES_PER_PARAMETER, frozen ones (a LoRA or
    QLoRA base) at their storage. A weight tied to another (embedding and head) or sharing its storage counts once."""
    total, storages = 0, set()
    for p in {id(p): p for p in model.parameters()}.values():
        if p.requires_grad:
            total += p.numel() * BYTES_PER_PARAMETER
            continue
        key = storage_key(p)
        if key not in storages:
            storages.add(key)
            total += stored_bytes(p)
    return total


def stored_bytes(p) -> int:
    """What a frozen tensor occupies: its storage (Params4bit.numel() counts packed bytes, not parameters, so the
    storage is the figure to read) plus a 4-bit weight's quantisation state (absmax, nested constants)."""
    return p.untyped_storage().nbytes() + _quant_state_bytes(getattr(p, "quant_state", None))


def _quant_state_bytes(state) -> int:
    if state is None:
        return 0
    tensors = [getattr(state, name, None) for name in ("absmax", "code", "offset")]
    own = sum(t.untyped_storage().nbytes() for t in tensors if hasattr(t, "untyped_storage"))
    return own + _quant_state_bytes(getattr(state, "state2", None))


def storage_key(t) -> int:
    """One number per storage: its StorageImpl. data_ptr() would do on a real device, but every meta tensor has
    data_ptr 0, and the paper model and tests measure on the meta device."""
    return t.untyped_storage()._cdata


def trained_bytes(parameters: int) -> int:
    return parameters * BYTES_PER_PARAMETER


def frozen_bytes(parameters: float, bytes_each: float) -> int:
    """A frozen base planned from a config: bytes_each = 2 (16 bits), 4 (fp32) or NF4_BYTES (QLoRA)."""
    return int(parameters * bytes_each)


def logit_backward_bytes(logits: int) -> int:
    """The gradient the loss's backward holds beside the saved activations, for this many logits."""
    return logits * LOGIT_BACKWARD_BYTES


def resident_bytes() -> Optional[int]:
    """The process's resident memory now (Linux's /proc/self/statm); None where the OS does not say."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def process_bytes_beside(model: nn.Module) -> int:
    """What this process holds in RAM besides the model's own tensors (Python, torch, the data, the allocator's
    slack): its resident memory less the storage of the model's parameters and buffers. 0 where unknown."""
    resident = resident_bytes()
    if resident is None:
        return 0
    seen: dict[int, int] = {}
    for t in [*model.parameters(), *model.buffers()]:
        if t.device.type == "cpu":
            seen[storage_key(t)] = t.untyped_storage().nbytes()
    return max(0, resident - sum(seen.values()))

