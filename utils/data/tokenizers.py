"""Tokenizers the kit trains with: character, byte, byte-level BPE trained on your data, or pretrained.

Every tokenizer has kind, vocab_size, pad_id, encode(str) -> list[int], decode(list[int]) -> str,
encode_batch(list[str]), encode_tensor(str) -> 1-D tensor (the fast path for corpora) and save(folder);
load_tokenizer(folder) reads any of them back from the folder's tokenizer_meta.json (plus
tokenizer.json for the bpe and pretrained kinds).

Padding (classification batches pad every text to max_seq_len):
- char: for task "lm" the ids are the sorted characters of the data, nothing else. With a pad
  token id 0 is "<pad>" and the characters follow from id 1.
- byte: ids 0-255 are the byte values; with a pad token id 256 is the pad (vocab_size 257).
- bpe: byte-level BPE (the `tokenizers` library) with "<pad>" as id 0, then the 256 bytes and the
  merges learnt from the data up to vocab_size (the BPE target).
- pretrained: its own pad token when it has one; a tokenizer without one (GPT-2 style) gets
  "<pad>" added as a new id, and the vocabulary grows by one.
- model (model_source="pretrained", see utils.models.pretrained): the pretrained model's own tokenizer, kind
  "pretrained"; without a pad token it pads with its end-of-text token, so the model's embedding keeps
  its size.
decode() drops pad ids.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Optional

import torch

from utils.errors import MissingFileError, TokenizerError
from utils.files import atomic_write_text
from utils.models.pretrained import (PretrainedError, cached_only_source, first_line, require_transformers,
                                     resolve_source, where_hint)

META_FILENAME = "tokenizer_meta.json"
HF_FILENAME = "tokenizer.json"
HF_TOKENIZER_DIRNAME = "transformers"  # in a pretrained model's saved tokenizer/: its tokenizer as transformers saves it
PAD_TOKEN = "<pad>"
PAD_TOKEN_NAMES = ("<pad>", "[PAD]", "<|pad|>", "<PAD>")  # what pretrained tokenizers call their pad
PIECE_CHARS = 4096  # the tokenizers library encodes a batch of pieces this long in parallel
BPE_SAMPLE_BYTES = 64 * 2**20  # BPE trains on at most about this much text, spread evenly over the corpus


class CharTokenizer:
    """One id per distinct character of the training text, in sorted order (after "<pad>" if padded)."""

    kind = "char"

    def __init__(self, chars: list[str], pad: bool = False):
        self.chars, self.pad = chars, pad
        self.pad_id: Optional[int] = 0 if pad else None
        first = 1 if pad else 0
        self.stoi = {ch: i + first for i, ch in enumerate(chars)}
        self.itos = ([PAD_TOKEN] if pad else []) + chars
        self._table = _StrictTable({ord(ch): chr(i) for ch, i in self.stoi.items()})

    @classmethod
    def from_blocks(cls, blocks: Iterable[str], pad: bool = False) -> "CharTokenizer":
        chars: set[str] = set()
        for block in blocks:  # one streaming pass: the vocabulary without the text in memory
            chars.update(block)
        return cls(sorted(chars), pad)

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[ch] for ch in text]
        except KeyError as e:
            raise _unknown_char(e.args[0]) from None

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def encode_tensor(self, text: str) -> torch.Tensor:
        # translate() maps every character to the character whose code point is its id, in C.
        coded = text.translate(self._table).encode("utf-32-le", "surrogatepass")
        return torch.frombuffer(bytearray(coded), dtype=torch.int32) if coded else torch.empty(0, dtype=torch.int32)

    def decode(self, ids: list[int]) -> str:
        return "".join(self.itos[i] for i in ids if i != self.pad_id)

    def save(self, folder: Path) -> None:
        _write_meta(folder, {"kind": self.kind, "chars": self.chars, "pad": self.pad})


class _StrictTable(dict):
    def __missing__(self, code: int):
        raise _unknown_char(chr(code))  # not a LookupError, so str.translate does not skip it


def _unknown_char(ch: str) -> TokenizerError:
    return TokenizerError(f"character {ch!r} is not in this char tokenizer's vocabulary "
                      "(it never occurs in the training text)")


class ByteTokenizer:
    """The 256 byte values of the UTF-8 encoding (plus a pad id 256 when padded): any text, no training."""

    kind = "byte"

    def __init__(self, pad: bool = False):
        self.pad = pad
        self.pad_id: Optional[int] = 256 if pad else None
        self.vocab_size = 257 if pad else 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def encode_tensor(self, text: str) -> torch.Tensor:
        data = bytearray(text.encode("utf-8"))
        return torch.frombuffer(data, dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i != self.pad_id).decode("utf-8", errors="replace")

    def save(self, folder: Path) -> None:
        _write_meta(folder, {"kind": self.kind, "pad": self.pad})


class LibraryTokenizer:
    """A `tokenizers.Tokenizer` (kind "bpe": trained here; "pretrained": loaded) behind the kit's protocol."""

    def __init__(self, tokenizer, kind: str, pad_id: Optional[int], add_special_tokens: bool = False):
        self.tokenizer, self.kind, self.pad_id = tokenizer, kind, pad_id
        # True for a pretrained model's own tokenizer on a classification task: a BERT-style classifier reads
        # the [CLS] its tokenizer puts first. Corpora for task "lm" are encoded without special tokens.
        self.add_special_tokens = add_special_tokens
        # A tokenizer.json may switch on truncation or padding; either would silently cut our corpus blocks.
        tokenizer.no_truncation()
        tokenizer.no_padding()

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=self.add_special_tokens).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=self.add_special_tokens)]

    def encode_tensor(self, text: str) -> torch.Tensor:
        # Under a byte-level pre-tokenizer, pieces cut at line breaks encode exactly as the whole text
        # would, and in parallel. Others (Metaspace in T5/Llama-style files) mark each piece's start,
        # so they encode the block whole.
        from tokenizers import pre_tokenizers

        if not isinstance(self.tokenizer.pre_tokenizer, pre_tokenizers.ByteLevel):
            return torch.tensor(self.encode(text), dtype=torch.int32)
        pieces = split_at_line_breaks(text, PIECE_CHARS)
        ids = [i for piece in self.encode_batch(pieces) for i in piece]
        return torch.tensor(ids, dtype=torch.int32)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / HF_FILENAME).write_text(self.tokenizer.to_str(), encoding="utf-8")
        special = {"add_special_tokens": True} if self.add_special_tokens else {}  # older runs' meta unchanged
        _write_meta(folder, {"kind": self.kind, "pad_id": self.pad_id, **special})


