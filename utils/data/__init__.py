"""Datasets and tokenizers: turn the config's data choice into train/val datasets and a tokenizer.

task "lm": items are (x, y), LongTensors of shape (T,) with y the next token of each x. Chat and instruction
rows for a pretrained model (utils.data.chat) give examples of their own length, y -100 where the loss does not
count; their dataset's `collate` pads a batch.
task "classification": items are (input_ids (T,) long, attention_mask (T,) bool, label () long),
see utils.data.classification.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from torch.utils.data import Dataset

from utils.data.chat import SHAPE_WORDS, ChatSource, open_chat, prepare_chat
from utils.data.packing import decide_packing
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
    pad_id: int = 0  # classification: id that pads sequences (masked out by attention_mask); chat: pads batches
    chat: str = ""  # chat or instruction examples (utils.data.chat): their shape in words; "": token-stream windows

    @property
    def num_classes(self) -> int:
        return len(self.label_names)


@dataclass(frozen=True)
class DataSpec:
    """What preparing the data needs to know; utils.data.spec.build_data_spec makes one from a config."""

    task: str  # "lm" or "classification"
    source: str  # "embedded", "file", "upload" or "huggingface"
    name: str  # embedded corpus or Hugging Face dataset name
    subset: str  # Hugging Face dataset config, "" for none
    path: str  # .txt / .csv / .jsonl file for the file and upload sources
    text_column: str
    label_column: str  # classification only
    val_split: float
    seed: int
    max_seq_len: int
    tokenizer: str  # "char", "byte", "bpe", "pretrained", or "model" (a pretrained model's own, at tokenizer_path)
    tokenizer_path: str
    vocab_size: int  # bpe only
    cache_dir: Path  # encoded tokens, and a BPE trained on an embedded or Hub corpus
    train_on: str = "responses"  # chat data: "responses" (loss on the answers) or "all"
    pack_sequences: str = "false"  # chat data: "auto", "true" or "false" (utils.data.packing.decide_packing)

    @property
    def classify(self) -> bool:
        return self.task == "classification"


def open_source(spec: DataSpec) -> Union[TextFile, RowSource, ChatSource]:
    """The data the spec names, checked (file, extension, columns) before any slow step. For a pretrained
    language model, rows whose first has a chat shape's keys (utils.data.chat) are chat data."""
    label_column = spec.label_column if spec.classify else None
    pretrained = spec.tokenizer == "model"  # a pretrained model's own tokenizer formats chat rows (utils.data.chat)
    if spec.source == "embedded":
        return TextFile(embedded_path(spec.name), f"embedded corpus {spec.name!r}", spec.cache_dir)
    if spec.source in ("file", "upload"):
        path = check_file(spec.path)
        suffix = path.suffix.lower()
        if suffix == ".txt":
            return TextFile(path, str(path))
        reader = CsvFile if suffix == ".csv" else JsonlFile
        chat = None if spec.classify else open_chat(reader(path, None, None), spec.text_column, pretrained)
        return chat or reader(path, spec.text_column, label_column)
    if spec.source == "huggingface":
        chat = None if spec.classify else open_chat(HuggingFaceDataset(spec.name, spec.subset, None, None,
                                                                       spec.cache_dir), spec.text_column, pretrained)
        return chat or HuggingFaceDataset(spec.name, spec.subset, spec.text_column, label_column, spec.cache_dir)
    raise DataError(f"dataset_source={spec.source!r} is unknown; choose embedded, file, upload or huggingface")


def prepare_data(spec: DataSpec, tokenizer=None) -> PreparedData:
    """Build the tokenizer and the train/val datasets the spec asks for.

    tokenizer: one already built for this spec (the other processes of a multi-device run read rank
    zero's back from the run folder instead of training it again); its token cache is then found too.
    """
    source = open_source(spec)
    bpe = spec.tokenizer == "bpe"
    if tokenizer is None:
        tokenizer = build_tokenizer(spec.tokenizer, source.text_blocks, pad=spec.classify, vocab_size=spec.vocab_size,
                                    tokenizer_path=spec.tokenizer_path,
                                    cache_file=source.bpe_cache_file(spec.vocab_size) if bpe else None,
                                    size_bytes=source.size_bytes)
    if isinstance(source, ChatSource):
        chat = prepare_chat(source, tokenizer, spec.max_seq_len, spec.val_split, spec.seed, spec.train_on,
                            spec.cache_dir, decide_packing(spec.pack_sequences, spec.tokenizer_path))
        return PreparedData(tokenizer, chat.train, chat.val, chat.num_tokens, chat.description,
                            pad_id=chat.train.pad_id, chat=SHAPE_WORDS[source.shape])
    if spec.classify:
        rows = encode_rows(tokenizer, source.rows(), spec.max_seq_len, tokenizer.pad_id, source.class_names)
        split = split_rows(rows, spec.max_seq_len, spec.val_split, spec.seed)
        return PreparedData(tokenizer, split.train, split.val, rows.num_tokens, source.description,
                            label_names=rows.label_names, pad_id=tokenizer.pad_id)
    cache_file = spec.cache_dir / f"{source.cache_name}.tokens-{source.fingerprint}-{tokenizer_fingerprint(tokenizer)}.bin"
    tokens = encode_cached(tokenizer, source.text_blocks, source.size_bytes, cache_file)
    split = split_windows(tokens, spec.max_seq_len, spec.val_split, spec.seed)
    pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    return PreparedData(tokenizer, split.train, split.val, split.num_tokens, source.description, pad_id=pad_id)


__all__ = ["DataSpec", "PreparedData", "prepare_data", "open_source", "load_tokenizer", "build_tokenizer", "DataError",
           "TokenizerError"]
