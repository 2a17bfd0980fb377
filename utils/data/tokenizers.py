"""Tokenizers the kit trains with: character and byte level (BPE and pretrained come with issue 6).

Every tokenizer has encode(str) -> list[int], decode(list[int]) -> str, vocab_size, kind and
save(folder); load_tokenizer(folder) reads any of them back.
"""

from __future__ import annotations

import json
from pathlib import Path

META_FILENAME = "tokenizer_meta.json"


class CharTokenizer:
    """One id per distinct character of the training text, in sorted order."""

    kind = "char"

    def __init__(self, chars: list[str]):
        self.chars = chars
        self.stoi = {ch: i for i, ch in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[ch] for ch in text]
        except KeyError as e:
            raise ValueError(f"character {e.args[0]!r} is not in this char tokenizer's vocabulary "
                             "(it never occurs in the training text)") from None

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def save(self, folder: Path) -> None:
        _write_meta(folder, {"kind": self.kind, "chars": self.chars})


class ByteTokenizer:
    """The 256 byte values of the UTF-8 encoding: any text, no training."""

    kind = "byte"
    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")

    def save(self, folder: Path) -> None:
        _write_meta(folder, {"kind": self.kind})


def build_tokenizer(strategy: str, text: str):
    """The tokenizer a run trains with, fitted to its training text where the strategy needs it."""
    if strategy == "char":
        return CharTokenizer.from_text(text)
    if strategy == "byte":
        return ByteTokenizer()
    raise NotImplementedError(f"tokenizer_strategy={strategy!r} is not available yet; use 'char' or 'byte'")


def load_tokenizer(folder: str | Path):
    folder = Path(folder)
    path = folder / META_FILENAME
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"No tokenizer in {folder} (expected {META_FILENAME})") from None
    if meta.get("kind") == "char":
        return CharTokenizer(meta["chars"])
    if meta.get("kind") == "byte":
        return ByteTokenizer()
    raise ValueError(f"{path} names an unknown tokenizer kind {meta.get('kind')!r}")


def _write_meta(folder: Path, meta: dict) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / META_FILENAME).write_text(json.dumps(meta, ensure_ascii=False) + "\n", encoding="utf-8")