def split_at_line_breaks(text: str, size: int) -> list[str]:
    """Pieces of about `size` characters, each cut just before a line break that has non-space text on
    both sides: byte-level pre-tokenizers split there anyway, so encoding the pieces one by one gives
    the same ids as encoding the whole text. A stretch with no such break is cut at `size`."""
    pieces, start = [], 0
    while len(text) - start > size:
        cut = clean_break(text, start, start + size)
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return pieces


def clean_break(text: str, start: int, end: int) -> int:
    """The last clean line break in text[start+1:end] (see split_at_line_breaks), else end."""
    i = text.rfind("\n", start + 1, end)
    while i > start:
        if not text[i - 1].isspace() and i + 1 < len(text) and not text[i + 1].isspace():
            return i
        i = text.rfind("\n", start + 1, i)
    return end


# ---------------------------------------------------------------------------------------------- building

def build_tokenizer(strategy: str, blocks: Callable[[], Iterable[str]] | str, *, pad: bool = False,
                    vocab_size: int = 4096, tokenizer_path: str = "", cache_file: Optional[Path] = None,
                    size_bytes: Optional[int] = None):
    """The tokenizer a run trains with.

    blocks: the training text, or a function returning a fresh iterator over it in blocks (char and
    bpe read it once; byte and pretrained not at all). pad: the task pads sequences (classification).
    vocab_size is the BPE target; char, byte and pretrained vocabularies follow the tokenizer.
    cache_file: where a trained BPE is kept and found again (None: train every time).
    size_bytes: the corpus size, when known; BPE trains on a sample of a corpus over BPE_SAMPLE_BYTES.
    """
    if isinstance(blocks, str):
        text = blocks
        blocks = lambda: [text]  # noqa: E731
    if strategy == "char":
        return CharTokenizer.from_blocks(blocks(), pad)
    if strategy == "byte":
        return ByteTokenizer(pad)
    if strategy == "bpe":
        return build_bpe(blocks, vocab_size, cache_file, size_bytes)
    if strategy == "pretrained":
        return load_pretrained(tokenizer_path, pad)
    if strategy == "model":  # model_source="pretrained": the model's own tokenizer, named by tokenizer_path
        return load_model_tokenizer(tokenizer_path, classify=pad)
    raise TokenizerError(f"tokenizer_strategy={strategy!r} is unknown; choose 'char', 'byte', 'bpe' or 'pretrained'")


