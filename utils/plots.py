"""Figures the notebooks show: loss curves of a training run, the AMP benchmark's bars."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

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
    """'Loss of GPT (tiny, 0.81M parameters) in fp32': the model as a reader knows it, and the precision in words."""
    c = result.config
    if c.model_source == "pretrained":
        name, details = Path(c.pretrained_model).name, []
    else:
        name = type(result.model).__name__ if result.model is not None else c.model_template
        details = [c.model_size] if c.model_source == "template" else []
    if result.model is not None:
        details.append(f"{sum(p.numel() for p in result.model.parameters()) / 1e6:.2f}M parameters")
    shown = f"{name} ({', '.join(details)})" if details else name
    return f"Loss of {shown} in {PRECISION_WORDS.get(result.precision, result.precision)}"


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
