"""Where training text comes from, read as a stream: the embedded corpus, .txt / CSV / JSONL files
(local, uploaded or on Google Drive) and Hugging Face datasets.

A source hands out text blocks (language modelling, fitting a tokenizer) and labelled rows
(classification), each time from the start, so nothing holds the whole corpus in memory: files
are read in blocks or row by row, Hugging Face datasets are memory-mapped Arrow tables.
"""

from __future__ import annotations

import codecs
import csv
import functools
import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Optional

from utils.config import DATA_FILE_SUFFIXES
from utils.data.tokenizers import clean_break
from utils.errors import DataError
from utils.files import existing_path

BLOCK_BYTES = 1 << 20  # text handed on at a time
HF_BATCH_ROWS = 1000
CACHE_VERSION = "1"  # part of every BPE cache key: bump when training changes


# Rows that hold a list (a conversation under another key, e.g. "dialog") are most likely chat data in a
# shape the kit does not know: say which shapes it reads instead of sending the user to text_column.
CHAT_ROWS_HINT = ("chat data needs a 'messages' list of {role, content} objects (or 'prompt' and 'completion', or "
                  "'instruction' and 'output') and model_source='pretrained', e.g. one row: "
                  '{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}')


def holds_a_list(record: dict) -> bool:
    """A row with a list among its values (or a CSV cell of JSON list text): a conversation, not a text."""
    return any(isinstance(v, list) or (isinstance(v, str) and v.lstrip().startswith("[{")) for v in record.values())


class Row(NamedTuple):
    where: str  # "line 12" / "row 3", for error messages
    text: str
    label: Any  # None when no label column was asked for


def check_file(path: str | Path) -> Path:
    """The path of an existing, non-empty data file with a known suffix, or an error naming the fix."""
    path = existing_path(path, "Dataset file", "dataset_path",
                         "on Colab, mount Google Drive first for /content/drive/... paths")
    if path.is_dir():
        raise DataError(f"Dataset path {path} is a folder; give the path of a .txt, .csv or .jsonl file inside it.")
    if path.suffix.lower() not in DATA_FILE_SUFFIXES:
        raise DataError(f"Dataset file {path} has the extension {path.suffix or '(none)'!r}; use a .txt (plain "
                        "text), .csv or .jsonl (one JSON object per line) file, renamed or converted.")
    if path.stat().st_size == 0:
        raise DataError(f"Dataset file {path} is empty; it needs some text to train on.")
    return path


def file_fingerprint(path: Path, *extra: str) -> str:
    """Short hash of the file's bytes and the settings that shape what is read from it."""
    digest = hashlib.sha256("\0".join((CACHE_VERSION,) + extra).encode())
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()[:12]


