"""Export a trained model as one self-contained folder, and load it back anywhere.

folder/
    model.safetensors   the weights (safetensors: no pickle, safe to load from anywhere)
    config.json         the WizardConfig the model was trained with
    tokenizer/          the tokenizer
The folder needs nothing else from the training run: load_exported() rebuilds the model from the
config and the tokenizer's vocabulary, then loads the weights.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from safetensors.torch import load_model, save_model
from torch import nn

from utils.config import CONFIG_FILENAME, WizardConfig
from utils.data import load_tokenizer

WEIGHTS_FILENAME = "model.safetensors"


@dataclass
class ExportedModel:
    model: nn.Module
    tokenizer: Any
    config: WizardConfig

    def generate(self, prompt: str = "\n", max_new_tokens: int = 200, temperature: float = 0.8,
                 top_k: Optional[int] = 40, seed: Optional[int] = None) -> str:
        from utils.training.coordinator import sample_text

        return sample_text(self.model, self.tokenizer, prompt, max_new_tokens, self.config.max_seq_len,
                           temperature, top_k, seed)


def export_model(model: nn.Module, config: WizardConfig, tokenizer, folder: Optional[str | Path] = None) -> Path:
    """Write weights, config and tokenizer to folder (default: output_dir/export).

    Written to a temporary sibling first: an export that fails half-way leaves the previous one intact.
    """
    folder = Path(folder) if folder is not None else Path(config.output_dir) / "export"
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
    try:
        save_model(model, str(tmp / WEIGHTS_FILENAME))
        config.save(tmp / CONFIG_FILENAME)
        tokenizer.save(tmp / "tokenizer")
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def load_exported(folder: str | Path, device: str = "cpu") -> ExportedModel:
    """Rebuild the model from an export folder and load its weights."""
    from utils.training.builder import build_model

    folder = Path(folder)
    weights = folder / WEIGHTS_FILENAME
    if not weights.exists():
        raise FileNotFoundError(f"No {WEIGHTS_FILENAME} in {folder}: is this an export folder (output_dir/export)?")
    config = WizardConfig.load(folder / CONFIG_FILENAME)
    tokenizer = load_tokenizer(folder / "tokenizer")
    model = build_model(config, tokenizer.vocab_size)
    load_model(model, str(weights), device=device)
    return ExportedModel(model.to(device).eval(), tokenizer, config)
