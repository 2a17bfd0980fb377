"""Figures the notebooks show: a training run's curves (losses, learning rate, gradient norm, throughput),
the AMP benchmark's bars."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

from utils.config import PRECISION_WORDS


def plot_losses(result, ax=None):
    """Training loss per step and validation loss per validation of a TrainingResult."""
    if not result.train_history:  # a rerun of a finished run: say so, and let Run all go on to export
        print(f"No training steps in this call: the run in {result.output_dir} had already finished "
              f"({result.global_step} steps). Raise Epochs or Max steps in the wizard to train on, or choose a new "
              "Output folder to start a new run.")
        return None
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 4))
    steps, losses = zip(*result.train_history)
    ax.plot(steps, losses, label="train", linewidth=1)
    if result.val_history:
        val_steps, val_losses = zip(*result.val_history)
        ax.plot(val_steps, val_losses, "o-", label="validation")
    ax.set(xlabel="optimizer step", ylabel="cross-entropy loss", title=loss_title(result))
    ax.grid(alpha=0.3)
    ax.legend()
    return ax


def loss_title(result) -> str:
    """'Loss of GPT (tiny, 0.81M parameters) in fp32'."""
    return f"Loss of {run_words(result)}"


def run_words(result) -> str:
    """'GPT (tiny, 0.81M parameters) in fp32': the model as a reader knows it, and the precision in words."""
    c = result.config
    if c.model_source == "pretrained":
        name, details = Path(c.pretrained_model).name, []
    else:
        name = type(result.model).__name__ if result.model is not None else c.model_template
        details = [c.model_size] if c.model_source == "template" else []
    if result.model is not None:
        details.append(f"{sum(p.numel() for p in result.model.parameters()) / 1e6:.2f}M parameters")
    shown = f"{name} ({', '.join(details)})" if details else name
    return f"{shown} in {PRECISION_WORDS.get(result.precision, result.precision)}"


# Inches (800 px at 100 dpi). The narrowest notebook column it meets, classic Notebook 6 in a 900 px window
# (~600 px), shrinks it so that 10 pt text is still 10 px tall; in JupyterLab and Colab it is larger.
TRAINING_FIGSIZE = (8, 5.5)


def plot_training(result, save_to: Path | str | None = "auto"):
    """One figure for the whole run, resumed stretches included: train/validation loss, learning rate,
    gradient norm before clipping (the clip value as a line) and throughput (with a GPU's peak memory).

    save_to: a PNG path; "auto" writes output_dir/training.png beside the run, None writes nothing.
    """
    h = result.history
    if h is None or not h.train:
        return plot_losses(result)  # says why there is nothing to draw
    fig, ((loss_ax, lr_ax), (norm_ax, speed_ax)) = plt.subplots(2, 2, figsize=TRAINING_FIGSIZE, sharex=True)
    _series(loss_ax, h.train, "train", linewidth=1)
    _series(loss_ax, h.val, "validation", fmt="o-")
    extra = h.val_perplexity or h.val_macro_f1 or h.val_accuracy
    if extra:
        name = "perplexity" if h.val_perplexity else "macro-F1" if h.val_macro_f1 else "accuracy"
        loss_ax.set_title(f"loss (last validation {name}: {extra[-1][1]:.4g})", fontsize=10)
    else:
        loss_ax.set_title("loss", fontsize=10)
    _series(lr_ax, h.lr, "learning rate")
    lr_ax.set_title("learning rate", fontsize=10)
    _series(norm_ax, h.grad_norm, "before clipping", fmt="-")
    clip = result.config.gradient_clip_val
    if clip:
        norm_ax.axhline(clip, color="tab:red", linestyle="--", linewidth=1, label=f"clip at {clip:g}")
    norm_ax.set_title("gradient norm", fontsize=10)
    if h.grad_norm and all(v > 0 for _, v in h.grad_norm):
        norm_ax.set_yscale("log")
        plain = FuncFormatter(lambda v, _: f"{v:g}")  # "0.6", not "6 x 10^-1"
        norm_ax.yaxis.set_major_formatter(plain)
        low, high = norm_ax.get_ylim()
        norm_ax.yaxis.set_minor_formatter(plain if high / low < 10 else NullFormatter())  # few decades: label more
    _series(speed_ax, h.tokens_per_sec, "tokens/s", color="tab:green")
    speed_ax.set_title("throughput" + (" and GPU peak memory" if h.gpu_peak_memory_gib else ""), fontsize=10)
    if h.gpu_peak_memory_gib:
        _series(speed_ax.twinx(), h.gpu_peak_memory_gib, "peak GiB", color="tab:purple", fmt="--")
    for ax in (loss_ax, lr_ax, norm_ax, speed_ax):
        for start in h.segment_starts[1:]:  # where a resumed stretch began
            ax.axvline(start, color="gray", linestyle=":", linewidth=1)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole: no "1.25"
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    norm_ax.set_xlabel("optimizer step")
    speed_ax.set_xlabel("optimizer step")
    resumed = f" ({len(h.segment_starts)} stretches, dotted lines: resumed)" if len(h.segment_starts) > 1 else ""
    fig.suptitle(f"{run_words(result)}, {result.global_step} steps{resumed}")
    fig.tight_layout()
    if save_to is not None:
        path = Path(result.output_dir) / "training.png" if save_to == "auto" else Path(save_to)
        fig.savefig(path, dpi=100)
        print(f"Figure saved to {path}")
    return fig


def _series(ax, points, label, fmt="-", **style):
    if points:
        steps, values = zip(*points)
        ax.plot(steps, values, fmt, label=label, markersize=3, **style)


def plot_benchmark(report):
    """Bars for steps/s, tokens/s and peak memory of each precision in an AmpBenchmark."""
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    labels = [row.label for row in report.rows]
    metrics = [("steps/s", [r.steps_per_sec for r in report.rows]),
               ("tokens/s", [r.tokens_per_sec for r in report.rows]),
               ("peak memory (MiB)", [r.peak_memory_bytes / 2**20 for r in report.rows])]
    for ax, (name, values) in zip(axes, metrics):
        ax.bar(labels, values, color=["tab:gray", "tab:green"][:len(values)])
        ax.set_title(name)
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle(f"fp32 against mixed precision on {report.device.describe()}, {report.steps} steps")
    fig.tight_layout()
    return fig