class TextFile:
    """Plain UTF-8 text: the embedded corpus or a .txt file. Language modelling only."""

    def __init__(self, path: Path, description: str, cache_dir: Optional[Path] = None):
        self.path, self.description, self.cache_dir = path, description, cache_dir
        self.size_bytes = path.stat().st_size  # bounds the token count of byte-level tokenizers
        self.class_names = None

    def text_blocks(self) -> Iterator[str]:
        """The text in blocks of about BLOCK_BYTES, cut before clean line breaks (see split_at_line_breaks)."""
        decoder = codecs.getincrementaldecoder("utf-8-sig")()  # -sig: drop the BOM some editors write
        carry, offset, seen_text = "", 0, False
        with open(self.path, "rb") as f:
            for chunk in iter(lambda: f.read(BLOCK_BYTES), b""):
                text = carry + self._decode(decoder, chunk, offset)
                offset += len(chunk)
                cut = clean_break(text, len(text) // 2, len(text))  # len(text) when there is none
                block, carry = text[:cut], text[cut:]
                seen_text = seen_text or (bool(block) and not block.isspace())
                yield block
        text = carry + self._decode(decoder, b"", offset, final=True)
        if text:
            seen_text = seen_text or (bool(text) and not text.isspace())
            yield text
        if not seen_text:
            raise DataError(f"Dataset file {self.path} is empty (only whitespace); it needs some text to train on.")

    def _decode(self, decoder, chunk: bytes, offset: int, final: bool = False) -> str:
        try:
            return decoder.decode(chunk, final)
        except UnicodeDecodeError as e:
            raise DataError(f"Dataset file {self.path} is not UTF-8 text (undecodable byte near offset "
                            f"{offset + e.start}); save it as UTF-8.") from None

    def rows(self) -> Iterator[Row]:
        raise DataError(f"{self.path} is plain text without labels; task='classification' needs a .csv or "
                        ".jsonl file (or a Hugging Face dataset) with text and label columns.")

    @functools.cached_property
    def fingerprint(self) -> str:
        return file_fingerprint(self.path)

    @property
    def cache_name(self) -> str:
        return self.path.stem

    def bpe_cache_file(self, vocab_size: int) -> Path:
        if self.cache_dir is not None:
            return self.cache_dir / f"{self.path.stem}.bpe-{vocab_size}-{self.fingerprint}.json"
        return self.path.with_name(f"{self.path.name}.bpe-{vocab_size}-{self.fingerprint}.json")


class RowSource:
    """Rows with named columns (CSV, JSONL, Hugging Face): text_column for text, label_column for labels."""

    description: str
    path: Path  # CSV and JSONL
    size_bytes: Optional[int] = None
    class_names: Optional[list[str]] = None  # the data's own class order (Hugging Face ClassLabel)

    def __init__(self, text_column: str, label_column: Optional[str]):
        self.text_column, self.label_column = text_column, label_column

    def records(self) -> Iterator[tuple[str, dict]]:
        """(where, row as a dict) for every row."""
        raise NotImplementedError

    # CSV and JSONL files; the Hugging Face source overrides these three
    @functools.cached_property
    def fingerprint(self) -> str:
        return file_fingerprint(self.path, self.text_column or "")  # None: chat rows, read whole

    @property
    def cache_name(self) -> str:
        return self.path.stem

    def bpe_cache_file(self, vocab_size: int) -> Path:
        return self.path.with_name(f"{self.path.name}.bpe-{vocab_size}-{self.fingerprint}.json")

    def check_columns(self, columns: list[str], what: str, first: Optional[dict] = None) -> None:
        """first: the first row, when known; one holding a list is named as chat data in a shape not read."""
        for field, column in (("text_column", self.text_column), ("label_column", self.label_column)):
            if column is not None and column not in columns:
                if field == "text_column" and first is not None and holds_a_list(first):
                    raise DataError(f"{what} has no column {column!r} (text_column) and holds lists "
                                    f"({', '.join(map(str, columns))}): {CHAT_ROWS_HINT}")
                raise DataError(f"{what} has no column {column!r} ({field}); its columns are: "
                                f"{', '.join(map(str, columns)) or '(none)'}. Set {field} to one of them.")

    def rows(self) -> Iterator[Row]:
        for where, record in self.records():
            missing = [c for c in (self.text_column, self.label_column) if c is not None and c not in record]
            if missing:
                raise DataError(f"{self.description} {where} has no {missing[0]!r} field; it has: "
                                f"{', '.join(map(str, record)) or '(none)'}.")
            label = None if self.label_column is None else self._label(record[self.label_column], where)
            yield Row(where, self._text(record[self.text_column], where), label)

    def text_blocks(self) -> Iterator[str]:
        """Every row's text followed by a newline, gathered into blocks of about BLOCK_BYTES."""
        block, size, seen_text = [], 0, False
        for row in self.rows():
            if row.text:  # whitespace-only texts still count: a classifier's char vocabulary needs their chars
                seen_text = seen_text or not row.text.isspace()
                block.append(row.text + "\n")
                size += len(row.text) + 1
            if size >= BLOCK_BYTES:
                yield "".join(block)
                block, size = [], 0
        if block:
            yield "".join(block)
        if not seen_text:
            raise DataError(f"{self.description} has no text in column {self.text_column!r}; "
                            "check text_column or the file.")

    def _text(self, value: Any, where: str) -> str:
        if value is None:
            return ""
        if isinstance(value, (list, dict)):
            raise DataError(f"{self.description} {where}: column {self.text_column!r} holds a "
                            f"{type(value).__name__}, not text (text_column); {CHAT_ROWS_HINT}")
        if not isinstance(value, str):
            raise DataError(f"{self.description} {where}: column {self.text_column!r} holds "
                            f"{type(value).__name__} {str(value)[:40]!r}, not text; check text_column.")
        return value

    def _label(self, value: Any, where: str) -> str:
        if value is None or (isinstance(value, str) and not value.strip()):
            raise DataError(f"{self.description} {where} has no label in column {self.label_column!r}; "
                            "give every row a label or remove the row.")
        if isinstance(value, (list, dict)):
            raise DataError(f"{self.description} {where}: label column {self.label_column!r} holds a "
                            f"{type(value).__name__}, not one label.")
        if self.class_names is not None and isinstance(value, int):
            if not 0 <= value < len(self.class_names):  # -1 marks unlabelled rows in some Hub datasets
                raise DataError(f"{self.description} {where} has label {value}, not one of its "
                                f"{len(self.class_names)} classes; use a split whose rows are labelled.")
            return self.class_names[value]
        return str(value).strip()


class CsvFile(RowSource):
    def __init__(self, path: Path, text_column: str, label_column: Optional[str]):
        super().__init__(text_column, label_column)
        self.path, self.description, self.size_bytes = path, str(path), path.stat().st_size
        csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # a long document in one cell is fine
        with self._open() as f:
            header = self._read(lambda: next(csv.reader(f), None), f)
        if not header:
            raise DataError(f"Dataset file {path} is empty; a CSV needs a header row naming its columns.")
        self.check_columns(header, str(path), next(self.records(), (None, None))[1])

    def _open(self):
        return open(self.path, encoding="utf-8-sig", newline="")

    def records(self) -> Iterator[tuple[str, dict]]:
        with self._open() as f:
            reader = csv.DictReader(f)
            rows = iter(reader)
            while (record := self._read(lambda: next(rows, None), f, reader)) is not None:
                yield f"line {reader.line_num}", {k: v for k, v in record.items() if k is not None}

    def _read(self, step, f, reader=None):
        try:
            return step()
        except UnicodeDecodeError as e:
            line = f" near line {reader.line_num + 1}" if reader else ""
            raise DataError(f"Dataset file {self.path} is not UTF-8 text (undecodable byte{line}, {e.reason}); "
                            "save it as UTF-8.") from None
        except csv.Error as e:
            raise DataError(f"Dataset file {self.path} is not valid CSV near line "
                            f"{reader.line_num if reader else 1}: {e}") from None



class JsonlFile(RowSource):
    def __init__(self, path: Path, text_column: str, label_column: Optional[str]):
        super().__init__(text_column, label_column)
        self.path, self.description, self.size_bytes = path, str(path), path.stat().st_size
        first = next(self.records(), None)
        if first is None:
            raise DataError(f"Dataset file {path} is empty; it needs one JSON object per line.")
        self.check_columns(list(first[1]), f"{path} ({first[0]})", first[1])

    def records(self) -> Iterator[tuple[str, dict]]:
        with open(self.path, encoding="utf-8-sig") as f:
            number = 0
            while True:
                try:
                    line = f.readline()
                except UnicodeDecodeError as e:
                    raise DataError(f"Dataset file {self.path} is not UTF-8 text (undecodable byte near line "
                                    f"{number + 1}, {e.reason}); save it as UTF-8.") from None
                if not line:
                    return
                number += 1
                if line.strip():
                    yield f"line {number}", self._parse(line, number)

    def _parse(self, line: str, number: int) -> dict:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"Dataset file {self.path} line {number} is not valid JSON ({e.msg}); JSONL needs "
                            "one JSON object per line.") from None
        if not isinstance(record, dict):
            raise DataError(f"Dataset file {self.path} line {number} is a JSON {type(record).__name__}, "
                            "not an object with named fields.")
        return record



