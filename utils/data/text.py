"""Text for language modelling: the embedded corpus or a file, cut into (input, target) windows.

The one place where targets are shifted against inputs is TokenWindows.__getitem__.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

EMBEDDED_DIR = Path(__file__).parent / "embedded"


def embedded_path(name: str) -> Path:
    return EMBEDDED_DIR / f"{name}.txt"


def read_text_file(path: str | Path) -> str:
    """The file's text, or an error that names the path and what is wrong with it."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"Dataset file not found: {path}. Check dataset_path "
                                "(on Colab, mount Google Drive first for /content/drive/... paths).")
    if path.is_dir():
        raise IsADirectoryError(f"Dataset path {path} is a folder; give the path of a text file inside it.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"Dataset file {path} is not UTF-8 text (undecodable byte at offset {e.start}); "
                         "save it as UTF-8.") from None
    if not text.strip():
        raise ValueError(f"Dataset file {path} is empty; it needs some text to train on.")
    return text


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
        raise ValueError(f"The dataset has {len(tokens)} tokens: only {n} sequences of max_seq_len={seq_len}, "
                         f"too few for a train/val split at val_split={val_split}. "
                         "Use more text or a smaller max_seq_len.")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) * seq_len
    return LMSplit(TokenWindows(tokens, seq_len, order[n_val:]), TokenWindows(tokens, seq_len, order[:n_val]), len(tokens))


def to_token_tensor(ids: list[int], vocab_size: int) -> torch.Tensor:
    """Compact storage: int16 where the vocabulary fits, else int32."""
    dtype = torch.int16 if vocab_size <= 32767 else torch.int32
    return torch.tensor(ids, dtype=dtype)
