"""Compare runs: every run folder under a parent folder (archive/ included), described from its own files.

    python -m utils.training runs runs/            # one line per run, then the settings in which they differ
    python -m utils.training runs runs/ --plot     # also runs/runs.png: their validation curves overlaid

Everything is read from the run folders: config.json (the settings), checkpoints/last.ckpt (steps done
and planned, time trained, precision, parameters: the RunRecorder keeps them in the checkpoint),
logs/ (the validation curve, utils.run_folder.history) and .run.lock (a live run holds it). There is no
second record that could disagree with them.
"""

from __future__ import annotations

import json
import math
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from utils.config import CONFIG_FILENAME
from utils.errors import MissingFileError
from utils.formatting import format_duration

SKIPPED_DIRS = {"export", "tokenizer", "user_model", "checkpoints", "logs", "data_cache", "evaluation"}
IGNORED_SETTINGS = {"output_dir"}  # differs by construction
MAX_DEPTH = 4  # parent/name/archive/stamp: deep enough for archived runs of runs in subfolders


@dataclass
class RunInfo:
    folder: Path
    name: str  # relative to the parent folder
    config: dict
    steps: int = 0  # optimizer steps done (the newest of last.ckpt and the logs)
    planned: Optional[int] = None  # steps the run was set to take
    params: Optional[int] = None  # in the checkpoint's model: a LoRA/QLoRA checkpoint holds the adapters only
    train_seconds: Optional[float] = None  # training time up to last.ckpt, resumed stretches included
    precision: str = ""
    state: str = ""  # running now, finished, stopped, no checkpoint
    val_curve: list = field(default_factory=list)  # (step, val/loss)
    val_accuracy: list = field(default_factory=list)  # (step, val/accuracy), classifiers
    early_stopped: bool = False

    @property
    def best_val(self) -> Optional[tuple[int, float]]:
        return min(self.val_curve, key=lambda sv: (sv[1], -sv[0])) if self.val_curve else None

    def best_text(self) -> str:
        best = self.best_val
        if best is None:
            return "-"
        step, loss = best
        if self.config.get("task") == "classification":
            acc = dict(self.val_accuracy).get(step)
            return f"loss {loss:.4f}" + (f", acc {acc:.3f}" if acc is not None else "") + f" @{step}"
        return f"loss {loss:.4f}, ppl {math.exp(loss):.2f} @{step}"


@dataclass
class RunTable:
    parent: Path
    runs: list[RunInfo]

    def differing_settings(self) -> dict[str, list]:
        """Each setting whose value is not the same in every run, with the runs' values in order."""
        keys = sorted({k for r in self.runs for k in r.config} - IGNORED_SETTINGS)
        values = {k: [r.config.get(k) for r in self.runs] for k in keys}
        return {k: v for k, v in values.items() if len({json.dumps(x, sort_keys=True) for x in v}) > 1}

    def describe(self) -> str:
        if not self.runs:
            return (f"No run folders under {self.parent} (a run folder holds {CONFIG_FILENAME} and checkpoints/ "
                    "or logs/).")
        header = ("#", "run", "task", "model", "params", "data", "steps", "best validation", "time", "precision",
                  "state")
        rows = [(str(i), r.name, r.config.get("task", "?"), model_text(r.config), params_text(r),
                 data_text(r.config), f"{r.steps}/{r.planned if r.planned is not None else '?'}", r.best_text(),
                 _duration(r.train_seconds), r.precision or "?", r.state) for i, r in enumerate(self.runs, 1)]
        count = f"{len(self.runs)} run{'s' if len(self.runs) != 1 else ''}"
        lines = [f"{count} under {self.parent}", *_table(header, rows)]
        differ = self.differing_settings()
        if len(self.runs) > 1:
            lines.append("")
            if not differ:
                lines.append("They were run with the same settings.")
            else:
                lines.append("Settings in which they differ (by run #):")
                lines += _table(("setting", *(str(i) for i in range(1, len(self.runs) + 1))),
                                [(k, *(_value(v) for v in vs)) for k, vs in differ.items()])
        return "\n".join(lines)


def list_runs(parent: str | Path) -> RunTable:
    """Every run folder at or under parent, sorted by name (an archived run after the run it was archived from)."""
    parent = Path(parent).expanduser()
    if not parent.is_dir():
        raise MissingFileError(f"No folder at {parent}: give the folder that holds your run folders")
    folders = sorted(_run_folders(parent, 0), key=lambda p: p.relative_to(parent).parts)
    return RunTable(parent, [describe_run(folder, parent) for folder in folders])


def _run_folders(folder: Path, depth: int):
    if is_run_folder(folder):
        yield folder
    if depth >= MAX_DEPTH:
        return
    for child in sorted(p for p in folder.iterdir() if p.is_dir() and p.name not in SKIPPED_DIRS):
        yield from _run_folders(child, depth + 1)


def is_run_folder(folder: Path) -> bool:
    """A folder training wrote: config.json beside checkpoints/ or logs/ (an export has neither)."""
    return (folder / CONFIG_FILENAME).is_file() and ((folder / "checkpoints").is_dir() or (folder / "logs").is_dir())


