"""Precision is decided once, from injected device facts, with its reason; the legacy contract holds.
(Loading amp_utils by file path on its own is tested in test_amp_utils.py.)"""

import pytest

from utils.env import DeviceInfo
from utils.training.amp_utils import PrecisionError, compute_effective_precision, resolve_precision

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


def test_uses_grad_scaler_only_for_fp16():
    assert resolve_precision(True, "auto", T4).uses_grad_scaler
    assert not resolve_precision(True, "auto", A100).uses_grad_scaler
    assert not resolve_precision(True, "auto", CPU).uses_grad_scaler


@pytest.mark.parametrize("requested, use_amp, cuda, gpu, expected", [
    ("32", None, True, True, "32"), ("bf16-mixed", None, False, False, "bf16-mixed"), (16, None, True, True, 16),
    ("32", True, True, True, "16"), ("bf16", True, True, True, "16"),
    ("16", True, False, True, "32"), ("16", True, True, False, "32"), ("16", True, False, False, "32"),
    ("16", False, True, True, "32"), ("16", False, False, False, "32"),
])
def test_compute_effective_precision_contract(requested, use_amp, cuda, gpu, expected):
    assert compute_effective_precision(requested, use_amp, cuda, gpu) == expected
