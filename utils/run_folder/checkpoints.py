"""The run folder: where checkpoints, the saved config and the tokenizer live, and when to resume.

Layout of output_dir:
    config.json               the WizardConfig of the run (asdict), written before training
    tokenizer/                the tokenizer, so a checkpoint can be decoded without the data
    labels.json               classification: the class names and pad id (as in an export)
    checkpoints/last.ckpt     the latest state (model, optimizer, LR schedule, scaler, data position, RNG)
    checkpoints/epoch*.ckpt   the best save_top_k checkpoints by validation loss
    checkpoints/damaged/      checkpoints that no longer load (torn by a kill), kept for inspection
    logs/version_N/           metrics.csv of each stretch of training (a resume starts a new one)
    user_model/               a copy of your model code (model_source file or gist)
    export/                   safetensors weights + config + tokenizer (see utils.export)
    archive/YYYYmmdd-HHMMSS/  earlier runs moved aside by resume=False or a changed config
    .run.lock                 held by the run training here (see utils.run_folder.lock)

Whether a run can resume is decided before anything in output_dir is written: first from the saved
config (plan_resume), then, once data and model are built, from the tokenizer and the tensor shapes
(resume_problems).
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from utils.config import CONFIG_FILENAME, SETTINGS, ConfigError, WizardConfig, shown_value
from utils.errors import KitError, MissingFileError
from utils.files import atomic_write_text

LAST_NAME = "last.ckpt"
LABELS_FILENAME = "labels.json"  # classification: class names and pad id, in a run folder and in an export
LOGS_DIRNAME = "logs"
TOKENIZER_DIRNAME = "tokenizer"
ARCHIVE_DIRNAME = "archive"
WANDB_ID_FILENAME = "wandb_run_id.txt"  # the W&B run every rerun of this folder continues (utils.wandb_helpers)
DAMAGED_DIRNAME = "damaged"
RUN_ENTRIES = (CONFIG_FILENAME, TOKENIZER_DIRNAME, LABELS_FILENAME, "checkpoints", LOGS_DIRNAME, "user_model",
               "export", WANDB_ID_FILENAME)  # one run's files

# Fields that shape the model or the data: a checkpoint only resumes under the same values (of the fields
# its choices use: a pretrained run reads no tokenizer setting, see Setting.when in utils/config.py).
RESUME_FIELDS = (
    "task", "dataset_source", "dataset_name", "dataset_config", "dataset_path", "text_column", "label_column",
    "val_split", "tokenizer_strategy", "tokenizer_path", "vocab_size", "model_source", "model_template",
    "model_size", "model_path", "gist_id", "pretrained_model", "max_seq_len", "dropout", "seed",
    "finetune_method", "lora_rank", "lora_alpha", "lora_dropout", "lora_target",
)
# Fields the optimizer and its schedule read: changed between runs, they take effect from the resume point (the
# module sets them on the restored optimizer; the schedule and clipping are built from the config anew).
OPTIMIZER_FIELDS = ("learning_rate", "weight_decay", "warmup_ratio", "gradient_clip_val")
ON_CHANGE = ("refuse", "start_new")  # what a changed run does: the command line refuses, the notebook starts anew


class IncompatibleCheckpointError(KitError, RuntimeError):
    """output_dir holds a checkpoint of a run this config cannot continue."""


@dataclass
class ResumePoint:
    path: Path  # the checkpoint to continue from
    state: dict  # its contents, memory-mapped (for the shape check before training)

    @property
    def global_step(self) -> int:
        return int(self.state.get("global_step", 0))


def checkpoint_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def last_checkpoint(output_dir: str | Path) -> Optional[Path]:
    path = checkpoint_dir(output_dir) / LAST_NAME
    return path if path.exists() else None


def best_checkpoint(output_dir: str | Path) -> Optional[Path]:
    """The checkpoint with the lowest validation loss in its name (the builder's ModelCheckpoint filename,
    `...-val1.2345.ckpt`), the later step on a tie; None when none was saved."""
    scored = []
    for path in checkpoint_dir(output_dir).glob("*.ckpt"):
        match = re.search(r"-val(\d+\.\d+)", path.stem)
        if match:
            scored.append((float(match.group(1)), -_step_in_name(path), path))
    return min(scored)[2] if scored else None


ARCHIVE = "{archive}"  # in a move note: where the old run went, filled in by move_run_aside


def plan_resume(config: WizardConfig, on_change: str = "refuse") -> tuple[Optional[ResumePoint], Optional[str]]:
    """The checkpoint this run continues from (None: start fresh), and the note for moving the run in output_dir
    to archive/ (None: nothing to move).

    A run this config cannot continue is refused (on_change="refuse") or to be moved to archive/ so a new one
    starts (on_change="start_new"); with resume=False it is to be moved aside. Nothing is moved here: the
    caller moves it with move_run_aside once the new run's data and model are built, so a missing data file
    leaves the old run where it was. Nothing is deleted.
    """
    out = Path(config.output_dir)
    if not config.resume:
        return None, (f"resume=False: moved the previous run to {ARCHIVE}; starting fresh." if _run_entries(out)
                      else None)
    point = find_resume_point(out)
    if point is None:
        if _run_entries(out):  # a run killed before its first checkpoint: keep its files anyway
            return None, f"{out} holds files of a run without a checkpoint; moved them to {ARCHIVE}."
        return None, None
    changes = config_changes(out, config, wizard_words=on_change == "start_new")  # start_new: the notebook
    if changes:
        return None, changed_run_note(out, changes, on_change)
    return point, None


def move_run_aside(out: Path, note: str) -> Path:
    """Move the run in out to archive/ and print the note saying where (see plan_resume)."""
    target = archive_run(out)
    print(note.replace(ARCHIVE, str(target)))
    return target


def describe_run_folder(config: WizardConfig) -> str:
    """What training with this config will do in its output_dir, in one sentence (the wizard's review).

    Read from the folder without loading a checkpoint; training decides finally (a damaged
    checkpoint or a changed data file is only found when it starts).
    """
    out = Path(config.output_dir)
    saved = [p for p in checkpoint_dir(out).glob("*.ckpt")]
    if not saved:
        return f"Starts a new run in {out}."
    if not config.resume:
        return f"Starts a new run in {out}; the run there now is moved, untouched, to {out / ARCHIVE_DIRNAME}/ (resume is off)."
    changes = config_changes(out, config, wizard_words=True)
    if changes:
        return (f"Starts a new run in {out}: these settings differ from the run there ({'; '.join(changes)}), "
                f"which is moved, untouched, to {out / ARCHIVE_DIRNAME}/.")
    newest = max(saved, key=lambda p: p.stat().st_mtime)
    age = _age(time.time() - newest.stat().st_mtime)
    return f"Continues the run in {out} from its last checkpoint (saved {age} ago)."


def _age(seconds: float) -> str:
    minutes = seconds / 60
    return f"{seconds:.0f} s" if seconds < 90 else f"{minutes:.0f} min" if minutes < 90 else f"{minutes / 60:.1f} h"


def config_changes(out: Path, config: WizardConfig, wizard_words: bool = False) -> list[str]:
    """How config differs from the run saved in out, in the fields a checkpoint depends on.

    wizard_words: name each field and value as the wizard shows them ("Tokenizer: Characters (the old run) vs
    BPE (now)") for the notebook; otherwise as config names and values, for the command line.
    """
    try:
        saved = WizardConfig.load(out / CONFIG_FILENAME)
    except (FileNotFoundError, ConfigError) as e:
        return [f"its {CONFIG_FILENAME} cannot be read ({' '.join(str(e).split())})"]
    saved, config = saved.relevant(), config.relevant()  # a field the choices do not use is not saved either
    names = [name for name in RESUME_FIELDS if getattr(saved, name) != getattr(config, name)]
    if wizard_words:
        return [f"{SETTINGS[name].label}: {shown_value(name, getattr(saved, name))} (the old run) vs "
                f"{shown_value(name, getattr(config, name))} (now)" for name in names]
    return [f"{name}: {getattr(saved, name)!r} (checkpoint) vs {getattr(config, name)!r} (now)" for name in names]


def optimizer_changes(out: Path, config: WizardConfig, step: int) -> list[str]:
    """One line per optimizer setting this config changes against the run saved in out, e.g.
    "learning_rate 0.001 -> 1e-05 from step 78 on"."""
    saved = WizardConfig.load(out / CONFIG_FILENAME)
    return [f"{name} {getattr(saved, name)!r} -> {getattr(config, name)!r} from step {step} on"
            for name in OPTIMIZER_FIELDS if getattr(saved, name) != getattr(config, name)]


def handle_changed_run(out: Path, changes: list[str], on_change: str) -> None:
    """Refuse to touch a run this config cannot continue, or move it aside so a new one can start."""
    move_run_aside(out, changed_run_note(out, changes, on_change))


def changed_run_note(out: Path, changes: list[str], on_change: str) -> str:
    """The note for moving a run this config cannot continue aside (on_change="start_new"); "refuse" raises."""
    what = "; ".join(changes)
    if on_change == "start_new":
        return (f"The settings differ from the run in {out} ({what}): starting a new run. "
                f"The old run was moved, untouched, to {ARCHIVE}.")
    raise IncompatibleCheckpointError(
        f"{out} holds a checkpoint of a different run ({what}). It was not loaded and nothing in {out} was changed. "
        f"To keep it and start anew there, run again with --set resume=false (resume=False in Python), which moves "
        f"the old run to {out / ARCHIVE_DIRNAME}/; or choose another output_dir.")


def find_resume_point(out: Path) -> Optional[ResumePoint]:
    """last.ckpt, or the newest checkpoint that loads; one that does not is moved to checkpoints/damaged/."""
    folder = checkpoint_dir(out)
    candidates = sorted(folder.glob("*.ckpt"), key=lambda p: (p.name == LAST_NAME, _step_in_name(p)), reverse=True)
    damaged = False
    for path in candidates:
        try:
            state = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
        except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as e:
            damaged = True
            moved = _move_into(path, folder / DAMAGED_DIRNAME)
            print(f"{path.name} cannot be loaded ({_first_line(e)}); moved it to {moved}.")
            continue
        if damaged:
            print(f"Resuming from {path.name} (step {state.get('global_step', '?')}), the newest checkpoint that loads.")
        return ResumePoint(path, state)
    if damaged:
        print(f"No checkpoint in {folder} loads: starting fresh.")
    return None


def resume_problems(point: ResumePoint, module: torch.nn.Module, tokenizer_changed: Optional[str]) -> list[str]:
    """Why this model (and tokenizer) cannot continue from point, checked before anything is written."""
    problems = [tokenizer_changed] if tokenizer_changed else []
    saved = {k: tuple(v.shape) for k, v in point.state.get("state_dict", {}).items()}
    now = {k: tuple(v.shape) for k, v in module.checkpoint_state_dict().items()}
    differ = sorted(k for k in saved.keys() | now.keys() if saved.get(k) != now.get(k))
    if differ:
        k = differ[0]
        problems.append(f"the model's tensors differ from the checkpoint's in {len(differ)} places, e.g. {k}: "
                        f"{saved.get(k, 'missing')} (checkpoint) vs {now.get(k, 'missing')} (now)")
    return problems


def remove_checkpoints_after(out: Path, point: ResumePoint) -> list[Path]:
    """Best-by-validation files an interrupted stretch saved after the resume point: the resumed run trains
    those steps again and would otherwise leave them behind. They are removed only while a best saved up to
    the resume point is still there; otherwise (save_top_k=1 deleted it when the later one was saved) they are
    the run's only best and are kept until the resumed run saves a better one. Returns the files kept."""
    later = [path for path in checkpoint_dir(out).glob("*.ckpt")
             if path != point.path and path.name != LAST_NAME and _step_in_name(path) > point.global_step]
    earlier_best = [path for path in checkpoint_dir(out).glob("*.ckpt")
                    if path.name != LAST_NAME and 0 <= _step_in_name(path) <= point.global_step]
    if not earlier_best:
        for path in later:
            print(f"Kept {path.name}, saved after step {point.global_step} where this run resumes: it is the run's "
                  "best checkpoint until the resumed run saves a better one.")
        return later
    for path in later:
        path.unlink()
        print(f"Removed {path.name}: saved after step {point.global_step}, where this run resumes.")
    return []


def remove_kept_checkpoints(kept: list[Path], best_now: Optional[str]) -> None:
    """Once the resumed run has a best checkpoint of its own on disk, the ones kept at the resume go."""
    if not best_now or not Path(best_now).exists():
        return
    for path in kept:
        if path.exists() and path != Path(best_now):
            path.unlink()


def archive_run(out: Path) -> Path:
    """Move one run's files (config, tokenizer, checkpoints, logs, model copy, export) to archive/<time>/."""
    target = out / ARCHIVE_DIRNAME / time.strftime("%Y%m%d-%H%M%S")
    while target.exists():
        target = target.with_name(target.name + "-1")
    target.mkdir(parents=True)
    for path in _run_entries(out):
        shutil.move(str(path), target / path.name)  # a rename: same filesystem
    return target


def _run_entries(out: Path) -> list[Path]:
    return [out / name for name in RUN_ENTRIES if (out / name).exists()]


def _move_into(path: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{path.stem}-{time.strftime('%Y%m%d-%H%M%S')}{path.suffix}"
    path.rename(target)
    return target


def _step_in_name(path: Path) -> int:
    match = re.search(r"step(\d+)", path.name)
    return int(match.group(1)) if match else -1


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def write_labels(folder: Path, label_names: list[str], pad_id: int) -> None:
    """A classifier's class names and pad id, in an export (utils.export) and in the run folder (utils.loading reads
    them there)."""
    labels = {"label_names": list(label_names), "pad_id": pad_id}
    atomic_write_text(Path(folder) / LABELS_FILENAME, json.dumps(labels, indent=2) + "\n")


def read_labels(folder: Path, fix: str = "a classifier's export names its classes there") -> dict:
    path = Path(folder) / LABELS_FILENAME
    try:
        labels = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MissingFileError(f"No {LABELS_FILENAME} in {folder}: {fix}") from None
    return {"label_names": list(labels["label_names"]), "pad_id": int(labels.get("pad_id", 0))}
