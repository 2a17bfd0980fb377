"""utils.training.run_estimate: train() takes its time estimate from the run's own first steps, not from extra steps.

The witness model counts its forward and backward passes; its forward sleeps a little so that a step's time is
well above the callbacks' own (a tiny model's steps are a few milliseconds).
"""

import time

import pytest
import pytorch_lightning as pl
import torch

from utils.config import WizardConfig
from utils.env import DeviceInfo
from utils.training import train
from utils.training.estimate import BatchTooLargeError

CPU = DeviceInfo("cpu", "CPU")
VOCAB = 256  # room for the default tokenizer's ids


class Witness(torch.nn.Module):
    """A tiny causal LM (each position sees its own token only) counting training forwards and backwards."""

    def __init__(self, delay: float = 0.0):
        super().__init__()
        self.embed, self.head = torch.nn.Embedding(VOCAB, 16), torch.nn.Linear(16, VOCAB)
        self.delay, self.forwards, self.backwards = delay, 0, 0
        self.head.weight.register_hook(self._backward)

    def _backward(self, grad):
        self.backwards += 1
        return grad

    def forward(self, input_ids):
        if torch.is_grad_enabled():
            self.forwards += 1
            time.sleep(self.delay)
        return self.head(self.embed(input_ids))  # (B, T, V)


class StepTimes(pl.Callback):
    """The wall time at the end of each optimizer step, and the witness's counts when training starts."""

    def __init__(self, model: Witness):
        self.model, self.ends, self.at_start = model, [], None

    def on_train_start(self, trainer, pl_module):
        self.at_start = (self.model.forwards, self.model.backwards)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.ends.append(time.perf_counter())


def _config(tmp_path, **changes) -> WizardConfig:
    base = dict(max_seq_len=16, batch_size=4, max_steps=6, val_split=0.02, log_every_n_steps=1,
                output_dir=str(tmp_path / "run"))
    return WizardConfig(**{**base, **changes})


def test_no_optimizer_step_runs_before_training_only_the_checks_one_backward_each(tmp_path):
    """Before the first training step: check_model's backward and the pre-flight's gradient check, nothing more
    (the estimate used to train 1 + 3 steps of the model there: 4 more backwards)."""
    torch.manual_seed(0)
    model = Witness()
    steps = StepTimes(model)
    result = train(_config(tmp_path), model=model, device=CPU, extra_callbacks=[steps])
    assert steps.at_start[1] == 2  # check_model (a user model's dummy batch) + the gradient_flow check's probe
    assert model.backwards == 2 + result.steps_run == 8
    model = Witness()
    steps = StepTimes(model)
    train(_config(tmp_path, inspect=False, output_dir=str(tmp_path / "plain")), model=model, device=CPU,
          extra_callbacks=[steps])
    assert steps.at_start[1] == 1  # without the inspection: check_model's alone


def test_the_printed_estimate_is_the_run_s_own_steps_2_to_4(tmp_path, capsys):
    torch.manual_seed(0)
    model = Witness(delay=0.05)
    steps = StepTimes(model)
    result = train(_config(tmp_path), model=model, device=CPU, extra_callbacks=[steps])
    assert len(steps.ends) == 6
    own = (steps.ends[3] - steps.ends[0]) / 3  # from the end of step 1 to the end of step 4
    assert result.estimate.seconds_per_step == pytest.approx(own, abs=0.01)
    assert result.estimate.seconds_per_step > 0.05  # the sleeping forward is in it
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("Estimate: "))
    assert line.startswith(f"Estimate: {result.estimate.seconds_per_step:.3g} s per optimizer step (32-true, batch 4 "
                           "x 1 accumulation, timed on this run's steps 2-4 on CPU); 6 steps + 1 validation(s) = "
                           "about ")
    summary = next(s for s in result.summary().splitlines() if s.startswith("time (estimated): "))
    assert summary.startswith(f"time (estimated): {result.estimate.seconds_per_step:.3g} s/step")


def test_a_run_of_two_steps_times_its_second(tmp_path, capsys):
    result = train(_config(tmp_path, max_steps=2), model=Witness(), device=CPU)
    assert "timed on this run's step 2 on CPU); 2 steps + 1 validation(s)" in capsys.readouterr().out
    assert result.estimate.total_steps == 2


def test_a_batch_that_cannot_fit_is_refused_before_step_1_naming_one_that_fits(tmp_path):
    """The device's memory is injected (a DeviceInfo with total_memory_bytes; this machine's RAM would hold it):
    the memory model refuses the batch before the first training forward, and names the batch that fits."""
    torch.manual_seed(0)
    model = Witness()
    with pytest.raises(BatchTooLargeError, match=r"^batch_size=4096 needs about .* for training, more than Small "
                                                 r"CPU memory .* The largest batch that fits is \d+: batch_size=\d+ "
                                                 r"with gradient_accumulation_steps=\d+ keeps the effective batch\.$"):
        train(_config(tmp_path, batch_size=4096), model=model, device=DeviceInfo("cpu", "Small CPU", None, 64 << 20))
    assert model.backwards == 2  # check_model's and the gradient check's: no training step began
    assert not (tmp_path / "run" / "checkpoints").exists()
