"""Lightning's CheckpointIO plugin writing each checkpoint to a temp file in its own folder, fsynced,
then renamed over the target (utils.files). Lightning's default goes through the system temp folder
and a move, which on Google Drive is a copy a kill can tear. A full disk (or Drive quota) is named
as such, with the size the checkpoint needs; torch reports it as a RuntimeError without the errno."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path
from typing import Any, Optional

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from utils.errors import KitError
from utils.files import atomic_writer


class DiskFullError(KitError, OSError):
    """A checkpoint that did not fit on the disk (or in the Google Drive quota) holding output_dir."""


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        writer = None
        try:
            with atomic_writer(path) as f:
                writer = _WriteErrors(f)
                torch.save(checkpoint, writer)
        except (OSError, RuntimeError) as e:
            cause = e if isinstance(e, OSError) else writer and writer.error
            if getattr(cause, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFullError(_disk_full_message(Path(path), checkpoint)) from None
            raise


class _WriteErrors:
    """The file torch.save writes through, keeping the OSError a write raised: torch reports it as a RuntimeError
    ("unexpected pos") without its errno, so a full disk would read as a bug."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def _disk_full_message(path: Path, checkpoint: dict) -> str:
    needed = sum(t.numel() * t.element_size() for t in _tensors(checkpoint))
    free = shutil.disk_usage(path.parent).free
    return (f"No space left on the disk holding {path.parent} (or your Google Drive quota) for {path.name}: the "
            f"checkpoint needs about {needed / 2**20:,.1f} MB, {free / 2**20:,.1f} MB are free. Free some space or "
            f"choose an output_dir with room, then run again" + (f"; the {path.name} from before is intact."
                                                                  if path.exists() else "."))


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)
