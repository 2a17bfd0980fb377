"""AmpWandbCallback's contract against stub trainers and a stub `wandb` module, and loading amp_utils by
file path (the kit's own skipped-step detection, in the RunRecorder, is tested in test_fp16_scaler.py).

The stub `wandb` stands in for a W&B run (none can start here without side effects); the stub
trainers are what the contract promises to accept.
"""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pytest

from utils.training.amp_utils import AmpWandbCallback

ROOT = Path(__file__).resolve().parents[1]
PRECISION_VARIANTS = ["16", "16-mixed", "16_true", "16-true", "bf16", "bf16-mixed", "32", "32-true"]


class StubScaler:
    def __init__(self, scale):
        self.scale = scale

    def get_scale(self):
        return self.scale


def trainer_with_scale(scale, current_epoch=0):
    """A trainer with only `strategy` and `current_epoch`, as the contract allows."""
    plugin = SimpleNamespace(scaler=StubScaler(scale))
    return SimpleNamespace(strategy=SimpleNamespace(precision_plugin=plugin), current_epoch=current_epoch)


@pytest.fixture
def stub_wandb(monkeypatch):
    calls = []
    module = types.ModuleType("wandb")
    module.run = object()
    module.log = lambda data, step=None: calls.append((dict(data), step))
    module.calls = calls
    monkeypatch.setitem(sys.modules, "wandb", module)
    return module


@pytest.mark.parametrize("precision", PRECISION_VARIANTS)
@pytest.mark.parametrize("enabled", [True, False])
def test_callback_keeps_enabled_and_precision_as_given(enabled, precision):
    callback = AmpWandbCallback(enabled=enabled, precision=precision)
    assert callback.enabled is enabled
    assert callback.precision == precision


@pytest.mark.parametrize("scale", [65536.0, 0.0, 1e30, 1e-30, 3])
def test_get_loss_scale_returns_the_scalers_scale_as_float(scale):
    value = AmpWandbCallback(True, "16-mixed")._get_loss_scale(trainer_with_scale(scale))
    assert type(value) is float and value == float(scale)


@pytest.mark.parametrize("trainer", [
    SimpleNamespace(current_epoch=0),  # no strategy
    SimpleNamespace(strategy=None),
    SimpleNamespace(strategy=SimpleNamespace()),  # no precision plugin
    SimpleNamespace(strategy=SimpleNamespace(precision_plugin=None)),
    SimpleNamespace(strategy=SimpleNamespace(precision_plugin=SimpleNamespace())),  # no scaler attribute
    SimpleNamespace(strategy=SimpleNamespace(precision_plugin=SimpleNamespace(scaler=None))),
], ids=["no-strategy", "strategy-none", "no-plugin", "plugin-none", "no-scaler", "scaler-none"])
def test_get_loss_scale_is_none_without_a_scaler(trainer):
    assert AmpWandbCallback(True, "bf16-mixed")._get_loss_scale(trainer) is None


def test_epoch_end_does_nothing_without_a_wandb_run(stub_wandb):
    stub_wandb.run = None
    AmpWandbCallback(True, "16-mixed").on_train_epoch_end(trainer_with_scale(1024.0), None)
    assert stub_wandb.calls == []


def test_epoch_end_logs_once_with_the_loss_scale(stub_wandb):
    AmpWandbCallback(True, "16-mixed").on_train_epoch_end(trainer_with_scale(1024.0, current_epoch=3), None)
    assert stub_wandb.calls == [({"amp/enabled": 1, "amp/precision": "16-mixed", "amp/loss_scale": 1024.0}, 3)]


@pytest.mark.parametrize("precision", ["32", "bf16", "32-true"])
def test_epoch_end_without_a_scaler_leaves_out_the_loss_scale(stub_wandb, precision):
    trainer = SimpleNamespace(strategy=SimpleNamespace(precision_plugin=SimpleNamespace(scaler=None)), current_epoch=1)
    AmpWandbCallback(False, precision).on_train_epoch_end(trainer, None)
    assert stub_wandb.calls == [({"amp/enabled": 0, "amp/precision": precision}, 1)]


def test_epoch_end_logs_a_zero_scale_as_it_is(stub_wandb):
    AmpWandbCallback(True, "16").on_train_epoch_end(trainer_with_scale(0.0), pl_module=None)
    assert stub_wandb.calls == [({"amp/enabled": 1, "amp/precision": "16", "amp/loss_scale": 0.0}, 0)]


def test_amp_utils_loads_by_file_path_without_importing_wandb():
    code = (
        "import importlib.util, sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        f"spec = importlib.util.spec_from_file_location('amp_utils_alone', {str(ROOT / 'utils/training/amp_utils.py')!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "cb = module.AmpWandbCallback(True, '16-mixed')\n"
        "print(cb.enabled, cb.precision, module.compute_effective_precision('32', True, True, True), 'wandb' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         stdin=subprocess.DEVNULL, cwd="/")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "16-mixed", "16", "False"]
