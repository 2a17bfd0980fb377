"""The one precision decision: (the config's switch, its kind of mixed precision, the device) -> the
Lightning precision string, whether fp32 matmuls use TF32, and the reason, said once per run.

    decision = resolve_precision(config.use_mixed_precision, config.precision, device)
    print(f"Precision: {decision.precision} - {decision.reason}")

Everything that follows from the decision is read from it, never derived again elsewhere: the autocast
dtype and context (autocast_dtype, autocast()), the GradScaler (uses_scaler, make_scaler()), the
Trainer's precision arguments (lightning_args()), and what weights are stored in (weights_dtype for
trained weights, base_dtype for a frozen pretrained base).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Optional

import torch

from utils.env import DeviceInfo, detect_device
from utils.errors import KitError

KINDS = ("auto", "16-mixed", "bf16-mixed")  # what `requested` may name; "32-true" is read as the switch off


class PrecisionError(KitError, ValueError):
    """A precision request the hardware cannot honour; the message says what to choose instead."""


@dataclass(frozen=True)
class PrecisionDecision:
    precision: str  # Lightning's own string: "32-true", "16-mixed" or "bf16-mixed"
    reason: str  # one sentence a person reads: what was chosen and why
    device: DeviceInfo
    tf32: bool = False  # fp32 matmuls on TF32 tensor cores (Ampere and newer): ~8x the fp32 rate, 10-bit mantissa

    @property
    def autocast_dtype(self) -> Optional[torch.dtype]:
        """The dtype autocast runs matmuls in; None for an fp32 run (no autocast)."""
        return _AUTOCAST_DTYPES.get(self.precision)

    @property
    def uses_scaler(self) -> bool:
        """fp16 needs a GradScaler (its range underflows small gradients); bf16 and fp32 do not."""
        return self.precision == "16-mixed"

    @property
    def weights_dtype(self) -> torch.dtype:
        """What trained weights (and their optimizer state) are stored in: fp32 under every precision;
        autocast casts per operation, and fp16 weights would break the GradScaler's unscale."""
        return torch.float32

    @property
    def base_dtype(self) -> torch.dtype:
        """What a frozen pretrained base (adapters train beside it) is stored in: the autocast dtype on a
        CUDA GPU, where it halves the memory and matmuls run in it anyway; fp32 on a CPU and in fp32 runs."""
        if self.device.kind != "cuda" or self.autocast_dtype is None:
            return torch.float32
        return self.autocast_dtype

    def autocast(self):
        """The autocast context a forward pass runs under, outside Lightning (bench/hand_loop.py's loop)."""
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.kind, dtype=self.autocast_dtype)

    def torch_device(self, local_rank: int = 0) -> torch.device:
        """Where one training process's model lives: its own GPU (local_rank: the process's place on its
        machine; Lightning sets each process's device only when fit starts), else the decision's device."""
        if self.device.kind == "cuda":
            return torch.device("cuda", local_rank)
        return torch.device(self.device.kind)

    def make_scaler(self) -> Optional[torch.amp.GradScaler]:
        """A GradScaler for a hand-written step on this device, or None when the decision uses none."""
        return torch.amp.GradScaler(self.device.kind) if self.uses_scaler else None

    def lightning_args(self, strategy: str = "auto") -> dict:
        """pl.Trainer's precision arguments: {"precision": ...}, or {"plugins": [...]} for fp16 on a CPU, where
        Lightning would turn a plain "16-mixed" into bf16; the plugin keeps fp16 + a CPU GradScaler."""
        if self.precision == "16-mixed" and self.device.kind == "cpu" and strategy != "fsdp":
            from pytorch_lightning.plugins.precision import MixedPrecision  # Lightning only when a Trainer is built

            return {"plugins": [MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))]}
        return {"precision": self.precision}


_AUTOCAST_DTYPES = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}


def resolve_precision(use_mixed_precision: bool, requested: str = "auto",
                      device: Optional[DeviceInfo] = None) -> PrecisionDecision:
    """The switch decides whether to use mixed precision; `requested` only which kind (auto: by the GPU)."""
    device = device or detect_device()
    where = device.describe()
    major = (device.capability or (0, 0))[0] if device.kind == "cuda" else 0
    tf32 = major >= 8  # whatever autocast leaves in fp32 (and all of an fp32 run) runs its matmuls on TF32
    if requested == "32-true" or not use_mixed_precision:
        why = "precision='32-true' was requested" if requested == "32-true" else "mixed precision is switched off"
        return _fp32(f"{why} ({where})", device, tf32)
    if requested not in KINDS:
        raise PrecisionError(f"precision={requested!r} is unknown; choose 'auto', '16-mixed' or 'bf16-mixed'")
    if requested != "auto":
        return _explicit(requested, device, tf32)
    if device.kind != "cuda":
        return _fp32(f"no CUDA GPU ({where}); mixed precision speeds up GPUs only", device, tf32)
    if major >= 8:
        return PrecisionDecision("bf16-mixed", f"bf16 autocast: {where} has native bf16 (Ampere or newer), "
                                               "no loss scaling needed; TF32 for the matmuls left in fp32", device, tf32)
    if major == 7:
        return PrecisionDecision("16-mixed", f"fp16 autocast + GradScaler: {where} has fp16 tensor cores "
                                             "but no native bf16", device, tf32)
    return _fp32(f"{where} has no tensor cores, so mixed precision would not speed it up", device, tf32)


def _fp32(why: str, device: DeviceInfo, tf32: bool) -> PrecisionDecision:
    kind = "fp32 with TF32 matmuls" if tf32 else "fp32"
    return PrecisionDecision("32-true", f"{kind}: {why}", device, tf32)


def _explicit(requested: str, device: DeviceInfo, tf32: bool) -> PrecisionDecision:
    where = device.describe()
    if requested == "bf16-mixed" and device.kind == "cuda" and (device.capability or (0, 0))[0] < 8:
        raise PrecisionError(
            f"precision='bf16-mixed' needs an Ampere or newer GPU (compute capability >= 8.0), but this is {where}: "
            "bf16 would be emulated, about 4x slower than fp16 (torch.cuda.is_bf16_supported() says True anyway). "
            "Choose precision='16-mixed' (fp16 + GradScaler) or 'auto'.")
    if requested == "bf16-mixed":
        return PrecisionDecision("bf16-mixed", f"bf16 autocast: precision='bf16-mixed' was requested ({where})",
                                 device, tf32)
    note = " (slow on a CPU; useful to test the fp16 path)" if device.kind == "cpu" else ""
    return PrecisionDecision("16-mixed", f"fp16 autocast + GradScaler: precision='16-mixed' was requested "
                                         f"({where}){note}", device, tf32)
