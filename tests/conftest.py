"""Shared test fixtures. The repo root is put on sys.path so `utils` and `templates` import."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from utils.config import WizardConfig  # noqa: E402


@pytest.fixture(scope="session")
def small_text(tmp_path_factory) -> Path:
    """The first 40 kB of the embedded corpus: ~1,100 training sequences of 32 characters."""
    path = tmp_path_factory.mktemp("data") / "small.txt"
    text = (REPO_ROOT / "utils/data/embedded/python_reference.txt").read_text(encoding="utf-8")
    path.write_text(text[:40_000], encoding="utf-8")
    return path


@pytest.fixture
def tiny_config(tmp_path, small_text) -> WizardConfig:
    """A run small enough to train in a few seconds on a CPU."""
    return WizardConfig(dataset_source="file", dataset_path=str(small_text), max_seq_len=32, batch_size=8,
                        max_steps=8, max_epochs=1, learning_rate=3e-3, warmup_ratio=0.0, log_every_n_steps=1,
                        output_dir=str(tmp_path / "run"))
