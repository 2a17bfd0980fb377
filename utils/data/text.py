"""Text for language modelling: a token stream cut into (input, target) windows.

The one place where targets are shifted against inputs is TokenWindows.__getitem__.
The corpus is encoded block by block into one compact tensor (uint8 / int16 / int32 by vocabulary
size), so a large file is held once, as tokens, never as text plus Python lists. The tokens are
also written to a cache file that later runs (a resume, a second experiment) memory-map instead
of encoding again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

import torch
from torch.utils.data import Dataset

from utils.data.sources import DataError
from utils.data.tokenizers import TokenizerError
from utils.files import atomic_writer

EMBEDDED_DIR = Path(__file__).parent / "embedded"


def embedded_path(name: str) -> Path:
    return EMBEDDED_DIR / f"{name}.txt"


class TokenWindows(Dataset):
    """Windows of seq_len tokens; the target is the input shifted by one token."""

    def __init__(self, tokens: torch.Tensor, seq_len: int, starts: torch.Tensor):
        self.tokens, self.seq_len, self.starts = tokens, seq_len, starts

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = int(self.starts[i])
        chunk = self.tokens[s: s + self.seq_len + 1].long()  # (T + 1,)
        return chunk[:-1], chunk[1:]  # input (T,), target (T,)


@dataclass
class LMSplit:
    train: TokenWindows
    val: TokenWindows
    num_tokens: int


def split_windows(tokens: torch.Tensor, seq_len: int, val_split: float, seed: int) -> LMSplit:
    """Cut tokens into non-overlapping windows and assign them to train/val by a seeded shuffle."""
    n = (len(tokens) - 1) // seq_len
    n_val = round(n * val_split)
    if n < 2 or n_val < 1 or n - n_val < 1:
        raise DataError(f"The dataset has {len(tokens)} tokens: only {n} sequences of max_seq_len={seq_len}, "
                         f"too few for a train/val split at val_split={val_split}. "
                         "Use more text or a smaller max_seq_len.")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) * seq_len
    return LMSplit(TokenWindows(tokens, seq_len, order[n_val:]), TokenWindows(tokens, seq_len, order[:n_val]), len(tokens))


def token_dtype(vocab_size: int) -> torch.dtype:
    """The smallest dtype that holds every id: uint8 for byte-sized vocabularies, else int16 or int32."""
    if vocab_size <= 256:
        return torch.uint8
    return torch.int16 if vocab_size <= 32767 else torch.int32


def encode_blocks(tokenizer, blocks: Iterable[str], size_hint: Optional[int] = None) -> torch.Tensor:
    """Encode text blocks into one compact 1-D tensor.

    size_hint: an upper bound on the token count (the corpus size in bytes bounds every byte-level
    tokenizer). The buffer is allocated once at that size; pages never written are never touched,
    so the unused tail costs address space, not memory. Without a hint (or past it) the buffer grows.
    """
    vocab_size = tokenizer.vocab_size
    buffer = torch.empty(max(size_hint or 0, 1 << 16), dtype=token_dtype(vocab_size))
    n = 0
    for block in blocks:
        ids = tokenizer.encode_tensor(block)
        if len(ids) and int(ids.max()) >= vocab_size:  # would crash deep in the embedding on a GPU
            raise TokenizerError(f"The {tokenizer.kind} tokenizer produced id {int(ids.max())}, outside its "
                             f"vocabulary of {vocab_size}; the tokenizer files are inconsistent.")
        if n + len(ids) > len(buffer):
            grown = torch.empty(max(n + len(ids), len(buffer) * 3 // 2), dtype=buffer.dtype)
            grown[:n] = buffer[:n]
            buffer = grown
        buffer[n: n + len(ids)] = ids
        n += len(ids)
    return buffer[:n]


def encode_cached(tokenizer, blocks: Callable[[], Iterable[str]], size_hint: Optional[int],
                  cache_file: Optional[Path]) -> torch.Tensor:
    """The corpus's tokens: memory-mapped from cache_file when an earlier run wrote it, else encoded
    (and written there). The name of cache_file must fingerprint both the data and the tokenizer."""
    dtype = token_dtype(tokenizer.vocab_size)
    if cache_file is not None and cache_file.is_file():
        print(f"Data: tokens from cache {cache_file}")
        count = cache_file.stat().st_size // dtype.itemsize
        return torch.from_file(str(cache_file), shared=False, size=count, dtype=dtype)  # pages load on use
    tokens = encode_blocks(tokenizer, blocks(), size_hint)
    if cache_file is not None and len(tokens):
        save_tokens(tokens, cache_file)
    return tokens


def save_tokens(tokens: torch.Tensor, cache_file: Path) -> None:
    """Raw token values, written atomically; a folder that can't be written only costs the cache."""
    try:
        with atomic_writer(cache_file) as f:
            f.write(memoryview(tokens.numpy()))
    except OSError as e:
        print(f"Data: could not cache the tokens at {cache_file} ({e.strerror or e}); the next run encodes again")
