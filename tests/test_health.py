"""fp16 health on the real CPU fp16 + GradScaler path: injected overflow and NaN losses stop training.

Nothing of ours is mocked; the overflow is real inf gradients (TinyLM's backward), which the real
torch.amp.GradScaler finds, skips and backs off from.
"""

from __future__ import annotations

import csv
import math

import pytest
import pytorch_lightning as pl
import torch

from utils.config import WizardConfig
from utils.env import DeviceInfo
from utils.training import train
from utils.training.callbacks.recorder import RunRecorder
from utils.training.callbacks.health import Fp16HealthError, TrainingHealthCallback, TrainingHealthError

CPU = DeviceInfo("cpu", "CPU")


def tiny_config(tmp_path, **changes) -> WizardConfig:
    base = dict(max_steps=6, max_seq_len=16, batch_size=4, val_split=0.002, log_every_n_steps=1,
                precision="16-mixed", output_dir=str(tmp_path / "run"))
    return WizardConfig(**{**base, **changes})


def metrics_rows(output_dir) -> list[dict]:
    with open(next((output_dir / "logs").glob("version_*/metrics.csv")), newline="") as f:
        return [row for row in csv.DictReader(f) if row.get("amp/loss_scale")]


class StepRecorder(pl.Callback):
    """Records, per optimizer step, the unscaled gradient norm Lightning's clipping sees and the norm
    optimizer.step() receives (after clipping); optimizer.step() is not called for skipped steps."""

    def __init__(self):
        self.trainer = None
        self.before_clip: list[float] = []
        self.at_step: list[float] = []

    def on_train_start(self, trainer, pl_module):
        self.trainer = trainer
        params = [p for p in pl_module.parameters()]
        trainer.optimizers[0].register_step_pre_hook(lambda opt, args, kwargs: self.at_step.append(_norm(params)))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.before_clip.append(_norm(pl_module.parameters()))


def _norm(params) -> float:
    return math.sqrt(sum(float(p.grad.float().pow(2).sum()) for p in params if p.grad is not None))


def test_consecutive_overflows_stop_training_with_a_diagnosis(tmp_path, tiny_lm):
    config = tiny_config(tmp_path, max_steps=30)
    recorder = StepRecorder()
    with pytest.raises(Fp16HealthError) as info:
        train(config, tiny_lm(inf_grad_calls=range(3, 31)), device=CPU, extra_callbacks=[recorder])
    message = str(info.value)
    # Steps 3..12 overflowed: the 10th skip in a row stops it; 2**16 halved 10 times is 64.
    assert "optimizer step 12 " in message
    assert "10 optimizer steps in a row overflowed in fp16 and were skipped" in message
    assert "loss scale 64" in message and "10 skipped in total" in message
    assert "lower learning_rate (now " in message and "'bf16-mixed'" in message and "'32-true'" in message
    assert len(recorder.at_step) == 2  # optimizer.step() ran only for the two healthy steps
    # The first step of an epoch is saved (a kill at its end loses nothing); nothing after the overflows began.
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 1
    # The per-step metrics reached the CSV logger up to the step before the stop.
    rows = metrics_rows(tmp_path / "run")
    assert [float(r["amp/loss_scale"]) for r in rows] == [65536.0, 65536.0] + [2.0 ** (16 - k) for k in range(1, 10)]
    assert [float(r["amp/skipped_steps"]) for r in rows] == [0, 0] + list(range(1, 10))


def test_in_the_notebook_the_advice_names_settings_as_the_wizard_does(tmp_path, tiny_lm):
    """The notebook's train (on_change="start_new") has no config names on screen: the advice uses the wizard's."""
    with pytest.raises(Fp16HealthError) as info:
        train(tiny_config(tmp_path, max_steps=30), tiny_lm(inf_grad_calls=range(3, 31)), device=CPU,
              on_change="start_new")
    message = str(info.value)
    assert "lower Learning rate (now " in message and "Mixed precision kind = bf16 mixed" in message
    assert "Mixed precision off" in message
    assert not any(name in message for name in ("learning_rate", "precision=", "32-true", "log_every_n_steps"))


