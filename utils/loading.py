"""Load a finished run folder for inference, without training again.

A run folder (a training run's output_dir) holds config.json, tokenizer/, checkpoints/ and, for a
classifier, labels.json. load_run() rebuilds the model from the config and loads the weights of
its best checkpoint (lowest validation loss) or its last one; the result is a Predictor, so it
answers generate() / predict() with the same code as a TrainingResult or an ExportedModel.

    run = load_run("runs/default")                # best checkpoint; checkpoint="last" for the latest
    run.generate("def ", max_new_tokens=100, seed=0)
    run.export()                                  # runs/default/export, as export_result(result) writes it
    model = load_predictor("runs/default/export")  # a run folder or an export folder

Nothing in the folder is written or moved by loading it.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from utils.config import CONFIG_FILENAME, WizardConfig
from utils.data import load_tokenizer
from utils.errors import KitError, MissingFileError
from utils.export import MARKER_FILENAME, WEIGHTS_FILENAME, best_device, export_result, load_exported
from utils.inference import Predictor
from utils.models.build import build_model
from utils.models.user_models import USER_MODEL_DIRNAME, model_files_in
from utils.run_folder.checkpoints import best_checkpoint, last_checkpoint, read_labels

CHECKPOINT_CHOICES = ("best", "last")
MODEL_PREFIX = "model."  # the LightningModule keeps the model as .model: its keys in a checkpoint start so


class RunFolderError(KitError, ValueError):
    """A folder that is not a finished run of the kit (no config, no checkpoint), or a checkpoint that does not load."""


@dataclass
class LoadedRun(Predictor):
    """A run folder's model at one checkpoint: generate() / predict() / predict_proba() from utils.inference."""

    model: nn.Module
    tokenizer: Any
    config: WizardConfig  # the run's config, output_dir set to where the folder is now
    label_names: list[str] = field(default_factory=list)  # classification: index = class id
    pad_id: int = 0  # classification: the id that pads sequences
    checkpoint: Optional[Path] = None  # the file the weights came from

    @property
    def output_dir(self) -> Path:
        return Path(self.config.output_dir)

    def export(self, folder: Optional[str | Path] = None, push_to_hub: Optional[str] = None, public: bool = False,
               onnx: bool = False, merged: bool = False) -> Path:
        """Write an export folder (default: the run's export/): utils.export.export_result(self, ...)."""
        return export_result(self, folder, push_to_hub, public, onnx, merged)


def load_run(run_dir: str | Path, checkpoint: str = "best", device: Optional[str] = None) -> LoadedRun:
    """The model of a run folder at its best checkpoint (the last when no best was saved) or its last one, on device
    (default: the GPU when there is one, else the CPU); a LoRA base in the dtype it is stored in."""
    if checkpoint not in CHECKPOINT_CHOICES:
        raise RunFolderError(f"checkpoint={checkpoint!r}; choose one of {', '.join(map(repr, CHECKPOINT_CHOICES))}")
    folder = _run_folder(run_dir)
    config = WizardConfig.load(folder / CONFIG_FILENAME).replace(output_dir=str(folder))
    path = _checkpoint_file(folder, checkpoint)
    tokenizer = load_tokenizer(_existing(folder / "tokenizer", "its tokenizer/ folder", folder))
    labels = {"label_names": [], "pad_id": 0}
    if config.task == "classification":
        labels = read_labels(folder, fix=f"the run folder keeps its class names there since this version; run "
                                         f"`python -m utils.training --config {folder / CONFIG_FILENAME}` once to "
                                         f"write it (it resumes and finds nothing left to train)")
    user_files = model_files_in(folder / USER_MODEL_DIRNAME) if config.model_source in ("file", "gist") else None
    device = device or best_device()
    model = build_model(config, tokenizer.vocab_size, len(labels["label_names"]), labels["pad_id"],
                        user_files=user_files, label_names=labels["label_names"], device=torch.device(device))
    _load_weights(model, path)
    return LoadedRun(model.to(device).eval(), tokenizer, config, labels["label_names"], labels["pad_id"], path)


def load_predictor(path: str | Path, checkpoint: str = "best", device: Optional[str] = None) -> Predictor:
    """An export folder (it holds the export marker or model.safetensors) or a run folder, loaded for inference."""
    folder = Path(path).expanduser()
    if (folder / MARKER_FILENAME).is_file() or (folder / WEIGHTS_FILENAME).is_file():
        return load_exported(folder, device=device)
    return load_run(folder, checkpoint, device)


def _run_folder(run_dir: str | Path) -> Path:
    folder = Path(run_dir).expanduser()
    if not folder.exists():
        raise MissingFileError(f"No folder at {folder}: give a run folder (the output_dir of a training run) "
                               "or an export folder")
    if not folder.is_dir():
        raise RunFolderError(f"{folder} is a file; give a run folder (the output_dir of a training run) "
                             "or an export folder")
    if not (folder / CONFIG_FILENAME).is_file():
        raise RunFolderError(f"{folder} is not a run folder of the kit (no {CONFIG_FILENAME}): give the output_dir "
                             "of a training run, or an export folder (output_dir/export)")
    return folder.resolve()


def _checkpoint_file(folder: Path, checkpoint: str) -> Path:
    path = (best_checkpoint(folder) if checkpoint == "best" else None) or last_checkpoint(folder)
    if path is None:
        raise RunFolderError(f"{folder} has no checkpoint in {folder / 'checkpoints'}: train it first, e.g. "
                             f"`python -m utils.training --config {folder / CONFIG_FILENAME}`")
    return path


def _existing(path: Path, what: str, folder: Path) -> Path:
    if not path.exists():
        raise RunFolderError(f"{folder} lacks {what} ({path}); it is written when training starts, so train "
                             f"with `python -m utils.training --config {folder / CONFIG_FILENAME}`")
    return path


def _load_weights(model: nn.Module, path: Path) -> None:
    """The model's tensors from a Lightning checkpoint; a file that does not load or fit is named with the fix."""
    try:
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as e:
        raise RunFolderError(f"{path} cannot be loaded ({type(e).__name__}: {str(e).strip().splitlines()[0]}); "
                             "try the last checkpoint (--checkpoint last on the command line, checkpoint='last' "
                             "in Python)") from None
    weights = {k[len(MODEL_PREFIX):]: v for k, v in state.get("state_dict", {}).items() if k.startswith(MODEL_PREFIX)}
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as e:  # a tensor of another shape
        missing, unexpected = [str(e).strip().splitlines()[-1].strip()], []
    # A LoRA checkpoint holds the adapters; the base is reloaded. remove_duplicate=False: a weight tied to another
    # (lm_head to embed_tokens in most chat models) is a state_dict key of its own but named_parameters() lists it once.
    frozen = {name for name, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad}
    missing = [k for k in missing if k not in frozen]
    if missing or unexpected:
        raise RunFolderError(f"{path} does not fit the model its {CONFIG_FILENAME} builds ({len(missing)} tensors "
                             f"missing, {len(unexpected)} unexpected, e.g. {(missing or unexpected)[0]}); was "
                             f"{CONFIG_FILENAME} changed after training?")