def build_bpe(blocks: Callable[[], Iterable[str]], vocab_size: int, cache_file: Optional[Path],
              size_bytes: Optional[int] = None) -> LibraryTokenizer:
    """Byte-level BPE trained on the blocks, or the one cached at cache_file by an earlier run.

    A corpus over BPE_SAMPLE_BYTES trains on every k-th block (merges settle long before hundreds
    of MB; training time and memory grow with the text), deterministically, and says so."""
    from tokenizers import Tokenizer

    if cache_file is not None and cache_file.exists():
        print(f"Tokenizer: byte-level BPE from cache {cache_file}")
        return LibraryTokenizer(Tokenizer.from_file(str(cache_file)), "bpe", 0)
    stride = -(-size_bytes // BPE_SAMPLE_BYTES) if size_bytes else 1
    tokenizer = train_bpe(itertools.islice(blocks(), 0, None, stride), vocab_size)
    trained = tokenizer.get_vocab_size()
    note = "" if trained == vocab_size else f" (the data has too few distinct byte pairs for {vocab_size})"
    sample = f" on 1 block in {stride} of the text (about {size_bytes / stride / 2**20:.0f} MB)" if stride > 1 else ""
    print(f"Tokenizer: trained byte-level BPE with {trained} ids{sample}{note}")
    if cache_file is not None:
        _cache_bpe(tokenizer, cache_file)
    return LibraryTokenizer(tokenizer, "bpe", 0)


def train_bpe(blocks: Iterable[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # decode(encode(t)) == t
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD_TOKEN], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    pieces = (piece for block in blocks for piece in split_at_line_breaks(block, PIECE_CHARS))
    tokenizer.train_from_iterator(pieces, trainer=trainer)
    return tokenizer


def _cache_bpe(tokenizer, cache_file: Path) -> None:
    """Write beside the data, atomically; a read-only data folder only costs the cache."""
    try:
        atomic_write_text(cache_file, tokenizer.to_str())  # Python I/O: failures are OSErrors
    except OSError as e:
        print(f"Tokenizer: could not cache the BPE at {cache_file} ({e.strerror or e}); the next run trains it again")


def load_pretrained(path_or_name: str, pad: bool) -> LibraryTokenizer:
    """A tokenizer.json file or a folder holding one; on Colab also a Hugging Face name (transformers)."""
    path = Path(path_or_name).expanduser()
    if path.is_dir():
        path = path / HF_FILENAME
    if path.is_file():
        from tokenizers import Tokenizer

        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as e:  # the Rust side raises a plain Exception for a malformed file
            raise TokenizerError(f"{path} is not a tokenizers-format tokenizer.json ({e})") from None
        pad_token = _configured_pad_token(path.parent)
    else:
        tokenizer, pad_token = _load_by_name(path_or_name, path)
    pad_id = _pad_id(tokenizer, pad_token) if pad else None
    return LibraryTokenizer(tokenizer, "pretrained", pad_id)


def _load_by_name(name: str, path: Path):
    looks_like_path = name.startswith((".", "/", "~")) or (path.parent != Path(".") and path.parent.exists())
    if looks_like_path:
        raise MissingFileError(f"No pretrained tokenizer at {path}: tokenizer_path needs a folder holding "
                                f"{HF_FILENAME} (the file itself works too).")
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise TokenizerError(f"tokenizer_path={name!r} is not a folder here; loading a tokenizer by name needs "
                             "the transformers library and internet (pip install transformers, as on Colab), "
                             f"or give a local folder holding {HF_FILENAME}") from None
    from utils.hub_offline import cached_only

    try:
        hf = AutoTokenizer.from_pretrained(name, local_files_only=cached_only(name, "tokenizer_path"))
    except OSError as e:
        raise TokenizerError(f"Could not load tokenizer {name!r} from the Hugging Face Hub ({e}). "
                             "Offline? Give a local folder holding tokenizer.json instead.") from None
    if not getattr(hf, "is_fast", False):
        raise TokenizerError(f"Tokenizer {name!r} has no fast (tokenizers-library) version; pick another")
    return hf.backend_tokenizer, hf.pad_token


def _configured_pad_token(folder: Path) -> Optional[str]:
    """The pad token a transformers-style tokenizer_config.json names, if the folder has one."""
    config = folder / "tokenizer_config.json"
    if not config.is_file():
        return None
    pad = json.loads(config.read_text(encoding="utf-8")).get("pad_token")
    return pad.get("content") if isinstance(pad, dict) else pad


def _pad_id(tokenizer, pad_token: Optional[str]) -> int:
    if tokenizer.padding is not None:
        return tokenizer.padding["pad_id"]
    for name in ([pad_token] if pad_token else []) + list(PAD_TOKEN_NAMES):
        if tokenizer.token_to_id(name) is not None:
            return tokenizer.token_to_id(name)
    # GPT-2 style: no pad token at all. Padding must be explicit, so add one (PITFALLS.md).
    tokenizer.add_special_tokens([PAD_TOKEN])
    pad_id = tokenizer.token_to_id(PAD_TOKEN)
    print(f"Tokenizer: the pretrained tokenizer has no pad token; added {PAD_TOKEN!r} as id {pad_id}")
    return pad_id


# ---------------------------------------------------------------------------------------------- loading

def load_tokenizer(folder: str | Path):
    """Read back any tokenizer that save(folder) wrote."""
    folder = Path(folder)
    path = folder / META_FILENAME
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MissingFileError(f"No tokenizer in {folder} (expected {META_FILENAME})") from None
    kind = meta.get("kind")
    if kind == "char":
        return CharTokenizer(meta["chars"], meta.get("pad", False))
    if kind == "byte":
        return ByteTokenizer(meta.get("pad", False))
    if kind == "pretrained" and (folder / HF_TOKENIZER_DIRNAME).is_dir():  # a pretrained model's own
        return load_saved_tokenizer(folder, meta.get("add_special_tokens", False))
    if kind in ("bpe", "pretrained"):
        from tokenizers import Tokenizer

        return LibraryTokenizer(Tokenizer.from_file(str(folder / HF_FILENAME)), kind, meta.get("pad_id"),
                                meta.get("add_special_tokens", False))
    raise TokenizerError(f"{path} names an unknown tokenizer kind {kind!r}")


def tokenizer_fingerprint(tokenizer) -> str:
    """Short hash of everything save() writes: equal fingerprints encode text identically."""
    digest = hashlib.sha256()
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save(Path(tmp))
        # Files only: a pretrained model's transformers/ copy holds the same tokenizer, and older runs lack it.
        for path in sorted(p for p in Path(tmp).iterdir() if p.is_file()):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def _write_meta(folder: Path, meta: dict) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / META_FILENAME).write_text(json.dumps(meta, ensure_ascii=False) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------- model_source="pretrained"

class ModelTokenizer(LibraryTokenizer):
    """A pretrained model's own tokenizer: the kit's LibraryTokenizer (kind "pretrained") on its fast backend,
    keeping the transformers tokenizer so an export can save_pretrained it beside the model."""

    def __init__(self, hf_tokenizer, classify: bool):
        super().__init__(hf_tokenizer.backend_tokenizer, "pretrained", hf_tokenizer.pad_token_id,
                         add_special_tokens=classify)
        self.hf = hf_tokenizer

    def save(self, folder: Path) -> None:
        """The kit's files, and beside them transformers' own (HF_TOKENIZER_DIRNAME): a run folder then exports as
        train()'s result does, with the tokenizer's special tokens and settings."""
        super().save(folder)
        self.hf.save_pretrained(Path(folder) / HF_TOKENIZER_DIRNAME)


def load_saved_tokenizer(folder: Path, classify: bool) -> ModelTokenizer:
    """A ModelTokenizer that save() wrote (a run folder's tokenizer/)."""
    transformers = require_transformers()
    return ModelTokenizer(transformers.AutoTokenizer.from_pretrained(Path(folder) / HF_TOKENIZER_DIRNAME), classify)


def load_model_tokenizer(name: str, classify: bool) -> ModelTokenizer:
    """The model's own tokenizer; without a pad token (GPT-2) it pads with its end-of-text token."""
    source = resolve_source(name)
    transformers = require_transformers()
    try:
        hf = transformers.AutoTokenizer.from_pretrained(source, local_files_only=cached_only_source(source))
    except (OSError, ValueError) as e:
        raise PretrainedError(f"Could not load the tokenizer of pretrained_model={name!r} ({first_line(e)}). "
                              f"{where_hint(source, e)}") from None
    if not getattr(hf, "is_fast", False):
        raise PretrainedError(f"The tokenizer of {name!r} has no fast (tokenizers-library) version, which the kit "
                              "encodes with; pick another model")
    if hf.pad_token is None:
        if hf.eos_token is None:
            raise PretrainedError(f"The tokenizer of {name!r} has neither a pad nor an end-of-text token to pad "
                                  "with; set its pad_token and save_pretrained it to a folder, then use that folder")
        # Padding must be explicit (PITFALLS.md). Reusing eos keeps the embedding's size; the attention mask
        # (and for a GPT-2 classifier, the last non-pad position) keeps padding out of what the model reads.
        hf.pad_token = hf.eos_token
        print(f"Tokenizer: {name!r} has no pad token; padding with its end-of-text token {hf.eos_token!r} "
              f"(id {hf.pad_token_id})")
    return ModelTokenizer(hf, classify)


def chat_tokenizer(tokenizer, config):
    """The transformers tokenizer whose chat template formats the message: the run's own, or the pretrained
    model's (a run loaded from its folder keeps only the token vocabulary)."""
    hf = getattr(tokenizer, "hf", None)
    if hf is None and config.model_source == "pretrained":
        hf = load_model_tokenizer(config.pretrained_model, classify=False).hf
    if hf is None or not getattr(hf, "chat_template", None):
        what = config.pretrained_model or "this model"
        raise TokenizerError(f"chat needs a tokenizer with a chat template, and {what!r} has none (a base model, "
                             "not an -Instruct or chat one); continue text with generate(prompt) instead")
    return hf