def test_loss_scale_collapsing_below_one_stops_training(tmp_path, tiny_lm):
    # Never 10 skips in a row (step 10 is healthy), but 17 halvings take 2**16 to 0.5 at step 18.
    skips = [*range(1, 10), *range(11, 40)]
    with pytest.raises(Fp16HealthError) as info:
        train(tiny_config(tmp_path, max_steps=40), model=tiny_lm(inf_grad_calls=skips), device=CPU)
    message = str(info.value)
    assert "optimizer step 18 " in message
    assert "the loss scale collapsed to 0.5 (below 1)" in message
    assert "17 skipped in total" in message


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, tiny_lm):
    first = train(tiny_config(tmp_path, max_steps=2), model=tiny_lm(), device=CPU)
    last = first.last_checkpoint
    assert last is not None and last.name == "last.ckpt"
    good = last.read_bytes()

    with pytest.raises(Fp16HealthError) as info:  # resumes at step 2; the 2nd step of this run goes NaN
        train(tiny_config(tmp_path, max_steps=8), model=tiny_lm(nan_loss_calls={2}), device=CPU)
    message = str(info.value)
    assert "optimizer step 4 " in message and "the training loss is nan" in message
    assert "1 skipped in total" in message  # the scaler skipped the NaN step as well
    assert last.read_bytes() == good


def test_a_nan_step_is_never_written_to_last_ckpt_even_when_saving_every_step(tmp_path, tiny_lm):
    with pytest.raises(Fp16HealthError):  # the 4th step goes NaN; steps 1-3 were each saved
        train(tiny_config(tmp_path, max_steps=8, checkpoint_every_minutes=0), model=tiny_lm(nan_loss_calls={4}),
              device=CPU)
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 3  # our own checkpoint: it holds loop state besides tensors
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())


def test_nan_loss_in_fp32_stops_training_without_fp16_advice(tmp_path, tiny_lm):
    with pytest.raises(TrainingHealthError) as info:
        train(tiny_config(tmp_path, precision="32-true"), model=tiny_lm(nan_loss_calls={3}), device=CPU)
    assert type(info.value) is TrainingHealthError
    message = str(info.value)
    assert "optimizer step 3 " in message and "the training loss is nan" in message
    assert "loss scale" not in message and "bf16" not in message
    assert "lower learning_rate (now " in message


def test_clipping_runs_on_unscaled_gradients_and_skips_are_counted(tmp_path, tiny_lm):
    recorder = StepRecorder()
    train(tiny_config(tmp_path, gradient_clip_val=0.01, max_steps=5), tiny_lm(inf_grad_calls={3}), device=CPU,
          extra_callbacks=[recorder])

    runs = [cb for cb in recorder.trainer.callbacks if isinstance(cb, RunRecorder)]
    health = [cb for cb in recorder.trainer.callbacks if isinstance(cb, TrainingHealthCallback)]
    assert len(runs) == 1 and len(health) == 1 and health[0].check in runs[0].listeners
    assert runs[0].precision == "16-mixed"
    assert runs[0].skipped_total == 1 and health[0].skipped_total == 1  # one count, read by the health check
    # on_before_optimizer_step sees unscaled gradients (inf/NaN on the overflowed step 3) ...
    assert len(recorder.before_clip) == 5 and not math.isfinite(recorder.before_clip[2])
    assert all(0.01 < n < 100 for i, n in enumerate(recorder.before_clip) if i != 2)
    # ... and optimizer.step() (4 times: step 3 skipped) gets them clipped to 0.01. Clipping the
    # scaled gradients instead would leave 0.01 / 65536 after unscaling.
    assert len(recorder.at_step) == 4
    assert recorder.at_step == pytest.approx([0.01] * 4, rel=1e-3)
    rows = metrics_rows(tmp_path / "run")
    assert [float(r["amp/skipped_steps"]) for r in rows] == [0, 0, 1, 1, 1]
    assert [float(r["amp/loss_scale"]) for r in rows] == [65536.0, 65536.0, 32768.0, 32768.0, 32768.0]


def test_health_thresholds_are_validated():
    with pytest.raises(ValueError, match="max_consecutive_skips"):
        TrainingHealthCallback(max_consecutive_skips=0)
    assert torch.amp.GradScaler("cpu").get_backoff_factor() == 0.5  # the skip detection relies on a backoff < 1
