"""The reference kit's API, at the paths it has there: its AMP tests (compute_effective_precision's
cases, AmpWandbCallback against stub trainers, autocast on CPU), its coordinator-instantiation test,
and a TrainingCoordinator(...).train(model, use_amp=...) call that trains a tiny model.

The reference tests' cases and assertions, written again here: the stub trainers and a stub `wandb`
module are what the reference's tests use in place of a W&B run (none can start here), and the
GPU-only cases are skipped without CUDA as they are there.
"""

from __future__ import annotations

import sys
import types
import warnings
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from utils.env import DeviceInfo
from utils.training.amp_utils import AmpWandbCallback, compute_effective_precision
from utils.precision import PrecisionError
from utils.training.training_core import TrainingCoordinator

CPU = DeviceInfo("cpu", "CPU")
T4 = DeviceInfo("cuda", "Tesla T4", (7, 5))  # stands in for a GPU this machine does not have


# ---------------------------------------------------------------------------- compute_effective_precision
@pytest.mark.parametrize("requested, use_amp, cuda, gpu, expected", [
    ("32", None, True, True, "32"), ("bf16", None, False, False, "bf16"),  # None: the request as it is
    ("32", True, True, True, "16"), ("16", True, True, False, "32"), ("16", True, False, True, "32"),
    ("16", False, True, True, "32"),
])
def test_effective_precision_edge_cases(requested, use_amp, cuda, gpu, expected):
    assert compute_effective_precision(requested_precision=requested, use_amp=use_amp, cuda_available=cuda,
                                       use_gpu=gpu) == expected


def test_effective_precision_all_combinations_for_a_32_request():
    for use_amp in (None, True, False):
        for cuda in (True, False):
            for gpu in (True, False):
                expected = "16" if use_amp and cuda and gpu else "32"
                assert compute_effective_precision("32", use_amp, cuda, gpu) == expected, (use_amp, cuda, gpu)


# ---------------------------------------------------------------------------- AmpWandbCallback
def stub_trainer(scale=None):
    """A trainer with a strategy, its precision plugin and (when scale is given) a GradScaler."""
    scaler = SimpleNamespace(get_scale=lambda: scale) if scale is not None else None
    return SimpleNamespace(current_epoch=0, strategy=SimpleNamespace(precision_plugin=SimpleNamespace(scaler=scaler)))


@pytest.fixture
def no_wandb_run(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(run=None, log=lambda *a, **k: None))


@pytest.mark.parametrize("precision", ["16", "16-mixed", "16_true", "bf16"])
def test_callback_keeps_each_precision_spelling(precision):
    callback = AmpWandbCallback(enabled=True, precision=precision)
    assert callback.enabled is True and callback.precision == precision


def test_disabled_callback_runs_its_epoch_end(no_wandb_run):
    AmpWandbCallback(enabled=False, precision="16").on_train_epoch_end(stub_trainer(), None)


@pytest.mark.parametrize("scale", [65536.0, 0.0, 1e10, 1e-10])
def test_loss_scale_is_read_from_the_scaler(scale):
    assert AmpWandbCallback(enabled=True, precision="16")._get_loss_scale(stub_trainer(scale)) == scale


def test_loss_scale_is_none_without_a_scaler():
    assert AmpWandbCallback(enabled=True, precision="32")._get_loss_scale(stub_trainer()) is None


def test_epoch_end_without_a_wandb_run_does_nothing(no_wandb_run):
    AmpWandbCallback(enabled=True, precision="16").on_train_epoch_end(stub_trainer(65536.0), None)


# ---------------------------------------------------------------------------- autocast
class SimpleModel(nn.Module):
    def __init__(self, vocab_size=100):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, 64)
        self.linear = nn.Linear(64, vocab_size)

    def forward(self, input_ids):
        return self.linear(self.embedding(input_ids))


def test_cuda_autocast_on_a_cpu_leaves_fp32():
    model = SimpleModel()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "CUDA not available, disabling" where there is no GPU
        with torch.autocast("cuda", enabled=not torch.cuda.is_available()):
            output = model(torch.randint(0, 100, (4, 10)))
    assert output.dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA, as in the reference kit")
