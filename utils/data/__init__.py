"""Datasets and tokenizers: turn the config's data choice into train/val datasets and a tokenizer.

task "lm": items are (x, y), LongTensors of shape (T,) with y the next token of each x.
task "classification": items are (input_ids (T,) long, attention_mask (T,) bool, label () long),
see utils.data.classification.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from torch.utils.data import Dataset

from utils.data.classification import encode_rows, split_rows
from utils.data.sources import (CsvFile, DataError, HuggingFaceDataset, JsonlFile, RowSource, TextFile,
                                check_file)
from utils.data.text import embedded_path, encode_cached, split_windows
from utils.data.tokenizers import TokenizerError, build_tokenizer, load_tokenizer, tokenizer_fingerprint

DATA_CACHE_DIR = "data_cache"  # under output_dir: encoded tokens, and BPE trained on the embedded corpus or a Hub dataset


@dataclass
class PreparedData:
    tokenizer: Any  # encode/decode/vocab_size/save, see utils.data.tokenizers
    train: Dataset
    val: Dataset
    num_tokens: int  # tokens in the whole corpus before the split (before truncation for classification)
    source: str  # where the text came from, for the log
    label_names: list[str] = field(default_factory=list)  # classification: class names, index = label id
    pad_id: int = 0  # classification: id that pads sequences (masked out by attention_mask); unused by lm

    @property
    def num_classes(self) -> int:
        return len(self.label_names)


def open_source(config) -> Union[TextFile, RowSource]:
    """The data the config names, checked (file, extension, columns) before any slow step."""
    label_column = config.label_column if config.task == "classification" else None
    cache_dir = Path(config.output_dir) / DATA_CACHE_DIR
    if config.dataset_source == "embedded":
        return TextFile(embedded_path(config.dataset_name), f"embedded corpus {config.dataset_name!r}", cache_dir)
    if config.dataset_source in ("file", "upload"):
        path = check_file(config.dataset_path)
        suffix = path.suffix.lower()
        if suffix == ".txt":
            return TextFile(path, str(path))
        reader = CsvFile if suffix == ".csv" else JsonlFile
        return reader(path, config.text_column, label_column)
    if config.dataset_source == "huggingface":
        return HuggingFaceDataset(config.dataset_name, config.dataset_config, config.text_column, label_column,
                                  cache_dir)
    raise DataError(f"dataset_source={config.dataset_source!r} is unknown; choose embedded, file, upload or huggingface")


def prepare_data(config) -> PreparedData:
    """Build the tokenizer and the train/val datasets a WizardConfig asks for."""
    source = open_source(config)
    classify = config.task == "classification"
    bpe = config.tokenizer_strategy == "bpe"
    tokenizer = build_tokenizer(config.tokenizer_strategy, source.text_blocks, pad=classify,
                                vocab_size=config.vocab_size, tokenizer_path=config.tokenizer_path,
                                cache_file=source.bpe_cache_file(config.vocab_size) if bpe else None,
                                size_bytes=source.size_bytes)
    if classify:
        rows = encode_rows(tokenizer, source.rows(), config.max_seq_len, tokenizer.pad_id, source.class_names)
        split = split_rows(rows, config.max_seq_len, config.val_split, config.seed)
        return PreparedData(tokenizer, split.train, split.val, rows.num_tokens, source.description,
                            label_names=rows.label_names, pad_id=tokenizer.pad_id)
    cache_file = (Path(config.output_dir) / DATA_CACHE_DIR /
                  f"{source.cache_name}.tokens-{source.fingerprint}-{tokenizer_fingerprint(tokenizer)}.bin")
    tokens = encode_cached(tokenizer, source.text_blocks, source.size_bytes, cache_file)
    split = split_windows(tokens, config.max_seq_len, config.val_split, config.seed)
    pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    return PreparedData(tokenizer, split.train, split.val, split.num_tokens, source.description, pad_id=pad_id)


__all__ = ["PreparedData", "prepare_data", "open_source", "load_tokenizer", "build_tokenizer", "DataError",
           "TokenizerError"]
