"""The RunRecorder: one record per optimizer step, read back from the device once per logging interval."""

from __future__ import annotations

import collections
import os
import re
import signal

import pytorch_lightning as pl
import pytest
import torch

from utils.env import DeviceInfo
from utils.training import train
from utils.run_folder.history import read_history
from utils.training.callbacks.last_checkpoint import TrainingStopped

CPU = DeviceInfo("cpu", "CPU")


def test_accumulated_steps_are_recorded_once_each(tiny_config):
    result = train(tiny_config.replace(gradient_accumulation_steps=4, max_steps=3), device=CPU)
    assert [step for step, _ in result.train_history] == [1, 2, 3]
    assert result.global_step == 3


class Traced(torch.Tensor):
    """A tensor that counts its conversions to Python values; ops on it return Traced tensors too,
    so the loss and everything computed from it (sums, means, stacks) carry the count."""

    reads: collections.Counter = collections.Counter()
    step = None  # the optimizer step being trained, None outside training batches


def _counted(conversion):
    def read(tensor, *args, **kwargs):
        if Traced.step is not None:
            Traced.reads[Traced.step] += 1
        return conversion(tensor, *args, **kwargs)
    return read


for _name in ("item", "tolist", "__float__", "__int__", "__bool__"):  # each waits for the device
    setattr(Traced, _name, _counted(getattr(torch.Tensor, _name)))


class TracedOutput(torch.nn.Module):
    """The template GPT, its training logits (and so the training loss) made Traced."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, idx):
        logits = self.model(idx)
        return logits.as_subclass(Traced) if self.training else logits  # validation reads once per validation


class StepTracker(pl.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        Traced.step = trainer.global_step + 1  # the optimizer step this batch belongs to

    def on_validation_start(self, trainer, pl_module):
        Traced.step = None

    def on_train_end(self, trainer, pl_module):
        Traced.step = None


def test_the_loss_is_read_back_once_per_logging_interval(tiny_config):
    """On a GPU each read of the loss waits for the queued work; here the reads are counted."""
    from templates import build_template

    Traced.reads.clear()
    config = tiny_config.replace(max_steps=20, log_every_n_steps=5, precision="32-true", checkpoint_every_minutes=60)
    model = TracedOutput(build_template("gpt", {"vocab_size": 128, "max_seq_len": 32, "size": "tiny", "dropout": 0.0}))
    result = train(config, model, device=CPU, extra_callbacks=[StepTracker()])
    assert result.global_step == 20
    # One read per flush, none in between; the first step is flushed too, for the first epoch's checkpoint.
    assert dict(Traced.reads) == {1: 1, 5: 1, 10: 1, 15: 1, 20: 1}
    assert [step for step, _ in read_history(result.output_dir / "logs").train] == list(range(1, 21))


class _StopAtStep(pl.Callback):
    """Presses Stop (SIGINT to this process) after optimizer step `step`, as Ctrl-C or Colab's Stop does."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


def test_the_progress_bar_of_a_run_resumed_mid_epoch_reads_epoch_and_its_length(tiny_config, capsys):
    with pytest.raises(TrainingStopped):
        train(tiny_config, device=CPU, extra_callbacks=[_StopAtStep(3)])
    capsys.readouterr()
    result = train(tiny_config, device=CPU)  # resumes at step 3, in the middle of epoch 0
    assert result.resumed_from is not None and result.global_step == 8
    out = capsys.readouterr().out
    batches = len(result.train_history) and re.search(r"Epoch 0: .*?\d+/(\d+)", out)
    assert batches, out[-2000:]
    assert "Training:" not in out and "/?" not in out.split("Validation")[0]
    # However rarely the bar redraws (piped output: every 100 batches), it ends where the run stopped.
    assert f"8/{batches.group(1)}" in out


def test_a_resumed_run_times_and_counts_only_the_steps_it_ran(tiny_config):
    """A rerun with a higher max_steps resumes mid-epoch (no on_train_epoch_start from Lightning): its summary once
    read "actual 0 s/step" and twice the true tokens/s (the whole run's tokens over this call's seconds)."""
    config = tiny_config.replace(max_epochs=3, max_steps=6)
    first = train(config, device=CPU)
    second = train(config.replace(max_steps=12), device=CPU)
    assert second.resumed_from is not None and (second.global_step, second.steps_run) == (12, 6)
    assert second.train_seconds > 0
    tokens_per_step = config.batch_size * config.max_seq_len  # every window is max_seq_len tokens
    assert second.tokens_per_sec == pytest.approx(second.steps_run * tokens_per_step / second.train_seconds,
                                                  rel=1e-6)
    assert first.tokens_per_sec == pytest.approx(first.steps_run * tokens_per_step / first.train_seconds, rel=1e-6)
    pace = float(re.search(r"actual ([0-9.e-]+) s/step", second.summary()).group(1))
    assert pace == pytest.approx(second.train_seconds / 6, rel=0.01) and pace > 0


def test_piped_progress_prints_lines_and_no_cursor_codes(tiny_config, capsys, monkeypatch):
    """Output piped to a log (capsys is not a terminal): a line per redraw, at least every LINE_SECONDS (0 here:
    every batch), and no validation bar whose cursor-up codes ("\\x1b[A") a log shows as "[A"."""
    from utils.training.callbacks.recorder import RecordedProgressBar

    monkeypatch.setattr(RecordedProgressBar, "LINE_SECONDS", 0.0)  # our own constant: a line every batch
    result = train(tiny_config.replace(max_steps=6), device=CPU)  # validated at its last step
    out = capsys.readouterr().out
    assert result.global_step == 6
    assert "\x1b[" not in out and "Validation" not in out
    total = re.search(r"Epoch 0: .*?\d+/(\d+)", out).group(1)
    lines = [line.split("\r")[-1] for line in out.splitlines() if "Epoch 0:" in line]
    for step in range(1, 7):  # each batch on a line of its own, its loss shown
        assert any(f" {step}/{total} " in line and "loss=" in line for line in lines), (step, lines)


def test_piped_progress_draws_by_time_not_every_batch(tiny_config, capsys):
    """With the default LINE_SECONDS (10 s) a run of a few seconds shows its first batch, then where it stopped."""
    result = train(tiny_config.replace(max_steps=6), device=CPU)
    out = capsys.readouterr().out
    total = re.search(r"Epoch 0: .*?\d+/(\d+)", out).group(1)
    shown = [int(n) for n in re.findall(rf"(\d+)/{total} ", out)]
    assert result.global_step == 6 and set(shown) == {0, 1, 6}, shown
