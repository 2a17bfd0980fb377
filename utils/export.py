"""Export a trained model as one self-contained folder, and load it back anywhere.

folder/
    model.safetensors   the weights (safetensors: no pickle, safe to load from anywhere)
    config.json         the WizardConfig the model was trained with
    tokenizer/          the tokenizer
    labels.json         classification: {"label_names": [...], "pad_id": N}
    user_model/         your own model (model_source file or gist): model.py and its config.json
    .kit-export.json    the marker saying the kit wrote this folder (and which kit version)
A fine-tuned pretrained model (model_source "pretrained") is exported as transformers' save_pretrained
writes it: config.json is then the model's own, model.safetensors and the tokenizer's files sit beside
it, and the WizardConfig is kit_config.json (see utils.models.pretrained), so from_pretrained(folder) reads it too.
The folder needs nothing else from the training run: load_exported() rebuilds the model from the
config, the tokenizer's vocabulary (and the labels, and user_model/model.py), then loads the weights.
No torch pickle file is written or read here. An export replaces only a folder holding the marker
(an earlier export); any other non-empty folder is refused, since replacing it would delete its files.

    folder = export_result(result)                    # result = train(config), or utils.loading.load_run(...)
    exported = load_exported("runs/default/export")
    exported.generate("def ", seed=0)                 # task "lm"
    exported.predict(["great film", "dull"])           # task "classification": label names
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from safetensors.torch import load_model, save_model
from torch import nn

from utils.models.adapters import (MERGED_ADAPTER_DIRNAME, is_adapter_folder, load_adapter_export, save_adapter,
                                   stored_dtype_on, uses_adapters)
from utils.config import CONFIG_FILENAME, WizardConfig
from utils.data import load_tokenizer
from utils.errors import KitError, MissingFileError
from utils.files import atomic_folder
from utils.hub import find_token, finish_export
from utils.inference import Predictor
from utils.models.build import build_model
from utils.data.tokenizers import load_model_tokenizer
from utils.models.pretrained import KIT_CONFIG_FILENAME, load_pretrained_model, save_for_transformers
from utils.models.user_models import USER_MODEL_DIRNAME, copy_model_files, model_files_in
from utils.run_folder.checkpoints import read_labels, write_labels

WEIGHTS_FILENAME = "model.safetensors"
MARKER_FILENAME = ".kit-export.json"  # written last: only a folder holding it is replaced by a new export


class ExportError(KitError, ValueError):
    """An export that cannot be written as asked; the message says why and what to do instead."""


@dataclass
class ExportedModel(Predictor):
    """A model loaded from an export folder: generate() / predict() / predict_proba() from utils.inference."""

    model: nn.Module
    tokenizer: Any
    config: WizardConfig
    label_names: list[str] = field(default_factory=list)  # classification: index = class id
    pad_id: int = 0  # classification: the id that pads sequences


def export_model(model: nn.Module, config: WizardConfig, tokenizer, folder: Optional[str | Path] = None,
                 label_names: Optional[list[str]] = None, pad_id: int = 0, merged: bool = False) -> Path:
    """Write weights, config, tokenizer (and labels, and the user's model code) to folder.

    folder defaults to output_dir/export. A user model's code is copied from output_dir/user_model,
    where training kept it. Written to a temporary sibling first: an export that fails half-way
    leaves the previous one intact. A LoRA/QLoRA model is written as its adapter in peft's format, or
    with merged=True as the base with the adapter merged in, in the dtype the base is stored in (utils.models.merge),
    which transformers loads alone (the adapter then sits in adapter/).
    """
    if config.task == "classification" and not label_names:
        raise ExportError("exporting a classifier needs its label_names (result.label_names), "
                          "or predictions could not be named")
    folder = Path(folder) if folder is not None else Path(config.output_dir) / "export"
    _refuse_foreign_folder(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with atomic_folder(folder, replace=True) as tmp:  # a failed or killed export leaves the previous one intact
        if uses_adapters(config):
            _save_adapter_model(model, config, tokenizer, tmp, merged)
        elif merged:
            raise ExportError(f"merged=True (--merged) merges LoRA adapters into their base, but this model was "
                              f"trained with finetune_method={config.finetune_method!r}: export it without it")
        elif config.model_source == "pretrained":
            save_for_transformers(model, tokenizer, tmp)
            config.save(tmp / KIT_CONFIG_FILENAME)
        else:
            save_model(model, str(tmp / WEIGHTS_FILENAME))
            config.save(tmp / CONFIG_FILENAME)
        tokenizer.save(tmp / "tokenizer")
        if config.task == "classification":
            write_labels(tmp, label_names, pad_id)
        if config.model_source in ("file", "gist"):
            trained = model_files_in(Path(config.output_dir) / USER_MODEL_DIRNAME)
            copy_model_files(trained, tmp / USER_MODEL_DIRNAME, {"model_source": config.model_source,
                                                                 "trained_from": trained.source})
        marker = {"written_by": "colab-transformer-kit", "kit_version": kit_version()}
        (tmp / MARKER_FILENAME).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        _give_default_mode(tmp)
    return folder


def export_result(result, folder: Optional[str | Path] = None, push_to_hub: Optional[str] = None,
                  public: bool = False, onnx: bool = False, merged: bool = False) -> Path:
    """Export what a run trained: train()'s TrainingResult, or a run folder loaded by utils.loading.load_run.
    Writes weights (safetensors), config, tokenizer, class names and user model code to folder (default:
    output_dir/export); load_exported reads it back anywhere. In a multi-device run only global rank zero writes;
    the other processes return the folder it writes. onnx: also model.onnx, checked with onnxruntime; push_to_hub:
    upload the folder to that Hugging Face repository (private unless public) with a model card (utils.hub).
    A LoRA/QLoRA run exports its adapter (peft's format), or with merged=True the base with it merged in, in 16 bits.
    """
    if getattr(result, "model_passed_in", False):
        raise ExportError(
            f"This {type(result.model).__name__} was passed to train(model=...), so an export folder could not "
            "rebuild it. Put its code in a model.py with build_model(config) or a Model class and train with "
            "model_source='file' (the export then carries the code), or save result.model.state_dict() yourself.")
    folder = Path(folder) if folder is not None else Path(result.output_dir) / "export"
    if not getattr(result, "is_global_zero", True):
        return folder
    token = find_token() if push_to_hub else None  # before writing: a missing token costs no export
    written = export_model(result.model, result.config, result.tokenizer, folder, result.label_names,
                           result.pad_id, merged)
    return finish_export(result, written, result.output_dir, push_to_hub, public, onnx, token)


def _save_adapter_model(model, config, tokenizer, folder: Path, merged: bool) -> None:
    from utils.models.merge import save_merged

    config.save(folder / KIT_CONFIG_FILENAME)
    tokenizer = _with_transformers_tokenizer(tokenizer, config)
    if not merged:
        save_adapter(model, folder)
        tokenizer.hf.save_pretrained(folder)
        return
    report = save_merged(model, config.pretrained_model, folder)  # shard by shard: no second copy of the base
    tokenizer.hf.save_pretrained(folder)
    save_adapter(model, folder / MERGED_ADAPTER_DIRNAME)
    print(report.describe())


def _with_transformers_tokenizer(tokenizer, config: WizardConfig):
    """A tokenizer transformers can save (with its chat template): the trained run's own, or for a run loaded
    from its folder, the pretrained model's again."""
    if getattr(tokenizer, "hf", None) is not None:
        return tokenizer
    return load_model_tokenizer(config.pretrained_model, classify=config.task == "classification")


def _give_default_mode(folder: Path) -> None:
    """Every file as a plain write would make it (0644 under the usual umask): safetensors writes its weights
    0600, and a copied or shared export would then hold one file only its owner can read."""
    umask = os.umask(0)
    os.umask(umask)
    for path in folder.rglob("*"):
        if path.is_file():
            path.chmod(0o666 & ~umask)


def _refuse_foreign_folder(folder: Path) -> None:
    """An export replaces an earlier export of the kit (it holds the marker), never any other folder or a file."""
    if folder.exists() and not folder.is_dir():
        raise ExportError(f"{folder} is a file, not a folder: exporting there would replace it. Choose a new or empty "
                          "folder, e.g. output_dir/export.")
    if not folder.is_dir() or (folder / MARKER_FILENAME).is_file():
        return
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    if entries:
        shown = ", ".join(entries[:8]) + (f" and {len(entries) - 8} more" if len(entries) > 8 else "")
        raise ExportError(f"{folder} is not empty and was not written by an export of this kit (no "
                          f"{MARKER_FILENAME}): exporting there would delete {shown}. Choose a new or empty folder, "
                          "e.g. output_dir/export.")


def kit_version() -> str:
    """The installed kit's version (pyproject.toml), or "unknown" when it runs from a plain checkout."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("colab-transformer-kit")
    except PackageNotFoundError:
        return "unknown"


def load_exported(folder: str | Path, device: Optional[str] = None) -> ExportedModel:
    """Rebuild the model from an export folder and load its weights onto device (default: the GPU when there is
    one, else the CPU). A fine-tuned pretrained model keeps the dtype it was saved in (a merged export of a bf16
    model computes in bf16, on the CPU too: PyTorch runs 16-bit layers there at half the memory of fp32, which is
    what decides whether a 7B model loads at all; a CPU without bf16 instructions runs them 1.5-2x slower)."""
    folder = Path(folder)
    device = device or best_device()
    if (folder / KIT_CONFIG_FILENAME).is_file():
        return _load_pretrained_export(folder, device)
    weights = folder / WEIGHTS_FILENAME
    if not weights.exists():
        raise MissingFileError(f"No {WEIGHTS_FILENAME} in {folder}: is this an export folder (output_dir/export)?")
    config = WizardConfig.load(folder / CONFIG_FILENAME)
    tokenizer = load_tokenizer(folder / "tokenizer")
    labels = read_labels(folder) if config.task == "classification" else {"label_names": [], "pad_id": 0}
    user_files = model_files_in(folder / USER_MODEL_DIRNAME) if config.model_source in ("file", "gist") else None
    model = build_model(config, tokenizer.vocab_size, len(labels["label_names"]), labels["pad_id"],
                        user_files=user_files)
    load_model(model, str(weights), device=device)
    return ExportedModel(model.to(device).eval(), tokenizer, config, labels["label_names"], labels["pad_id"])


def best_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _load_pretrained_export(folder: Path, device: str) -> ExportedModel:
    """A fine-tuned pretrained model's export: the model as transformers saved it, the kit's config and tokenizer."""
    config = WizardConfig.load(folder / KIT_CONFIG_FILENAME)
    # transformers' tokenizer files beside the model: the same vocabulary as tokenizer/, with the chat template
    tokenizer = load_model_tokenizer(str(folder), classify=config.task == "classification")
    labels = read_labels(folder) if config.task == "classification" else {"label_names": [], "pad_id": 0}
    pad_id = labels["pad_id"] if config.task == "classification" else None  # the saved model config has its own
    if is_adapter_folder(folder):  # the adapter alone: onto the base it was trained on
        model = load_adapter_export(folder, config, labels["label_names"], pad_id, device)
    else:
        model = load_pretrained_model(str(folder), config.task, labels["label_names"], pad_id,
                                      **stored_dtype_on(device))
    return ExportedModel(model.eval(), tokenizer, config, labels["label_names"], labels["pad_id"])
