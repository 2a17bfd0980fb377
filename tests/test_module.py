"""The LightningModule's GPU path, proved on the CPU: a fused AdamW (what a GPU gets) with clipping on under
fp16 + GradScaler and bf16 trains, unscaling once before clipping; weight decay is decided from the shapes
the model was built with, so FSDP's 1-D parameter shards keep their groups."""

from __future__ import annotations

import dataclasses
import math
import types

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from tests.conftest import TinyLM
from templates import build_template
from utils.data import prepare_data
from utils.env import DeviceInfo
from utils.models.build import build_task
from utils.models.tasks import LanguageModelTask
from utils.training.builder import build_callbacks, build_dataloaders, build_loggers, build_module, build_trainer
from utils.data.spec import build_data_spec
from utils.training.callbacks.recorder import RunRecorder
from utils.training.module import TransformerModule, param_groups
from utils.precision import resolve_precision

# Device facts of GPUs this machine does not have: they decide the precision and the AdamW kernel only.
T4 = DeviceInfo("cuda", "Tesla T4", (7, 5), 15 * 2**30)
A100 = DeviceInfo("cuda", "NVIDIA A100-SXM4-40GB", (8, 0), 40 * 2**30)
CPU = DeviceInfo("cpu", "CPU")


class StepObserver(pl.Callback):
    """Looks inside each optimizer step without changing it: the gradients the step used (after unscaling and
    clipping), what the GradScaler tells a fused kernel, and whether the weights moved."""

    def __init__(self):
        self.grad_norms, self.grad_scales, self.changed = [], [], []
        self._before = None

    def on_train_start(self, trainer, pl_module):
        self.optimizer = trainer.optimizers[0]
        self.optimizer.register_step_pre_hook(self._pre_step)

    def _pre_step(self, optimizer, args, kwargs):
        # GradScaler.step sets grad_scale for an optimizer that unscales itself: None once unscale_ has run
        self.grad_scales.append(getattr(optimizer, "grad_scale", "not set"))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._before = [p.detach().clone() for p in pl_module.parameters()]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.changed.append(any(not torch.equal(a, p) for a, p in zip(self._before, pl_module.parameters())))
        # The gradients the step used: they stay until the next step's zero_grad (the fused kernel reads them only)
        grads = [p.grad.float() for p in pl_module.parameters() if p.grad is not None]
        self.grad_norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))


def fit_as_on_a_gpu(config, device: DeviceInfo, model: nn.Module, observer: StepObserver):
    """train()'s own builders, with a GPU's device facts where they decide: the precision (resolve_precision)
    and the optimizer (build_module: fused AdamW, as on CUDA). The Trainer is built by build_trainer from
    that same decision moved to this CPU (Lightning cannot start a GPU accelerator here), so the same
    precision string reaches Lightning's MixedPrecision plugin, with a CPU GradScaler for fp16."""
    decision = resolve_precision(config.use_mixed_precision, config.precision, device)
    data = prepare_data(build_data_spec(config))
    task = build_task(config)
    train_loader, val_loader = build_dataloaders(config, data.train, data.val, pin_memory=False)
    module = build_module(config, model, task, len(train_loader), decision)
    on_cpu = dataclasses.replace(decision, device=CPU)
    recorder = RunRecorder(task.tokens_in, flush_every=config.log_every_n_steps, precision=decision.precision)
    trainer = build_trainer(config, on_cpu, build_callbacks(config, on_cpu, recorder) + [observer],
                            build_loggers(config))
    trainer.fit(module, train_loader, val_loader)
    return decision, trainer, recorder


@pytest.mark.parametrize("device, precision", [(T4, "16-mixed"), (A100, "bf16-mixed")])
def test_a_gpus_fused_adamw_trains_with_clipping_under_mixed_precision(tiny_config, device, precision):
    """Lightning 2.6's MixedPrecision refuses to clip for a fused optimizer ("does not allow for gradient
    clipping ... fused"): this failed at the first step before the module clipped by itself."""
    clip = 0.05
    config = tiny_config.replace(gradient_clip_val=clip, max_steps=6, learning_rate=1e-3)
    observer = StepObserver()
    decision, trainer, recorder = fit_as_on_a_gpu(config, device, TinyLM(128, dim=32), observer)
    assert decision.precision == precision and trainer.precision_plugin.precision == precision
    optimizer = trainer.optimizers[0]
    assert type(optimizer) is torch.optim.AdamW and optimizer.defaults["fused"] is True
    assert trainer.global_step == 6 and observer.changed == [True] * 6
    assert all(math.isfinite(loss) for loss in [recorder.last_loss])
    # The optimizer is handed unscaled, clipped gradients (their norm is far above 0.05 before clipping).
    assert all(math.isclose(norm, clip, rel_tol=1e-3) for norm in observer.grad_norms), observer.grad_norms
    if precision == "16-mixed":
        assert trainer.precision_plugin.scaler.get_scale() == 65536.0
        assert observer.grad_scales == [None] * 6  # unscaled already: the fused kernel does not divide again
    else:
        assert trainer.precision_plugin.scaler is None and observer.grad_scales == ["not set"] * 6


