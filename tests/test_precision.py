"""Precision is decided once, from injected device facts, with its reason; the legacy contract holds.
(Loading amp_utils by file path on its own is tested in test_amp_utils.py.)"""

from pathlib import Path

import pytest
import torch

from utils.env import DeviceInfo
from utils.training.amp_utils import compute_effective_precision
from utils.precision import PrecisionError, resolve_precision

# Device facts stand in for GPUs this machine does not have (no CUDA here): the resolver reads only these.
T4 = DeviceInfo("cuda", "Tesla T4", (7, 5), 15 * 2**30)
V100 = DeviceInfo("cuda", "Tesla V100-SXM2-16GB", (7, 0), 16 * 2**30)
A100 = DeviceInfo("cuda", "NVIDIA A100-SXM4-40GB", (8, 0), 40 * 2**30)
L4 = DeviceInfo("cuda", "NVIDIA L4", (8, 9), 22 * 2**30)
P100 = DeviceInfo("cuda", "Tesla P100-PCIE-16GB", (6, 0), 16 * 2**30)
CPU = DeviceInfo("cpu", "CPU")


@pytest.mark.parametrize("device, expected", [(T4, "16-mixed"), (V100, "16-mixed"), (A100, "bf16-mixed"),
                                              (L4, "bf16-mixed"), (P100, "32-true"), (CPU, "32-true")])
def test_auto_follows_the_hardware(device, expected):
    decision = resolve_precision(True, "auto", device)
    assert decision.precision == expected
    assert decision.device is device
    assert device.name in decision.reason


def test_reasons_say_why():
    assert resolve_precision(True, "auto", T4).reason == (
        "fp16 autocast + GradScaler: Tesla T4 (compute capability 7.5) has fp16 tensor cores but no native bf16")
    assert resolve_precision(True, "auto", A100).reason.startswith(
        "bf16 autocast: NVIDIA A100-SXM4-40GB (compute capability 8.0) has native bf16")
    assert resolve_precision(True, "auto", CPU).reason == "fp32: no CUDA GPU (CPU); mixed precision speeds up GPUs only"


def test_switch_off_gives_fp32_everywhere():
    for device in (T4, A100, CPU):
        decision = resolve_precision(False, "auto", device)
        assert decision.precision == "32-true" and "switched off" in decision.reason


def test_bf16_on_a_t4_is_an_error_that_says_what_to_pick():
    with pytest.raises(PrecisionError) as err:
        resolve_precision(True, "bf16-mixed", T4)
    msg = str(err.value)
    assert "Tesla T4 (compute capability 7.5)" in msg
    assert "Choose precision='16-mixed' (fp16 + GradScaler) or 'auto'" in msg


@pytest.mark.parametrize("device, requested", [(A100, "bf16-mixed"), (T4, "16-mixed"), (A100, "16-mixed"),
                                               (CPU, "16-mixed"), (CPU, "bf16-mixed"), (T4, "32-true")])
def test_explicit_requests_the_hardware_can_honour_are_kept(device, requested):
    assert resolve_precision(True, requested, device).precision == requested


@pytest.mark.parametrize("requested, use_amp, cuda, gpu, expected", [
    ("32", None, True, True, "32"), ("bf16-mixed", None, False, False, "bf16-mixed"), (16, None, True, True, 16),
    ("32", True, True, True, "16"), ("bf16", True, True, True, "16"),
    ("16", True, False, True, "32"), ("16", True, True, False, "32"), ("16", True, False, False, "32"),
    ("16", False, True, True, "32"), ("16", False, False, False, "32"),
])
def test_compute_effective_precision_contract(requested, use_amp, cuda, gpu, expected):
    assert compute_effective_precision(requested, use_amp, cuda, gpu) == expected


def test_the_training_path_decides_precision_once_per_run(tiny_config, monkeypatch):
    from utils.training import coordinator, train

    calls = []  # a spy around the real decision, counting its callers
    monkeypatch.setattr(coordinator, "resolve_precision", lambda *a: calls.append(a) or resolve_precision(*a))
    result = train(tiny_config.replace(max_steps=1, use_mixed_precision=False), device=CPU)
    assert calls == [(False, "auto", CPU)]
    assert (result.precision, result.precision_reason) == ("32-true", "fp32: mixed precision is switched off (CPU)")


