"""Mixed precision: decide it once, with its reason, and watch what the GradScaler does.

Loadable on its own by file path (absolute imports only; wandb is imported inside functions).
"""

# No `from __future__ import annotations` here: dataclasses with string annotations look their module
# up in sys.modules, which fails when this file is loaded by path without being registered there.
from dataclasses import dataclass
from typing import Optional

from utils.env import DeviceInfo, detect_device


def compute_effective_precision(requested_precision, use_amp, cuda_available, use_gpu) -> str:
    """Legacy contract other code relies on; the training path uses resolve_precision instead.

    use_amp None leaves the request untouched; use_amp on a usable GPU gives '16'; else '32'.
    """
    if use_amp is None:
        return requested_precision
    if use_amp and cuda_available and use_gpu:
        return "16"
    return "32"


@dataclass(frozen=True)
class PrecisionDecision:
    precision: str  # Lightning's own string: "32-true", "16-mixed" or "bf16-mixed"
    reason: str  # one sentence a person reads: what was chosen and why
    device: DeviceInfo

    @property
    def uses_grad_scaler(self) -> bool:
        return self.precision == "16-mixed"


class PrecisionError(ValueError):
    """A precision request the hardware cannot honour; the message says what to choose instead."""


def resolve_precision(use_mixed_precision: bool, requested: str = "auto",
                      device: Optional[DeviceInfo] = None) -> PrecisionDecision:
    """Turn the config's switch and override into one precision for this device, with its reason."""
    device = device or detect_device()
    where = device.describe()
    if requested == "32-true":
        return PrecisionDecision("32-true", f"fp32: precision='32-true' was requested ({where})", device)
    if requested in ("16-mixed", "bf16-mixed"):
        return _explicit(requested, device)
    if requested != "auto":
        raise PrecisionError(f"precision={requested!r} is unknown; choose 'auto', '32-true', '16-mixed' or 'bf16-mixed'")
    if not use_mixed_precision:
        return PrecisionDecision("32-true", f"fp32: mixed precision is switched off ({where})", device)
    if device.kind != "cuda":
        return PrecisionDecision("32-true", f"fp32: no CUDA GPU ({where}); mixed precision speeds up GPUs only", device)
    major = device.capability[0] if device.capability else 0
    if major >= 8:
        return PrecisionDecision("bf16-mixed", f"bf16 autocast: {where} has native bf16 (Ampere or newer), "
                                               "no loss scaling needed", device)
    if major == 7:
        return PrecisionDecision("16-mixed", f"fp16 autocast + GradScaler: {where} has fp16 tensor cores "
                                             "but no native bf16", device)
    return PrecisionDecision("32-true", f"fp32: {where} has no tensor cores, so mixed precision would not "
                                        "speed it up", device)


def _explicit(requested: str, device: DeviceInfo) -> PrecisionDecision:
    where = device.describe()
    if requested == "bf16-mixed" and device.kind == "cuda" and (device.capability or (0, 0))[0] < 8:
        raise PrecisionError(
            f"precision='bf16-mixed' needs an Ampere or newer GPU (compute capability >= 8.0), but this is {where}: "
            "bf16 would be emulated, about 4x slower than fp16 (torch.cuda.is_bf16_supported() says True anyway). "
            "Choose precision='16-mixed' (fp16 + GradScaler) or 'auto'.")
    if requested == "bf16-mixed":
        return PrecisionDecision("bf16-mixed", f"bf16 autocast: precision='bf16-mixed' was requested ({where})", device)
    note = " (slow on a CPU; useful to test the fp16 path)" if device.kind == "cpu" else ""
    return PrecisionDecision("16-mixed", f"fp16 autocast + GradScaler: precision='16-mixed' was requested "
                                         f"({where}){note}", device)
