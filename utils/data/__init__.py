"""Datasets and tokenizers: turn the config's data choice into train/val datasets and a tokenizer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch.utils.data import Dataset

from utils.data.text import embedded_path, read_text_file, split_windows, to_token_tensor
from utils.data.tokenizers import build_tokenizer, load_tokenizer


@dataclass
class PreparedData:
    tokenizer: Any  # encode/decode/vocab_size/save, see utils.data.tokenizers
    train: Dataset
    val: Dataset
    num_tokens: int  # tokens in the whole corpus before the split
    source: str  # where the text came from, for the log
    label_names: list[str] = field(default_factory=list)  # classification: class names, index = label id
    pad_id: int = 0  # classification: id that pads sequences (masked out by attention_mask)

    @property
    def num_classes(self) -> int:
        return len(self.label_names)


def load_source_text(dataset_source: str, dataset_name: str, dataset_path: str) -> tuple[str, str]:
    """(text, description of where it came from) for the LM data choices."""
    if dataset_source == "embedded":
        path = embedded_path(dataset_name)
        return read_text_file(path), f"embedded corpus {dataset_name!r}"
    if dataset_source in ("file", "upload"):
        return read_text_file(dataset_path), str(dataset_path)
    raise NotImplementedError(f"dataset_source={dataset_source!r} is not available yet")


def prepare_data(config) -> PreparedData:
    """Build the tokenizer and the train/val datasets a WizardConfig asks for."""
    text, source = load_source_text(config.dataset_source, config.dataset_name, config.dataset_path)
    tokenizer = build_tokenizer(config.tokenizer_strategy, text)
    tokens = to_token_tensor(tokenizer.encode(text), tokenizer.vocab_size)
    split = split_windows(tokens, config.max_seq_len, config.val_split, config.seed)
    return PreparedData(tokenizer, split.train, split.val, split.num_tokens, source)


__all__ = ["PreparedData", "prepare_data", "load_tokenizer", "read_text_file"]