def test_an_overflowed_fp16_step_is_still_skipped_with_a_fused_adamw_and_clipping(tiny_config):
    config = tiny_config.replace(gradient_clip_val=1.0, max_steps=5, learning_rate=1e-3)
    observer = StepObserver()
    decision, trainer, recorder = fit_as_on_a_gpu(config, T4, TinyLM(128, dim=32, inf_grad_calls={3}), observer)
    assert trainer.optimizers[0].defaults["fused"] is True
    assert observer.changed == [True, True, False, True, True]  # the GradScaler's inf check skipped step 3
    assert trainer.precision_plugin.scaler.get_scale() == 32768.0  # halved once, for that step only
    assert recorder.skipped_total == 1  # the health check reads this count (utils.training.health)
    health = next(c for c in trainer.callbacks if type(c).__name__ == "TrainingHealthCallback")
    assert health.skipped_total == 1 and health.consecutive_skips == 0


class FsdpUnit(nn.Module):
    """Stands for an FSDP unit as Lightning builds it (use_orig_params=True): the parameter objects stay and
    their names gain the wrapper's prefix."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self._fsdp_wrapped_module = module


def flatten_like_fsdp(model: nn.Module) -> None:
    """Each block becomes a unit; every parameter, the root unit's too, then holds a flat 1-D shard (FSDP sets
    .data to its view of the process's shard) instead of its matrix."""
    for i, block in enumerate(model.blocks):
        model.blocks[i] = FsdpUnit(block)
    for p in model.parameters():
        p.data = p.data.reshape(-1)


def test_weight_decay_groups_survive_fsdps_flat_parameters():
    model = build_template("gpt", {"vocab_size": 64, "max_seq_len": 16, "size": "tiny", "dropout": 0.0})
    module = TransformerModule(model, LanguageModelTask(), 1e-3, 0.1, 0.0, 10)
    names = {id(p): n for n, p in model.named_parameters()}
    as_built = [[names[id(p)] for p in group["params"]] for group in param_groups(model, 0.1)]
    assert "blocks.0.attn.qkv.weight" in as_built[0] and "blocks.0.mlp.fc.weight" in as_built[0]
    assert {"wte.weight", "blocks.0.ln_1.weight", "blocks.0.attn.qkv.bias"} <= set(as_built[1])
    flatten_like_fsdp(model)
    assert "blocks.0._fsdp_wrapped_module.attn.qkv.weight" in dict(model.named_parameters())
    assert all(p.ndim == 1 for p in model.parameters())
    groups = module.configure_optimizers()["optimizer"].param_groups
    assert [[names[id(p)] for p in g["params"]] for g in groups] == as_built
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    assert param_groups(model, 0.1)[0]["params"] == []  # what the shapes alone would decide now: no decay at all


def test_the_trained_model_goes_back_to_the_device_it_trained_on():
    """Lightning's teardown moves the module to the CPU after fit; train() moves the model back to the strategy's
    device (here "meta" stands for a GPU this machine lacks: a device the model was not on). Under FSDP the
    full state dict Lightning gathers goes into the plain copy made before fit, on global rank zero only."""
    from utils.training.coordinator import _trained_model

    model = TinyLM(16, dim=4)
    strategy = types.SimpleNamespace(root_device=torch.device("meta"))
    back = _trained_model(types.SimpleNamespace(strategy=strategy, is_global_zero=True), model, None)
    assert back is model and next(model.parameters()).device.type == "meta"

    trained = {f"model.{k}": torch.full_like(v, 7.0) for k, v in TinyLM(16, dim=4).state_dict().items()}
    fsdp = types.SimpleNamespace(root_device=torch.device("cpu"), lightning_module_state_dict=lambda: trained)
    plain = TinyLM(16, dim=4)
    gathered = _trained_model(types.SimpleNamespace(strategy=fsdp, is_global_zero=True), model, plain)
    assert gathered is plain and all(bool((p == 7.0).all()) for p in plain.parameters())
    assert _trained_model(types.SimpleNamespace(strategy=fsdp, is_global_zero=False), model, TinyLM(16)) is None
