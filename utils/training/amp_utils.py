"""The reference kit's API, for code written against it. Nothing in the kit's own training path uses it.

Each name here delegates to the kit's one way of doing the thing:
- `compute_effective_precision(...)`: the reference kit's precision helper ('16'/'32' strings).
- `resolve_precision`, `PrecisionDecision`, `PrecisionError`: re-exported from utils.training.precision,
  the one precision decision.
- `AmpWandbCallback(enabled, precision)`: logs amp/enabled, amp/precision and amp/loss_scale to the
  active W&B run at each epoch end. The kit's own runs log AMP metrics per optimizer step through
  utils.training.callbacks.recorder.RunRecorder instead.
- `SkippedStepCounter`, `loss_scale(trainer)`: the GradScaler helpers that callback uses.
- `TrainingCoordinator(config, device).train(model, use_amp=...)`: the reference kit's entry; it
  calls utils.training.train. `use_amp` switches mixed precision on or off for one call.
- `LegacyWizardAPI`: SetupWizard.validate_config(config) -> (ok, errors) and
  create_config_from_preset(name), mixed into utils.ui.setup_wizard.SetupWizard.

The file keeps the reference kit's name and loads on its own by file path (absolute imports only;
wandb, Lightning's trainer and the training core are imported when first used).
"""

import sys
from typing import Optional

import pytorch_lightning as pl

from utils.config import WizardConfig
from utils.env import DeviceInfo, detect_device
from utils.training.precision import PrecisionDecision, PrecisionError, resolve_precision

__all__ = ["compute_effective_precision", "resolve_precision", "PrecisionDecision", "PrecisionError",
           "AmpWandbCallback", "SkippedStepCounter", "loss_scale", "TrainingCoordinator", "LegacyWizardAPI"]


def compute_effective_precision(requested_precision, use_amp, cuda_available, use_gpu) -> str:
    """use_amp None leaves the request untouched; use_amp on a usable GPU gives '16'; else '32'.

    (resolve_precision makes the kit's own decision, with bf16 on Ampere and a reason.)
    """
    if use_amp is None:
        return requested_precision
    if use_amp and cuda_available and use_gpu:
        return "16"
    return "32"


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
    """Shows what mixed precision is doing in W&B: at each epoch end it logs `amp/enabled`,
    `amp/precision` and `amp/loss_scale` to the active W&B run: with wandb.log(step=epoch), or,
    when the trainer has a WandbLogger, through it, since that logger owns the run's step counter
    and W&B drops rows logged at an older step.
    """

    def __init__(self, enabled: bool, precision: str):
        self.enabled = enabled  # kept exactly as given
        self.precision = precision  # any spelling: '16', '16-mixed', 'bf16', '32-true', ...

    def _get_loss_scale(self, trainer) -> Optional[float]:
        return loss_scale(trainer)

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


# ---------------------------------------------------------------------------- the reference kit's entries
class TrainingCoordinator:
    """TrainingCoordinator(config, device).train(model, use_amp=...): utils.training.train, one call.

    `device` is detected when not given; tests pass a DeviceInfo to stand for a T4 or an A100.
    """

    def __init__(self, config: Optional[WizardConfig] = None, device: Optional[DeviceInfo] = None):
        self.config = config or WizardConfig()
        self.device = device or detect_device()

    def resolve_precision(self, use_amp: Optional[bool] = None) -> PrecisionDecision:
        return resolve_precision(self.config.use_mixed_precision if use_amp is None else use_amp,
                                 self.config.precision, self.device)

    def train(self, model=None, use_amp: Optional[bool] = None, extra_callbacks: Optional[list] = None,
              on_change: str = "refuse"):
        """use_amp: None follows config.use_mixed_precision; True/False switches it for this call."""
        from utils.training.coordinator import train

        config = self.config if use_amp is None else self.config.replace(use_mixed_precision=use_amp)
        return train(config, model, self.device, on_change=on_change, extra_callbacks=extra_callbacks)


class LegacyWizardAPI:
    """The reference kit's SetupWizard methods (utils.ui.setup_wizard.SetupWizard has them)."""

    def validate_config(self, config: WizardConfig) -> tuple[bool, list[str]]:
        """(ok, the error messages): WizardConfig's own rules, nothing else."""
        messages = [message for _, message in config.errors()]
        return not messages, messages

    def create_config_from_preset(self, name: str) -> WizardConfig:
        """The defaults with the preset's fields changed (the wizard's own choices are not used)."""
        from utils.ui.presets import apply_preset

        return apply_preset(WizardConfig(), name)