def describe_run(folder: Path, parent: Path) -> RunInfo:
    from utils.run_folder.checkpoints import LOGS_DIRNAME, last_checkpoint
    from utils.run_folder.history import read_history
    from utils.run_folder.lock import live_holder

    name = str(folder.relative_to(parent)) if folder != parent else folder.name
    info = RunInfo(folder, name, json.loads((folder / CONFIG_FILENAME).read_text(encoding="utf-8")))
    last = last_checkpoint(folder)
    readable = last is not None
    if last is not None:
        try:
            _read_checkpoint(info, last)
        except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError):  # torn by a kill, or mid-write
            readable = False
    history = read_history(folder / LOGS_DIRNAME)
    info.val_curve, info.val_accuracy = history.val, history.val_accuracy
    info.steps = max([info.steps] + [step for step, _ in history.train])  # a running run logs past its checkpoint
    if info.planned is None:
        info.planned = info.config.get("max_steps")
    info.state = _state(info, last is not None, live_holder(folder))
    if last is not None and not readable and not info.state.startswith("running"):
        info.state = "last.ckpt unreadable"
    return info


def _read_checkpoint(info: RunInfo, path: Path) -> None:
    import torch

    state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    info.steps = int(state.get("global_step", 0))
    callbacks = state.get("callbacks", {})
    recorder = callbacks.get("RunRecorder", {})
    info.planned = recorder.get("planned_steps")
    info.train_seconds = recorder.get("train_seconds")
    info.precision = recorder.get("precision", "")
    info.early_stopped = any(k.startswith("EarlyStopping") and v.get("stopped_epoch", 0) > 0
                             for k, v in callbacks.items())
    storages = {}  # tied weights share one storage: count it once
    for key, tensor in state.get("state_dict", {}).items():
        if key.startswith("model."):
            storages[(tensor.untyped_storage().data_ptr(), tensor.storage_offset())] = tensor.numel()
    info.params = sum(storages.values())


def _state(info: RunInfo, has_checkpoint: bool, holder: Optional[dict]) -> str:
    if holder is not None:
        return f"running now (pid {holder['pid']} on {holder['hostname']})"
    if not has_checkpoint:
        return "no checkpoint"
    if info.early_stopped:
        return "finished (early stop)"
    if info.planned is not None and info.steps >= info.planned:
        return "finished"
    return "stopped"


def model_text(config: dict) -> str:
    source = config.get("model_source")
    if source == "pretrained":
        return f"{pretrained_name(config.get('pretrained_model', ''))} ({config.get('finetune_method', 'full')})"
    if source == "file":
        return Path(config.get("model_path", "")).name or "model file"
    if source == "gist":
        return f"gist {config.get('gist_id', '')[:8]}"
    return f"{config.get('model_template', '?')} ({config.get('model_size', '?')})"


def pretrained_name(name: str) -> str:
    """A Hub name as it is ("owner/model"); a folder by its last two parts, as a converted model's last one is often
    a generic "hf" or "model"."""
    if not name:
        return "pretrained"
    if not name.startswith((".", "/", "~")) and name.rstrip("/").count("/") <= 1 and not Path(name).is_dir():
        return name
    return "/".join(Path(name).expanduser().parts[-2:])


def params_text(run: RunInfo) -> str:
    """The checkpoint's parameter count, labelled: an adapter run's checkpoint counts what it trains, others all."""
    if run.params is None:
        return "?"
    adapters = run.config.get("model_source") == "pretrained" and run.config.get("finetune_method") in ("lora",
                                                                                                        "qlora")
    return f"{count_text(run.params)} {'trainable' if adapters else 'total'}"


def data_text(config: dict) -> str:
    source = config.get("dataset_source")
    if source in ("file", "upload"):
        return Path(config.get("dataset_path", "")).name
    if source == "huggingface":
        return config.get("dataset_name", "") + (f"/{config['dataset_config']}" if config.get("dataset_config") else "")
    return config.get("dataset_name", "?")


def count_text(n: Optional[int]) -> str:
    if n is None:
        return "?"
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def _duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return "?"
    return format_duration(seconds)


def _value(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return (text or '""') if len(text) <= 40 else text[:37] + "..."


def _table(header: tuple, rows: list[tuple]) -> list[str]:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    line = lambda cells: "  ".join(f"{c:<{w}}" for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return [line(header), *(line(r) for r in rows)]


def plot_runs(table: RunTable, path: str | Path) -> Path:
    """The runs' validation losses against the optimizer step, overlaid in one PNG."""
    from matplotlib.figure import Figure  # no pyplot: the notebook's backend is left alone

    fig = Figure(figsize=(9, 4.5))
    ax = fig.subplots()
    for i, run in enumerate(table.runs, 1):
        if run.val_curve:
            steps, losses = zip(*run.val_curve)
            ax.plot(steps, losses, "o-", markersize=3, label=f"{i}: {run.name}")
    ax.set(xlabel="optimizer step", ylabel="validation loss",
           title=f"Validation loss of the runs in {table.parent.name}")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
