"""The data a config asks for, before any of it is read: its DataSpec (what prepare_data needs) and the
vocabulary the model is built with (vocab_size_for), which the wizard, the inspection and the estimate ask for
without preparing the data."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Optional

from utils.config import WizardConfig
from utils.data import DATA_CACHE_DIR, DataSpec, PreparedData, open_source
from utils.data.tokenizers import build_tokenizer


def build_data_spec(config: WizardConfig) -> DataSpec:
    """The config's data settings, for utils.data.prepare_data; a pretrained model brings its own tokenizer."""
    pretrained = config.model_source == "pretrained"
    return DataSpec(task=config.task, source=config.dataset_source, name=config.dataset_name,
                    subset=config.dataset_config, path=config.dataset_path, text_column=config.text_column,
                    label_column=config.label_column, val_split=config.val_split, seed=config.seed,
                    max_seq_len=config.max_seq_len, tokenizer="model" if pretrained else config.tokenizer_strategy,
                    tokenizer_path=config.pretrained_model if pretrained else config.tokenizer_path,
                    vocab_size=config.vocab_size,
                    cache_dir=Path(config.output_dir) / DATA_CACHE_DIR, train_on=config.train_on,
                    pack_sequences=config.pack_sequences if pretrained and config.task == "lm" else "false")


def vocab_size_for(config: WizardConfig) -> tuple[int, str]:
    """The vocabulary the model will be built with, and where that number comes from."""
    if config.model_source == "pretrained":  # its own tokenizer, whatever tokenizer_strategy says
        try:
            return _model_vocab_size(config.pretrained_model, config.task == "classification"), \
                "the pretrained model's own tokenizer"
        except (OSError, ValueError, ImportError) as e:
            return config.vocab_size, f"tokenizer not readable yet ({e}); assuming vocab_size"
    if config.tokenizer_strategy == "byte":  # a classifier's pad id comes after the 256 bytes
        return (257, "byte tokenizer plus a pad id") if config.task == "classification" else (256, "byte tokenizer")
    if config.tokenizer_strategy == "pretrained":
        try:
            return _pretrained_vocab_size(config.tokenizer_path, config.task == "classification"), \
                "the pretrained tokenizer"
        except (OSError, ValueError, ImportError) as e:
            return config.vocab_size, f"tokenizer not readable yet ({e}); assuming vocab_size"
    if config.tokenizer_strategy == "char":
        try:
            return _char_vocab_size(build_data_spec(config), _mtime(config.dataset_path)), \
                "distinct characters in the dataset"
        except (OSError, ValueError, NotImplementedError) as e:
            return 256, f"dataset not readable yet ({e}); assuming 256"
    return config.vocab_size, "vocab_size"



@functools.lru_cache(maxsize=8)
def _pretrained_vocab_size(tokenizer_path: str, pad: bool) -> int:
    return build_tokenizer("pretrained", "", pad=pad, tokenizer_path=tokenizer_path).vocab_size


@functools.lru_cache(maxsize=8)
def _model_vocab_size(pretrained_model: str, pad: bool) -> int:
    return build_tokenizer("model", "", pad=pad, tokenizer_path=pretrained_model).vocab_size


@functools.lru_cache(maxsize=8)
def _char_vocab_size(spec: DataSpec, mtime: float) -> int:
    """The char vocabulary prepare_data will build: one pass over the text (cached per file version)."""
    source = open_source(spec)
    return build_tokenizer("char", source.text_blocks, pad=spec.classify, size_bytes=source.size_bytes).vocab_size


def _mtime(path: str) -> float:
    try:
        return os.path.getmtime(path) if path else 0.0
    except OSError:
        return 0.0


def batch_lengths(config: WizardConfig, data: PreparedData) -> tuple[Optional[int], Optional[int]]:
    """(the mean length a batch is padded to, the longest one) for chat examples, which pad to their batch's
    longest: the shapes to time and to measure memory at. (None, None): windows are max_seq_len long.
    Packed batches (fewer, longer rows) are given as the length whose batch_size rows hold their mean tokens,
    and the longest as padded: packing never computes more tokens than that (utils.data.packing.pack_rows)."""
    if not data.chat:
        return None, None
    return data.train.padded_length(config.batch_size), data.train.longest_padded()
