"""The whole run's metric history, read back from the CSV logs of each stretch of training.

Every call to train() logs to a new logs/version_N/metrics.csv (rows by global step, the RunRecorder
writes them before each checkpoint); each stretch that trains writes a `segment.json` there with
the step it started from. Steps an interrupted stretch logged after its
last checkpoint were trained again by the next one, so a later stretch's rows replace them.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

SEGMENT_FILENAME = "segment.json"  # {"start_step": N} in each logs/version_N/


@dataclass
class History:
    train: list = field(default_factory=list)  # (step, train/loss)
    val: list = field(default_factory=list)  # (step, val/loss)
    val_accuracy: list = field(default_factory=list)  # (step, val/accuracy), classification only
    val_perplexity: list = field(default_factory=list)  # (step, val/perplexity), language models
    val_macro_f1: list = field(default_factory=list)  # (step, val/macro_f1), classification only
    lr: list = field(default_factory=list)  # (step, learning rate)
    grad_norm: list = field(default_factory=list)  # (step, gradient norm before clipping), every log_every_n_steps
    tokens_per_sec: list = field(default_factory=list)  # (step, training tokens/s since the previous flush)
    gpu_peak_memory_gib: list = field(default_factory=list)  # (step, peak GPU memory so far), GPU runs only
    segment_starts: list = field(default_factory=list)  # the step each resumed stretch of training started from
    loss_scale: list = field(default_factory=list)  # (step, amp/loss_scale), fp16 with a GradScaler only


COLUMNS = {"train": "train/loss", "val": "val/loss", "val_accuracy": "val/accuracy",
           "val_perplexity": "val/perplexity", "val_macro_f1": "val/macro_f1", "lr": "lr", "grad_norm": "grad_norm",
           "tokens_per_sec": "tokens_per_sec", "gpu_peak_memory_gib": "gpu_peak_memory_gib",
           "loss_scale": "amp/loss_scale"}


def read_history(logs_dir: Path) -> History:
    series: dict[str, dict[int, float]] = {name: {} for name in COLUMNS}
    starts: list[int] = []
    for version in sorted(Path(logs_dir).glob("version_*"), key=_version_number):
        segment = _segment(version)
        if "start_step" in segment:  # absent: a call that trained nothing (or an older kit's log)
            start = int(segment["start_step"])
            starts = [s for s in starts if s < start] + [start]
            for values in series.values():  # what the earlier stretch logged past this one's start was redone
                for step in [s for s in values if s > start]:
                    del values[step]
        for row in _rows(version / "metrics.csv"):
            for name, column in COLUMNS.items():
                if row.get(column):
                    series[name][int(row["step"])] = float(row[column])
    return History(**{name: sorted(values.items()) for name, values in series.items()}, segment_starts=starts)


def write_segment_start(log_dir: str | Path, start_step: int) -> None:
    path = Path(log_dir) / SEGMENT_FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"start_step": start_step}) + "\n", encoding="utf-8")


def _segment(version: Path) -> dict:
    try:
        return json.loads((version / SEGMENT_FILENAME).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return {}



def _rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _version_number(path: Path) -> int:
    match = re.search(r"(\d+)$", path.name)
    return int(match.group(1)) if match else -1