class HuggingFaceDataset(RowSource):
    """The "train" split of a Hugging Face dataset: by name, or a folder written by save_to_disk()."""

    def __init__(self, name: str, config_name: str, text_column: str, label_column: Optional[str],
                 cache_dir: Path):
        super().__init__(text_column, label_column)
        self.name, self.cache_dir = name, cache_dir
        self.description = f"Hugging Face dataset {name!r}" + (f" ({config_name})" if config_name else "")
        dataset = load_hf_dataset(name, config_name)
        self.check_columns(dataset.column_names, self.description)
        columns = [c for c in (text_column, label_column) if c is not None]
        self.dataset = dataset.select_columns(columns) if columns else dataset  # none named: every column (chat)
        self.size_bytes = self.dataset.data.nbytes  # Arrow buffers: bound the text's UTF-8 bytes
        feature = dataset.features.get(label_column) if label_column else None
        self.class_names = list(feature.names) if hasattr(feature, "names") else None  # a ClassLabel
        self._fingerprint = hashlib.sha256("\0".join(
            (CACHE_VERSION, name, config_name, text_column or "", str(getattr(dataset, "_fingerprint", len(dataset))))
        ).encode()).hexdigest()[:12]

    def records(self) -> Iterator[tuple[str, dict]]:
        n = len(self.dataset)
        for start in range(0, n, HF_BATCH_ROWS):
            batch = self.dataset[start: start + HF_BATCH_ROWS]  # {column: [values]}
            for i, values in enumerate(zip(*batch.values())):
                yield f"row {start + i}", dict(zip(batch, values))

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    @property
    def cache_name(self) -> str:
        return _slug(self.name)

    def bpe_cache_file(self, vocab_size: int) -> Path:
        return self.cache_dir / f"{self.cache_name}.bpe-{vocab_size}-{self.fingerprint}.json"


def load_hf_dataset(name: str, config_name: str = ""):
    try:
        import datasets
    except ImportError:
        raise DataError("install datasets (pip install datasets) to use dataset_source='huggingface'") from None
    folder = Path(name).expanduser()
    try:
        if (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file():
            loaded = datasets.load_from_disk(str(folder))
        else:
            loaded = datasets.load_dataset(name, config_name or None, split="train")  # fetches no other split
    except ConnectionError as e:  # before OSError: offline is the likely cause and has its own fix
        raise DataError(f"Could not reach the Hugging Face Hub for dataset {name!r} ({e}). This machine looks "
                        "offline: connect it, or save the data as a .csv/.jsonl file and use dataset_source='file'.") from None
    except (FileNotFoundError, ValueError) as e:
        raise DataError(f"Could not load Hugging Face dataset {name!r}"
                        + (f" config {config_name!r}" if config_name else "") + f": {e}") from None
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise DataError(f"Hugging Face dataset {name!r} has no 'train' split (it has: {', '.join(loaded)}); "
                            "the kit trains on 'train' and holds out val_split of it.")
        loaded = loaded["train"]
    return loaded


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name.strip("/")) or "dataset"
