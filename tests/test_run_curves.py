"""The run's richer curves: lr, the gradient norm before clipping, tokens/s, val/perplexity and val/macro_f1,
in the CSV log, a W&B offline run and the TrainingResult history; and the Results figure drawn from them."""

from __future__ import annotations

import csv
import math

import pytest

from tests.conftest import REPO_ROOT
from tests.test_training import _write_labelled
from tests.test_wandb_helpers import history_rows, offline_config, read_wandb_records
from utils.config import WizardConfig
from utils.env import DeviceInfo
from utils.training import train

CPU = DeviceInfo("cpu", "CPU")


def _csv_rows(run_dir) -> list[dict]:
    with open(next((run_dir / "logs").glob("version_*/metrics.csv")), newline="") as f:
        return list(csv.DictReader(f))


def test_a_tiny_clip_value_logs_norms_above_it_every_logging_interval(tiny_config):
    clip = 1e-4
    result = train(tiny_config.replace(max_steps=6, log_every_n_steps=2, gradient_clip_val=clip), device=CPU)
    rows = _csv_rows(result.output_dir)
    norms = {int(r["step"]): float(r["grad_norm"]) for r in rows if r.get("grad_norm")}
    assert sorted(norms) == [2, 4, 6]  # every log_every_n_steps
    assert all(n > 1000 * clip for n in norms.values()), norms  # before clipping: clipped ones would be <= clip
    assert result.history.grad_norm == sorted(norms.items())
    lrs = [float(r["lr"]) for r in rows if r.get("lr")]
    assert len(lrs) == 6 and lrs == sorted(lrs, reverse=True) and lrs[0] < tiny_config.learning_rate  # cosine decay
    (step, loss), = result.history.val
    assert result.history.val_perplexity == [(step, pytest.approx(math.exp(loss), rel=1e-5))]
    assert f"val perplexity:   {result.history.val_perplexity[0][1]:.4g}\n" in result.summary()
    speeds = [float(r["tokens_per_sec"]) for r in rows if r.get("tokens_per_sec")]
    assert speeds and all(s > 0 for s in speeds)
    assert not any(r.get("gpu_peak_memory_gib") for r in rows)  # a CPU run has no GPU memory to report


def test_a_classifier_logs_macro_f1_beside_accuracy(tmp_path):
    result = train(WizardConfig(
        task="classification", model_template="classifier", model_size="tiny", dataset_source="file",
        dataset_path=str(_write_labelled(tmp_path, "csv")), text_column="review", label_column="sentiment",
        max_seq_len=24, batch_size=16, learning_rate=3e-3, warmup_ratio=0.0, max_steps=4, val_split=0.2,
        log_every_n_steps=2, output_dir=str(tmp_path / "run")), device=CPU)
    (step, f1), = result.history.val_macro_f1
    assert step == 4 and 0.0 <= f1 <= 1.0
    assert f"val macro-F1:     {f1:.4f}\n" in result.summary()
    assert [s for s, _ in result.history.val_accuracy] == [4]
    assert not result.history.val_perplexity


def test_an_offline_wandb_run_holds_lr_grad_norm_and_perplexity(tmp_path, tiny_lm):
    result = train(offline_config(tmp_path, precision="32-true", max_steps=4, val_split=0.05, log_every_n_steps=2),
                   model=tiny_lm(), device=CPU)
    rows = history_rows(read_wandb_records(next((tmp_path / "run" / "wandb").glob("offline-run-*"))))
    assert [r["trainer/global_step"] for r in rows if "grad_norm" in r] == [2, 4]
    assert len([r for r in rows if "lr" in r]) == 4
    perplexity = [r["val/perplexity"] for r in rows if "val/perplexity" in r]
    assert perplexity == [pytest.approx(math.exp(result.val_loss), rel=1e-5)]


def test_the_results_figure_spans_resumed_stretches(tiny_config):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from utils.plots import plot_training

    config = tiny_config.replace(max_steps=4, max_epochs=3, log_every_n_steps=2, gradient_clip_val=0.5)
    train(config, device=CPU)
    result = train(config.replace(max_steps=8), device=CPU)  # resumes at step 4
    fig = plot_training(result)
    loss_ax, lr_ax, norm_ax, speed_ax = fig.axes
    train_line, val_line = loss_ax.get_lines()[:2]
    assert list(train_line.get_xdata()) == list(range(1, 9))  # both stretches
    assert list(val_line.get_xdata()) == [4, 8]
    assert list(norm_ax.get_lines()[0].get_xdata()) == [2, 4, 6, 8]
    clip_line = next(line for line in norm_ax.get_lines() if line.get_label() == "clip at 0.5")
    assert list(clip_line.get_ydata()) == [0.5, 0.5]
    assert [list(line.get_xdata()) for line in lr_ax.get_lines() if line.get_linestyle() == ":"] == [[4, 4]]
    assert len(lr_ax.get_lines()[0].get_xdata()) == 8 and speed_ax.get_lines()[0].get_label() == "tokens/s"
    # Its size is checked where it matters, on the page: tests/test_wizard_browser.py's Run all in both frontends.
    assert (result.output_dir / "training.png").read_bytes()[:4] == b"\x89PNG"
    artifacts = REPO_ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    fig.savefig(artifacts / "training-figure.png", dpi=100)  # for a person to look at
    plt.close(fig)


def test_the_gradient_norm_adds_no_read_back_per_step(tiny_config, monkeypatch):
    """As test_callbacks' loss test: the norm is made a Traced tensor (counting its conversions to Python),
    so a read of it outside the flush, on any step, would show up as an extra count."""
    import torch

    from templates import build_template
    from tests.test_callbacks import StepTracker, Traced, TracedOutput

    for name in ("get_total_norm", "clip_grad_norm_"):  # torch's two ways to the norm, with and without clipping
        real = getattr(torch.nn.utils, name)
        monkeypatch.setattr(torch.nn.utils, name, lambda *a, _real=real, **k: _real(*a, **k).as_subclass(Traced))
    Traced.reads.clear()
    config = tiny_config.replace(max_steps=20, log_every_n_steps=5, precision="32-true", checkpoint_every_minutes=60)
    model = TracedOutput(build_template("gpt", {"vocab_size": 128, "max_seq_len": 32, "size": "tiny", "dropout": 0.0}))
    result = train(config, model, device=CPU, extra_callbacks=[StepTracker()])
    assert [step for step, _ in result.history.grad_norm] == [5, 10, 15, 20]
    assert config.gradient_clip_val > 0  # the clipping path's norm is the one logged
    # The loss and the norm come back in one read per flush; the first step is flushed for the first epoch's
    # checkpoint (issue 20, item 19).
    assert dict(Traced.reads) == {1: 1, 5: 1, 10: 1, 15: 1, 20: 1}
