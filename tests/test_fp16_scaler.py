"""The fp16 + GradScaler path runs for real on a CPU (CPU autocast supports float16 and
torch.amp.GradScaler("cpu") exists): the scaler is live, an overflowing step is skipped and the
scale backs off, and gradient clipping sees unscaled gradients."""

import math

import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins.precision import MixedPrecision

from tests.conftest import TinyLM
from utils.env import DeviceInfo
from utils.training import train

CPU = DeviceInfo("cpu", "CPU")


class ScalerRecorder(pl.Callback):
    """Observes Lightning's own scaler around each optimizer step; it changes nothing."""

    def __init__(self):
        self.plugin = None
        self.steps = []  # dicts: scale_before, scale_after, grad_norm_unscaled, grad_norm_after, changed

    def on_train_start(self, trainer, pl_module):
        self.plugin = trainer.precision_plugin

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        # Lightning calls this after scaler.unscale_() and before clipping and scaler.step().
        self._params = [p.detach().clone() for p in pl_module.parameters()]
        self.steps.append({"scale_before": trainer.precision_plugin.scaler.get_scale(),
                           "grad_norm_unscaled": _grad_norm(pl_module)})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = self.steps[-1]
        step["scale_after"] = trainer.precision_plugin.scaler.get_scale()
        step["grad_norm_after"] = _grad_norm(pl_module)  # grads stay until the next zero_grad
        step["changed"] = any(not torch.equal(a, p) for a, p in zip(self._params, pl_module.parameters()))


def _grad_norm(module):
    grads = [p.grad.float() for p in module.parameters() if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))


def _train(tiny_config, model_factory, **changes):
    config = tiny_config.replace(precision="16-mixed", **changes)
    recorder = ScalerRecorder()
    from utils.data import prepare_data
    from utils.data.spec import build_data_spec

    vocab = prepare_data(build_data_spec(config)).tokenizer.vocab_size
    result = train(config, model_factory(vocab), device=CPU, extra_callbacks=[recorder])
    return result, recorder


def test_cpu_fp16_uses_lightnings_mixed_precision_plugin_with_a_cpu_grad_scaler(tiny_config):
    result, rec = _train(tiny_config, lambda v: TinyLM(v, dim=32), max_steps=2)
    assert result.precision == "16-mixed"
    assert isinstance(rec.plugin, MixedPrecision)
    assert rec.plugin.precision == "16-mixed" and rec.plugin.device == "cpu"
    assert isinstance(rec.plugin.scaler, torch.amp.GradScaler) and rec.plugin.scaler.is_enabled()
    assert rec.steps[0]["scale_before"] == 65536.0  # the loss really is scaled


def test_overflowing_step_is_skipped_and_the_scale_backs_off(tiny_config):
    result, rec = _train(tiny_config, lambda v: TinyLM(v, dim=32, inf_grad_calls={3}), max_steps=5, gradient_clip_val=0.0)
    assert [s["changed"] for s in rec.steps] == [True, True, False, True, True]
    assert math.isinf(rec.steps[2]["grad_norm_unscaled"]) or math.isnan(rec.steps[2]["grad_norm_unscaled"])
    assert rec.steps[2]["scale_before"] == 65536.0 and rec.steps[2]["scale_after"] == 32768.0
    assert rec.steps[4]["scale_after"] == 32768.0  # no further backoff once gradients are finite
    assert math.isfinite(result.train_loss)
    assert (result.loss_scale, result.skipped_steps) == (32768.0, 1)
    summary = result.summary().splitlines()
    assert "loss scale:       32768 (fp16 GradScaler, after the last step)" in summary
    assert "skipped steps:    1 of 5 (inf/NaN gradients; not applied)" in summary
    assert "fp16 health:      healthy: a few skipped steps are normal while the GradScaler finds its scale" in summary


def test_an_fp32_summary_has_no_scaler_lines(tiny_config):
    summary = train(tiny_config.replace(max_steps=2), device=CPU).summary()
    assert "loss scale" not in summary and "skipped steps" not in summary and "fp16 health" not in summary


def test_clipping_sees_unscaled_gradients(tiny_config):
    clip = 0.01
    result, rec = _train(tiny_config, lambda v: TinyLM(v, dim=32), max_steps=3, gradient_clip_val=clip)
    for step in rec.steps:
        assert step["scale_before"] == 65536.0
        assert step["grad_norm_unscaled"] > 10 * clip  # far above the clip: clipping had work to do
        # Clipping scaled gradients to 0.01 would leave 0.01 / 65536 after unscaling; we see 0.01.
        assert math.isclose(step["grad_norm_after"], clip, rel_tol=1e-3)
