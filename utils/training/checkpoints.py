"""The run folder: where checkpoints, the saved config and the tokenizer live, and when to resume.

Layout of output_dir:
    config.json               the WizardConfig of the run (asdict), written before training
    tokenizer/                the tokenizer, so a checkpoint can be decoded without the data
    checkpoints/last.ckpt     Lightning checkpoint to resume from (model, optimizer, LR schedule, scaler)
    checkpoints/epoch*.ckpt   the best save_top_k checkpoints by validation loss
    logs/version_N/           metrics.csv of each run
    export/                   safetensors weights + config + tokenizer (see utils.export)
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Optional

from utils.config import CONFIG_FILENAME, ConfigError, WizardConfig

# Fields that shape the model or the data: a checkpoint only resumes under the same values.
RESUME_FIELDS = (
    "task", "dataset_source", "dataset_name", "dataset_config", "dataset_path", "text_column", "label_column",
    "val_split", "tokenizer_strategy", "tokenizer_path", "vocab_size", "model_source", "model_template",
    "model_size", "model_path", "gist_id", "max_seq_len", "dropout", "seed",
)


class IncompatibleCheckpointError(RuntimeError):
    """output_dir holds a checkpoint of a run this config cannot continue."""


def checkpoint_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def last_checkpoint(output_dir: str | Path) -> Optional[Path]:
    path = checkpoint_dir(output_dir) / "last.ckpt"
    return path if path.exists() else None


def plan_resume(config: WizardConfig) -> Optional[Path]:
    """The checkpoint this run continues from, or None to start fresh; refuses a mismatched one.

    With resume=False an existing run is moved aside (never deleted or overwritten).
    """
    out = Path(config.output_dir)
    last = last_checkpoint(out)
    if last is None:
        return None
    if not config.resume:
        archive = out / f"checkpoints-{time.strftime('%Y%m%d-%H%M%S')}"
        shutil.move(str(checkpoint_dir(out)), archive)
        for name in (CONFIG_FILENAME, "tokenizer"):  # keep the checkpoints with the config they were trained with
            if (out / name).exists():
                shutil.move(str(out / name), archive / name)
        print(f"resume=False: moved the previous checkpoints, config and tokenizer to {archive}; starting fresh.")
        return None
    saved_path = out / CONFIG_FILENAME
    try:
        saved = WizardConfig.load(saved_path)
    except (FileNotFoundError, ConfigError) as e:
        raise IncompatibleCheckpointError(
            f"{out} holds {last.name} but its {CONFIG_FILENAME} cannot be read ({e}). "
            "Choose a new output_dir, or set resume=False to move the old checkpoints aside.") from None
    changed = [f"{name}: {getattr(saved, name)!r} (checkpoint) vs {getattr(config, name)!r} (now)"
               for name in RESUME_FIELDS if getattr(saved, name) != getattr(config, name)]
    if changed:
        raise IncompatibleCheckpointError(
            f"{out} holds a checkpoint of a different run ({'; '.join(changed)}). It was not loaded. "
            "Choose a new output_dir, or set resume=False to move the old checkpoints aside and start fresh.")
    return last