def test_the_wizard_decides_once_per_choice_not_per_keystroke(tmp_path, monkeypatch):
    from utils.ui import setup_wizard

    calls = []
    monkeypatch.setattr(setup_wizard, "resolve_precision", lambda *a: calls.append(a) or resolve_precision(*a))
    wizard = setup_wizard.SetupWizard(config_path=tmp_path / "w.json", interactive=True, device=T4)
    for size in (8, 16, 32, 64):  # edits that do not touch precision
        wizard.fields["batch_size"].input.value = size
    wizard.fields["use_mixed_precision"].input.value = False
    wizard.fields["use_mixed_precision"].input.value = True
    assert calls == [(True, "auto", T4), (False, "auto", T4)]


@pytest.mark.parametrize("device, tf32", [(T4, False), (A100, True), (CPU, False)])
def test_tf32_is_decided_with_the_precision_and_said_in_fp32_reasons(device, tf32):
    assert resolve_precision(True, "auto", device).tf32 is tf32
    fp32 = resolve_precision(False, "auto", device)
    assert fp32.tf32 is tf32 and fp32.reason.startswith("fp32 with TF32 matmuls" if tf32 else "fp32:")


# ---------------------------------------------------------------------------- what follows from the decision
@pytest.mark.parametrize("device, requested, autocast, scaler, base", [
    (T4, "auto", torch.float16, True, torch.float16),
    (A100, "auto", torch.bfloat16, False, torch.bfloat16),
    (A100, "16-mixed", torch.float16, True, torch.float16),
    (P100, "auto", None, False, torch.float32),
    (CPU, "auto", None, False, torch.float32),
    (CPU, "16-mixed", torch.float16, True, torch.float32),  # a CPU keeps a frozen base in fp32: CPU fp16 matmuls are slow
    (CPU, "bf16-mixed", torch.bfloat16, False, torch.float32),
])
def test_the_decision_carries_autocast_scaler_and_storage_dtypes(device, requested, autocast, scaler, base):
    decision = resolve_precision(True, requested, device)
    assert decision.autocast_dtype is autocast
    assert decision.uses_scaler is scaler
    assert decision.weights_dtype is torch.float32  # trained weights stay fp32 under every precision
    assert decision.base_dtype is base


def test_lightning_args_keep_fp16_on_a_cpu_with_a_cpu_grad_scaler():
    from pytorch_lightning.plugins.precision import MixedPrecision

    args = resolve_precision(True, "16-mixed", CPU).lightning_args()
    assert list(args) == ["plugins"]
    (plugin,) = args["plugins"]
    assert isinstance(plugin, MixedPrecision) and plugin.precision == "16-mixed" and plugin.device == "cpu"
    assert isinstance(plugin.scaler, torch.amp.GradScaler) and plugin.scaler._device == "cpu"
    assert resolve_precision(True, "auto", T4).lightning_args() == {"precision": "16-mixed"}
    assert resolve_precision(True, "auto", A100).lightning_args("fsdp") == {"precision": "bf16-mixed"}
    assert resolve_precision(False, "auto", CPU).lightning_args() == {"precision": "32-true"}


def test_autocast_and_scaler_outside_lightning_follow_the_decision():
    layer = torch.nn.Linear(4, 4)
    with resolve_precision(True, "16-mixed", CPU).autocast():
        assert layer(torch.ones(1, 4)).dtype is torch.float16
    with resolve_precision(True, "bf16-mixed", CPU).autocast():
        assert layer(torch.ones(1, 4)).dtype is torch.bfloat16
    with resolve_precision(False, "auto", CPU).autocast():
        assert layer(torch.ones(1, 4)).dtype is torch.float32
    assert isinstance(resolve_precision(True, "16-mixed", CPU).make_scaler(), torch.amp.GradScaler)
    assert resolve_precision(True, "bf16-mixed", CPU).make_scaler() is None


def test_no_module_but_precision_derives_dtypes_from_the_precision_string():
    """Builder, estimate, model check and the hand loop read the decision; none maps the string again."""
    root = Path(__file__).resolve().parents[1]
    readers = ["utils/training/builder.py", "utils/training/estimate.py", "utils/ui/model_check.py", "bench/hand_loop.py"]
    for path in readers:
        text = (root / path).read_text()
        assert '"16-mixed"' not in text and "torch.float16" not in text and "GradScaler(" not in text.replace(
            "GradScaler(device, enabled=decision.uses_scaler)", ""), path
