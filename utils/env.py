"""Where are we running: Colab or not, and which accelerator with which capability."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from typing import Optional

import torch


@dataclass(frozen=True)
class DeviceInfo:
    """The facts precision depends on. Built by detect_device(); tests build their own (T4, A100)."""

    kind: str  # "cuda", "mps" or "cpu"
    name: str  # e.g. "Tesla T4", "NVIDIA A100-SXM4-40GB", "CPU"
    capability: Optional[tuple[int, int]] = None  # CUDA compute capability, e.g. (7, 5) on a T4
    total_memory_bytes: Optional[int] = None  # accelerator memory, None on CPU

    def describe(self) -> str:
        if self.kind == "cuda" and self.capability:
            return f"{self.name} (compute capability {self.capability[0]}.{self.capability[1]})"
        return self.name


def detect_device() -> DeviceInfo:
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return DeviceInfo("cuda", props.name, (props.major, props.minor), props.total_memory)
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return DeviceInfo("mps", "Apple MPS")
    return DeviceInfo("cpu", "CPU")


def in_colab() -> bool:
    """True inside a Google Colab runtime (its google.colab module is importable)."""
    if "google.colab" in sys.modules:
        return True
    try:
        return importlib.util.find_spec("google.colab") is not None
    except ModuleNotFoundError:  # no "google" namespace package at all
        return False
