"""Checks that need a real CUDA GPU. Skipped where there is none (CI and the development machines
have none); run `python -m pytest -m gpu` on a GPU machine (Colab, or a lent one)."""

import csv
import math

import pytest
import torch

from utils.env import detect_device
from utils.training import train
from utils.training.amp_utils import resolve_precision

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _expected_auto_precision() -> str:
    major = torch.cuda.get_device_capability()[0]
    return "bf16-mixed" if major >= 8 else "16-mixed" if major == 7 else "32-true"


def test_detected_device_drives_the_auto_precision():
    device = detect_device()
    assert device.kind == "cuda" and device.capability == torch.cuda.get_device_capability()
    assert device.name == torch.cuda.get_device_name() and device.total_memory_bytes > 0
    decision = resolve_precision(True, "auto")
    assert decision.precision == _expected_auto_precision()
    assert device.name in decision.reason


def test_mixed_precision_training_runs_on_the_gpu_and_learns(tiny_config):
    result = train(tiny_config.replace(max_steps=30, log_every_n_steps=1))
    assert result.precision == _expected_auto_precision()
    losses = [loss for _, loss in result.train_history]
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.3
    assert next(result.model.parameters()).device.type == "cuda"
    with open(result.output_dir / "logs" / "version_0" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    scales = [float(r["amp/loss_scale"]) for r in rows if r.get("amp/loss_scale")]
    if result.precision == "16-mixed":  # a live GradScaler on a T4/V100
        assert scales and scales[0] == 65536.0
    else:  # bf16 and fp32 train without loss scaling
        assert scales == []
