"""Text classification data: labelled rows tokenized, truncated, padded and split by seed.

An item is (input_ids (T,) long, attention_mask (T,) bool, label () long), T = max_seq_len: the
text's ids, truncated to T and right-padded with the tokenizer's pad id (mask False on padding).
Rows whose text is empty (0 tokens) are dropped with a printed count: a Hugging Face dataset cannot
be edited to remove them, and a text with no tokens carries nothing to learn. A row without a label
is an error instead, since it means the data or label_column is wrong.
"""

from __future__ import annotations

import re
from array import array
from dataclasses import dataclass
from typing import Iterable, Optional

import torch
from torch.utils.data import Dataset

from utils.data.sources import DataError, Row

ENCODE_BATCH_ROWS = 1024
_INTEGER = re.compile(r"-?\d+")


class LabelledTexts:
    """All rows as one flat token tensor with per-row offsets and lengths, plus label ids."""

    def __init__(self, tokens: torch.Tensor, offsets: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor,
                 label_names: list[str], num_tokens: int, pad_id: int):
        self.tokens, self.offsets, self.lengths, self.labels = tokens, offsets, lengths, labels
        self.label_names, self.num_tokens, self.pad_id = label_names, num_tokens, pad_id

    def __len__(self) -> int:
        return len(self.labels)


class ClassificationRows(Dataset):
    """The rows of a LabelledTexts at `indices`, as fixed-length padded items."""

    def __init__(self, data: LabelledTexts, indices: torch.Tensor, max_seq_len: int):
        self.data, self.indices, self.max_seq_len = data, indices, max_seq_len

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        row = int(self.indices[i])
        start, length = int(self.data.offsets[row]), int(self.data.lengths[row])
        input_ids = torch.full((self.max_seq_len,), self.data.pad_id, dtype=torch.long)  # (T,)
        input_ids[:length] = self.data.tokens[start: start + length]
        attention_mask = torch.arange(self.max_seq_len) < length  # (T,) True on real tokens
        return input_ids, attention_mask, self.data.labels[row]


def encode_rows(tokenizer, rows: Iterable[Row], max_seq_len: int, pad_id: int,
                class_names: Optional[list[str]] = None) -> LabelledTexts:
    """Tokenize rows in batches, keeping at most max_seq_len ids of each; label ids follow label_names.

    Storage stays compact for millions of rows: one int32 tensor per batch of rows, lengths and
    label codes (in order of first appearance, renumbered at the end) in arrays."""
    chunks: list[torch.Tensor] = []
    lengths, codes = array("i"), array("i")
    first_seen: dict[str, int] = {}
    num_tokens, truncated, empty = 0, 0, []
    batch: list[Row] = []

    def flush() -> None:
        nonlocal num_tokens, truncated
        kept: list[int] = []
        for row, ids in zip(batch, tokenizer.encode_batch([r.text for r in batch])):
            if not ids:
                empty.append(row.where)
                continue
            num_tokens += len(ids)
            truncated += len(ids) > max_seq_len
            kept.extend(ids[:max_seq_len])
            lengths.append(min(len(ids), max_seq_len))
            codes.append(first_seen.setdefault(row.label, len(first_seen)))
        chunks.append(torch.tensor(kept, dtype=torch.int32))
        batch.clear()

    for row in rows:
        batch.append(row)
        if len(batch) >= ENCODE_BATCH_ROWS:
            flush()
    flush()
    if empty:
        print(f"Data: dropped {len(empty)} rows with empty text ({', '.join(empty[:5])}"
              f"{', ...' if len(empty) > 5 else ''})")
    if truncated:
        print(f"Data: {truncated} of {len(lengths)} texts are longer than max_seq_len={max_seq_len} and were truncated")
    if not lengths:
        raise DataError("No row has any text to classify; check text_column.")
    label_names = class_names if class_names is not None else sort_labels(set(first_seen))
    index = {name: i for i, name in enumerate(label_names)}
    renumber = torch.tensor([index[name] for name in first_seen], dtype=torch.long)
    lengths_t = torch.tensor(lengths, dtype=torch.long)
    offsets = torch.cumsum(lengths_t, 0) - lengths_t
    labels = renumber[torch.tensor(codes, dtype=torch.long)]
    return LabelledTexts(torch.cat(chunks), offsets, lengths_t, labels, label_names, num_tokens, pad_id)


def sort_labels(labels: set[str]) -> list[str]:
    """Numeric order when every label is an integer ("2" before "10"), else alphabetical."""
    if all(_INTEGER.fullmatch(label) for label in labels):
        return sorted(labels, key=int)
    return sorted(labels)


@dataclass
class ClassificationSplit:
    train: ClassificationRows
    val: ClassificationRows


def split_rows(data: LabelledTexts, max_seq_len: int, val_split: float, seed: int) -> ClassificationSplit:
    """A seeded shuffle of the rows: the first round(n * val_split) validate, the rest train."""
    n = len(data)
    n_val = round(n * val_split)
    if n_val < 1 or n - n_val < 1:
        raise DataError(f"The dataset has {n} usable rows, too few for a train/val split at val_split={val_split} "
                        "(each side needs at least one row). Add rows or change val_split.")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return ClassificationSplit(ClassificationRows(data, order[n_val:], max_seq_len),
                               ClassificationRows(data, order[:n_val], max_seq_len))
