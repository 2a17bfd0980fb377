"""The one LightningModule: wraps any model, computes the loss, owns the optimizer and schedule.

What differs between tasks is a small task object (utils.models.tasks): `logits(model, batch)`,
`loss(model, batch) -> (loss, metrics)` (each metric is logged as train/NAME and val/NAME), `tokens_in(batch)`,
and `epoch_metrics` for validation metrics over the whole set (val/perplexity, val/macro_f1).

Lightning owns autocast, the GradScaler and accumulation. Clipping is the one step done here
(configure_gradient_clipping): Lightning's own refuses a fused AdamW under mixed precision and FSDP's
clipping by norm, so the module unscales, then clips, and Lightning steps (see clip_gradients). On logged
steps the same hook keeps the gradient norm before clipping, on the device, for the logs.
"""

from __future__ import annotations

import math
from typing import Optional

import pytorch_lightning as pl
import torch
from torch import nn

from utils.models.calling import model_logits


class TransformerModule(pl.LightningModule):
    def __init__(self, model: nn.Module, task, learning_rate: float, weight_decay: float, warmup_ratio: float,
                 total_steps: int, adamw_options: Optional[dict] = None, grad_norm_every: int = 0, trainable_only: bool = False):
        super().__init__()
        # A frozen base (LoRA, QLoRA) is reloaded from its pretrained weights, so a checkpoint holds only what
        # trains: megabytes instead of gigabytes to write to Drive. Loading one then fills only those tensors.
        self.trainable_only = trainable_only
        self.strict_loading = not trainable_only
        self.grad_norm_every = grad_norm_every  # optimizer steps between gradient norms (the logging interval)
        self.grad_norm: Optional[torch.Tensor] = None  # the newest norm before clipping; the RunRecorder takes it
        self._epoch_metrics: Optional[dict] = None  # the task's whole-validation-set metrics, made at first use
        self.total_steps = total_steps  # for the LR schedule
        self.adamw_options = adamw_options or {}  # fused=True on CUDA, foreach=True elsewhere (see build_module)
        self.model = model
        self.task = task
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.warmup_ratio = warmup_ratio
        # Decided now, from the shapes as built: FSDP turns every parameter into a 1-D shard before
        # configure_optimizers runs, where an ndim rule would put every matrix in the no-decay group.
        self.decay_names = decay_parameter_names(model)
        self.parameter_names = {name for name, _ in model.named_parameters(remove_duplicate=False)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return model_logits(self.model, x)

    def training_step(self, batch, batch_idx: int) -> dict:
        # The metrics go back detached to the RunRecorder, which logs them once per optimizer step.
        loss, metrics = self.task.loss(self.model, batch)
        return {"loss": loss, "train/loss": loss.detach(), **{f"train/{k}": v.detach() for k, v in metrics.items()}}

    def validation_step(self, batch, batch_idx: int) -> None:
        # Averaged over the validation set by Lightning, for EarlyStopping, ModelCheckpoint and the bar;
        # the RunRecorder sends them to the loggers.
        loss, metrics, logits = self.task.scored(self.model, batch)
        size = self.task.examples_in(batch)  # Lightning would count a packed batch's rows, not its conversations
        self.log("val/loss", loss, prog_bar=True, logger=False, batch_size=size)
        for name, value in metrics.items():
            self.log(f"val/{name}", value, prog_bar=True, logger=False, batch_size=size)
        if self._epoch_metrics is None:
            self._epoch_metrics = {k: m.to(loss.device) for k, m in self.task.epoch_metrics(logits.size(-1)).items()}
        self.task.update_epoch_metrics(self._epoch_metrics, loss.detach(), logits.detach(), batch)

    def on_validation_epoch_end(self) -> None:
        for name, metric in (self._epoch_metrics or {}).items():
            self.log(f"val/{name}", metric.compute(), logger=False)  # computed over every process's batches
            metric.reset()

    def checkpoint_state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors a checkpoint holds: all of them, or with a frozen base only the trained ones."""
        state = self.state_dict()
        if not self.trainable_only:
            return state
        keep = {name for name, p in self.named_parameters(remove_duplicate=False) if p.requires_grad}  # tied: both
        return {k: v for k, v in state.items() if k in keep}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.trainable_only:
            checkpoint["state_dict"] = self.checkpoint_state_dict()

    def on_train_start(self) -> None:
        """After Lightning restored a checkpoint's optimizer and schedule: this run's learning rate and weight decay
        take effect from here (the restored ones are the old run's; a fresh run sees no change)."""
        for optimizer, config in zip(self.trainer.optimizers, self.trainer.lr_scheduler_configs):
            apply_optimizer_settings(optimizer, config.scheduler, self.learning_rate, self.weight_decay)

    def configure_optimizers(self):
        total = self.total_steps
        groups = param_groups(self.model, self.weight_decay, self.decay_names, self.parameter_names)
        optimizer = torch.optim.AdamW(groups, lr=self.learning_rate, betas=(0.9, 0.95), **self.adamw_options)
        schedule = warmup_cosine(int(self.warmup_ratio * total), total)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Called by Lightning after backward (and, for a non-fused optimizer, after its scaler.unscale_),
        before the optimizer step. On logged steps the norm before clipping is kept on the device; the
        RunRecorder reads it at its next flush, so no step waits for it."""
        log_norm = bool(self.grad_norm_every) and (self.trainer.global_step + 1) % self.grad_norm_every == 0
        if not (gradient_clip_val or log_norm):
            return
        norm = clip_gradients(self.trainer, optimizer, gradient_clip_val or math.inf, gradient_clip_algorithm or "norm")
        if log_norm:
            self.grad_norm = norm

def apply_optimizer_settings(optimizer, scheduler, learning_rate: float, weight_decay: float) -> None:
    """Set the peak learning rate and the weight decay of configure_optimizers' groups on a restored optimizer and
    its LambdaLR, keeping the schedule's position; equal values leave every number as restored."""
    decay = optimizer.param_groups[0]  # param_groups(): the decayed group first, then the one without decay
    if decay["weight_decay"] != weight_decay:
        decay["weight_decay"] = weight_decay
    if list(scheduler.base_lrs) == [learning_rate] * len(scheduler.base_lrs):
        return
    scheduler.base_lrs = [learning_rate] * len(optimizer.param_groups)
    for group, factor in zip(optimizer.param_groups, scheduler.lr_lambdas):
        group["initial_lr"] = learning_rate
        group["lr"] = learning_rate * factor(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]



def clip_gradients(trainer, optimizer: torch.optim.Optimizer, clip_val: float,
                   algorithm: str = "norm") -> Optional[torch.Tensor]:
    """Unscale if the GradScaler has not, then clip; Lightning's step follows. Returns the total gradient norm
    before clipping, on the device (clip_val=inf measures it without clipping).

    A fused AdamW unscales inside its own step, so Lightning's MixedPrecision skips scaler.unscale_ for it and
    then refuses to clip (it would clip scaled gradients). Unscaling here first is what torch's AMP recipe
    does: scaler.step then hands the fused kernel the inf check unscale_ recorded and no scale to divide by
    again, so an overflowed step is still skipped and the update stays one fused kernel. bf16 has no scaler:
    there is nothing to unscale and the gradients are clipped as they are. Under FSDP each process holds
    shards, so the norm is the wrapped root's clip_grad_norm_ (over every shard); clip_grad_norm_ over one
    process's shards would be wrong, which is why Lightning's FSDP plugin refuses it.
    """
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    if scaler is not None and getattr(optimizer, "_step_supports_amp_scaling", False):
        scaler.unscale_(optimizer)  # once per step: Lightning only calls unscale_ for non-fused optimizers
    algorithm = getattr(algorithm, "value", algorithm).lower()  # Lightning passes a GradClipAlgorithmType
    if algorithm == "norm" and _is_fsdp(trainer.strategy.model):  # an infinite clip_val measures, clips nothing
        return trainer.strategy.model.clip_grad_norm_(clip_val).detach()
    params = list(trainer.precision_plugin.main_params(optimizer))
    if algorithm == "value" or not math.isfinite(clip_val):
        norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        if math.isfinite(clip_val):
            torch.nn.utils.clip_grad_value_(params, clip_val)
        return norm.detach()
    return torch.nn.utils.clip_grad_norm_(params, clip_val).detach()


def _is_fsdp(module) -> bool:
    if not torch.distributed.is_available():  # some builds have no torch.distributed, hence no FSDP either
        return False
    from torch.distributed.fsdp import FullyShardedDataParallel

    return isinstance(module, FullyShardedDataParallel)


# Wrappers that insert themselves into parameter names: FSDP units, activation checkpointing, torch.compile().
WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def unwrapped_name(name: str) -> str:
    """A parameter's name as in the model before FSDP (or checkpointing, or compile) wrapped its modules."""
    for prefix in WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def decay_parameter_names(model: nn.Module) -> set[str]:
    """Names of the parameters that get weight decay: matrices of Linear-like layers, never norms, biases or
    embeddings. Every name of a tied weight is decided alike (an embedding tied to the output head: no decay)."""
    no_decay = set()
    for module in model.modules():
        if isinstance(module, (nn.Embedding, nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d)) \
                or "norm" in type(module).__name__.lower():
            no_decay.update(id(p) for p in module.parameters(recurse=False))
    return {name for name, p in model.named_parameters(remove_duplicate=False) if id(p) not in no_decay and p.ndim >= 2}


def param_groups(model: nn.Module, weight_decay: float, decay_names: Optional[set[str]] = None,
                 known_names: Optional[set[str]] = None) -> list[dict]:
    """AdamW's two groups. decay_names: decay_parameter_names of the model as built (before any wrapping);
    known_names: every parameter name it had, so a parameter that appeared later is an error, not a guess."""
    if decay_names is None:
        decay_names = decay_parameter_names(model)
    decay, keep = [], []
    for name, p in model.named_parameters():  # tied weights once
        name = unwrapped_name(name)
        if known_names is not None and name not in known_names:
            raise RuntimeError(f"parameter {name!r} was not in the model when the LightningModule was built; "
                               "weight decay was decided from the parameters it had then")
        if p.requires_grad:
            (decay if name in decay_names else keep).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]


def warmup_cosine(warmup_steps: int, total_steps: int, min_ratio: float = 0.1):
    """LR multiplier: linear warmup to 1, then cosine decay to min_ratio at total_steps."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor
