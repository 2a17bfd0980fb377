"""utils.plots: the figures the notebooks show."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from utils.amp_benchmark import AmpBenchmark, BenchmarkRow  # noqa: E402
from utils.config import WizardConfig  # noqa: E402
from utils.env import DeviceInfo  # noqa: E402
from utils.plots import plot_benchmark, plot_losses  # noqa: E402
from utils.training import TrainingResult  # noqa: E402


def result(train_history, val_history, global_step=4):
    return TrainingResult(config=WizardConfig(), output_dir=Path("runs/default"), best_checkpoint=None,
                          last_checkpoint=None, train_loss=None, val_loss=None, global_step=global_step,
                          steps_run=len(train_history), tokens_per_sec=1.0, precision="16-mixed",
                          precision_reason="test", resumed_from=None, train_history=train_history,
                          val_history=val_history)


def test_plot_losses_draws_train_and_validation_curves():
    ax = plot_losses(result([(1, 4.0), (2, 3.5), (3, 3.2), (4, 3.0)], [(2, 3.6), (4, 3.1)]))
    train, val = ax.get_lines()
    assert list(train.get_xdata()) == [1, 2, 3, 4] and list(train.get_ydata()) == [4.0, 3.5, 3.2, 3.0]
    assert list(val.get_xdata()) == [2, 4] and list(val.get_ydata()) == [3.6, 3.1]
    assert ax.get_title() == "Loss of gpt (tiny) in fp16 mixed precision"
    plt.close("all")


def test_the_loss_plot_title_names_the_trained_model_and_its_size_in_words():
    from torch import nn

    trained = result([(1, 4.0)], [])
    trained.model, trained.precision = nn.Linear(1000, 1000), "32-true"  # 1,001,000 parameters
    assert plot_losses(trained).get_title() == "Loss of Linear (tiny, 1.00M parameters) in fp32"
    plt.close("all")


def test_plot_losses_of_a_finished_run_says_there_is_nothing_new(capsys):
    assert plot_losses(result([], [], global_step=100)) is None
    assert "No training steps in this call" in capsys.readouterr().out


def test_plot_benchmark_has_one_bar_per_precision_for_each_metric():
    rows = [BenchmarkRow("32-true", 2.0, 100.0, 3 * 2**20, 3.0, 3.0),
            BenchmarkRow("16-mixed", 4.0, 200.0, 2 * 2**20, 3.0, 3.0)]
    fig = plot_benchmark(AmpBenchmark(DeviceInfo("cpu", "CPU"), 10, 8, "RSS", rows))
    heights = [[bar.get_height() for bar in ax.patches] for ax in fig.axes]
    assert heights == [[2.0, 4.0], [100.0, 200.0], [3.0, 2.0]]
    plt.close(fig)
