"""The inspection's pictures, drawn with matplotlib's Agg canvas (no display, no pyplot state) into PNG files."""

from __future__ import annotations

import math
from pathlib import Path

MAX_BARS = 60  # beyond this many parameters the gradient plot shows one bar per layer


def _figure(**kwargs):
    # Imported here: train()'s pre-flight checks draw nothing and should not pay for matplotlib's import.
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def _save(fig, path: Path) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return path.name


def gradient_plot(norms: dict, path: Path) -> str:
    """Horizontal bars: log10 of each parameter's gradient norm (red where there is none)."""
    if len(norms) > MAX_BARS:  # group by layer: one bar per module
        grouped: dict = {}
        for name, g in norms.items():
            layer = name.rsplit(".", 1)[0]
            grouped[layer] = None if g is None and grouped.get(layer) is None else \
                math.hypot(grouped.get(layer) or 0.0, g or 0.0)
        norms = grouped
    names = list(norms)
    present = [g for g in norms.values() if g]
    floor = min(present) / 10 if present else 1e-12  # where a missing gradient's red bar ends
    values = [g if g else floor for g in norms.values()]
    colours = ["tab:blue" if g else "tab:red" for g in norms.values()]
    fig = _figure(figsize=(8, max(2.5, 0.22 * len(names) + 1)))
    ax = fig.add_subplot()
    ax.barh(range(len(names)), values, color=colours)
    ax.set_xscale("log")
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.invert_yaxis()
    ax.set(xlabel="gradient norm (red: no gradient or all zero)", title="gradient_flow: gradient norm per parameter")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def activation_plot(stats: dict, path: Path) -> str:
    """Std and max |x| of each block's output, log scale, in depth order."""
    names = list(stats)
    fig = _figure(figsize=(8, 3.5))
    ax = fig.add_subplot()
    ax.plot(names, [max(st.std, 1e-12) for st in stats.values()], "o-", label="std")
    ax.plot(names, [max(st.max_abs, 1e-12) for st in stats.values()], "s--", label="max |x|")
    ax.axhline(65504, color="tab:red", linewidth=0.8, label="fp16 max")
    ax.set_yscale("log")
    ax.set(xlabel="block", ylabel="output", title="activations: block outputs through depth")
    ax.tick_params(axis="x", labelrotation=45, labelsize=7)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def attention_plot(maps: list, tokens: list[str], path: Path) -> str:
    """One heatmap per attention layer (averaged over heads): rows attend (queries) to columns (keys)."""
    n = len(maps)
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig = _figure(figsize=(3.2 * cols, 3.2 * rows + 0.4))
    for i, weights in enumerate(maps):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(weights.numpy(), cmap="viridis", vmin=0.0, vmax=max(float(weights.max()), 1e-6))
        ax.set_title(f"layer {i}", fontsize=9)
        ax.set(xticks=[], yticks=[])
        if len(tokens) == weights.shape[-1] and len(tokens) <= 40:  # tokens on the outer edges only: text is slow
            if i % cols == 0:
                ax.set_yticks(range(len(tokens)), tokens, fontsize=5)
            if i >= n - cols:
                ax.set_xticks(range(len(tokens)), tokens, fontsize=5, rotation=90)
    fig.suptitle("attention: each row is a query position, each column the key it attends to", fontsize=9)
    return _save(fig, path)
