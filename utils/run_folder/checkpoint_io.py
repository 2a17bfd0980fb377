"""Lightning's CheckpointIO plugin writing each checkpoint to a temp file in its own folder, fsynced,
then renamed over the target (utils.files). Lightning's default goes through the system temp folder
and a move, which on Google Drive is a copy a kill can tear."""

from __future__ import annotations

from typing import Any, Optional

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from utils.files import atomic_writer


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        with atomic_writer(path) as f:
            torch.save(checkpoint, f)