def test_cuda_autocast_forward_and_grad_scaler_step():
    model = SimpleModel().cuda()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cuda")
    ids = torch.randint(0, 100, (4, 10), device="cuda")
    with torch.autocast("cuda", dtype=torch.float16):
        output = model(ids)
        loss = nn.functional.cross_entropy(output.view(-1, 100).float(), ids.view(-1))
    assert output.dtype == torch.float16 and output.shape == (4, 10, 100)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    assert scaler.get_scale() > 0


# ---------------------------------------------------------------------------- TrainingCoordinator
def test_training_coordinator_accepts_strategy_and_devices(tmp_path):
    coordinator = TrainingCoordinator(output_dir=str(tmp_path / "out"), use_gpu=False, precision="32",
                                      gradient_clip_val=0.5, strategy="auto", devices=None, num_nodes=1)
    assert coordinator.strategy == "auto"
    assert coordinator.devices is None
    assert coordinator.num_nodes == 1
    # ... and each maps onto the kit's config; nothing is written before training
    config = coordinator.config
    assert (config.output_dir, config.use_mixed_precision, config.gradient_clip_val, config.strategy,
            config.devices, config.num_nodes) == (str(tmp_path / "out"), False, 0.5, "auto", 0, 1)
    assert coordinator.device == CPU and not (tmp_path / "out").exists()


@pytest.mark.parametrize("precision, mixed, kind", [("16", True, "16-mixed"), ("bf16", True, "bf16-mixed"),
                                                    ("32-true", False, "auto"), ("16-mixed", True, "16-mixed")])
def test_reference_precisions_map_onto_the_config(precision, mixed, kind):
    config = TrainingCoordinator(precision=precision, use_gpu=False).config
    assert (config.use_mixed_precision, config.precision) == (mixed, kind)


def test_an_unknown_precision_is_refused_by_name():
    with pytest.raises(PrecisionError, match="precision='8'.*'16'"):
        TrainingCoordinator(precision="8", use_gpu=False)


def test_use_amp_switches_mixed_precision_for_one_call(tiny_config):
    coordinator = TrainingCoordinator(precision="16", config=tiny_config, device=T4)
    assert coordinator.resolve_precision().precision == "16-mixed"
    assert coordinator.resolve_precision(use_amp=False).precision == "32-true"
    fp32 = TrainingCoordinator(precision="32", config=tiny_config, device=T4)
    assert fp32.resolve_precision().precision == "32-true"
    assert fp32.resolve_precision(use_amp=True).precision == "16-mixed"  # the kit's choice for a T4


def test_train_returns_the_reference_result_keys(tiny_config, tiny_lm, tmp_path):
    coordinator = TrainingCoordinator(output_dir=str(tmp_path / "ref"), use_gpu=False, precision="32",
                                      gradient_clip_val=0.5, config=tiny_config)
    model = tiny_lm()
    results = coordinator.train(model, max_epochs=1, batch_size=8, use_amp=False)
    assert {"best_model_path", "final_metrics", "trainer", "model", "checkpoint_manager", "tokenizer"} <= set(results)
    run = results["result"]
    assert run.precision == "32-true" and "switched off" in run.precision_reason
    assert run.global_step == tiny_config.max_steps and run.config.gradient_clip_val == 0.5
    assert results["model"] is model and results["tokenizer"] is run.tokenizer
    assert results["best_model_path"].startswith(str(tmp_path / "ref" / "checkpoints"))
    metrics = results["final_metrics"]
    assert metrics["val_loss"] == run.val_loss and metrics["train_loss"] == run.train_loss
    assert metrics["val_perplexity"] == pytest.approx(torch.tensor(run.val_loss).exp().item(), rel=1e-6)


def test_train_with_use_amp_on_a_cpu_keeps_fp32_as_the_reference_does(tiny_config, tiny_lm):
    results = TrainingCoordinator(use_gpu=False, precision="32", config=tiny_config).train(tiny_lm(), use_amp=True)
    assert results["result"].precision == "32-true"


def test_a_reference_argument_without_a_setting_is_refused_by_name(tiny_config, tiny_lm):
    with pytest.raises(TypeError, match="takes no datamodule, num_workers here"):
        TrainingCoordinator(use_gpu=False, config=tiny_config).train(tiny_lm(), datamodule=object(), num_workers=2)
