"""Mixed precision: decide it once, with its reason, and watch what the GradScaler does.

Loadable on its own by file path (absolute imports only; wandb is imported inside functions). No
`from __future__ import annotations`: with string annotations the dataclass below would need the
module registered in sys.modules, which a spec_from_file_location loader may not do.
"""

# No `from __future__ import annotations` here: dataclasses with string annotations look their module
# up in sys.modules, which fails when this file is loaded by path without being registered there.
import sys
from dataclasses import dataclass
from typing import Any, Optional

import pytorch_lightning as pl

from utils.env import DeviceInfo, detect_device
from utils.errors import KitError


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


class PrecisionError(KitError, ValueError):
    """A precision request the hardware cannot honour; the message says what to choose instead."""


def resolve_precision(use_mixed_precision: bool, requested: str = "auto",
                      device: Optional[DeviceInfo] = None) -> PrecisionDecision:
    """Turn the config's switch and override into one precision for this device, with its reason."""
    device = device or detect_device()
    where = device.describe()
    if requested == "32-true":
        return PrecisionDecision("32-true", f"fp32: precision='32-true' was requested ({where})", device)
    if requested not in ("auto", "16-mixed", "bf16-mixed"):
        raise PrecisionError(f"precision={requested!r} is unknown; choose 'auto', '16-mixed' or 'bf16-mixed'")
    if not use_mixed_precision:  # the switch decides whether; `requested` only which kind
        return PrecisionDecision("32-true", f"fp32: mixed precision is switched off ({where})", device)
    if requested != "auto":
        return _explicit(requested, device)
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


# ---------------------------------------------------------------------------- watching the GradScaler
def loss_scale(trainer) -> Optional[float]:
    """The scale of the GradScaler Lightning steps with (fp16 only), or None: no strategy, plugin or scaler."""
    plugin = getattr(getattr(trainer, "strategy", None), "precision_plugin", None)
    scaler = getattr(plugin, "scaler", None)
    return None if scaler is None else float(scaler.get_scale())


class SkippedStepCounter:
    """Counts the optimizer steps the GradScaler skipped, from its scale before and after each step.

    torch.amp.GradScaler.update() multiplies the scale by backoff_factor (0.5) exactly when the
    step found inf/NaN gradients, and then scaler.step() did not call optimizer.step(); otherwise
    the scale stays or grows (growth_factor). So a lower scale after a step means it was skipped.
    """

    def __init__(self):
        self.total = 0  # skipped steps since fit started
        self.consecutive = 0  # skipped steps in a row up to the latest step
        self._scale_before: Optional[float] = None

    def before_step(self, scale: Optional[float]) -> None:
        self._scale_before = scale

    def after_step(self, scale: Optional[float]) -> Optional[bool]:
        """Whether the step just taken was skipped; None when no step was taken or there is no scaler."""
        before, self._scale_before = self._scale_before, None
        if before is None or scale is None:
            return None
        skipped = scale < before
        self.total += skipped
        self.consecutive = self.consecutive + 1 if skipped else 0
        return skipped


class AmpWandbCallback(pl.Callback):
    """Shows what mixed precision is doing: precision, loss scale and skipped (overflowed) steps.

    Per optimizer step it logs `amp/loss_scale` and `amp/skipped_steps` (cumulative) through the
    trainer's loggers (CSV and W&B alike). At each epoch end it logs `amp/enabled`,
    `amp/precision` and `amp/loss_scale` to the active W&B run: with wandb.log(step=epoch), or,
    when the trainer has a WandbLogger, through it, since that logger owns the run's step counter
    and W&B drops rows logged at an older step.
    """

    def __init__(self, enabled: bool, precision: str):
        self.enabled = enabled  # kept exactly as given
        self.precision = precision  # any spelling: '16', '16-mixed', 'bf16', '32-true', ...
        self.skipped = SkippedStepCounter()

    def _get_loss_scale(self, trainer) -> Optional[float]:
        return loss_scale(trainer)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.skipped.before_step(self._get_loss_scale(trainer))  # gradients are unscaled, not yet stepped

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        scale = self._get_loss_scale(trainer)
        if self.skipped.after_step(scale) is None:
            return  # an accumulation micro-batch, or no GradScaler
        pl_module.log("amp/loss_scale", scale, on_step=True, on_epoch=False)
        pl_module.log("amp/skipped_steps", float(self.skipped.total), on_step=True, on_epoch=False)

    def on_train_epoch_end(self, trainer, pl_module=None) -> None:
        # A W&B run exists only if something imported wandb; importing it here (0.4 s) to find
        # wandb.run None would cost every run with logging off. A stub in sys.modules is honoured.
        wandb = sys.modules.get("wandb")
        if wandb is None or wandb.run is None:
            return
        data = {"amp/enabled": 1 if self.enabled else 0, "amp/precision": self.precision}
        scale = self._get_loss_scale(trainer)
        if scale is not None:
            data["amp/loss_scale"] = scale
        wandb_loggers = _wandb_loggers(trainer)
        if not wandb_loggers:
            wandb.log(data, step=trainer.current_epoch)
        for logger in wandb_loggers:
            logger.log_metrics(data, step=trainer.global_step)


def _wandb_loggers(trainer) -> list:
    from pytorch_lightning.loggers import WandbLogger

    return [logger for logger in getattr(trainer, "loggers", None) or [] if isinstance(logger, WandbLogger)]
