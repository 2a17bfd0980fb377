"""Where are we running: Colab or not, and which accelerator with which capability."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from typing import Optional

import torch

from utils.errors import KitError


class MixedGPUsError(KitError, RuntimeError):
    """The GPUs a multi-device run would use differ; one precision decision cannot hold for all of them."""


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


def detect_device(devices: int = 1) -> DeviceInfo:
    """The accelerator training runs on. devices: how many GPUs it will use (0: every visible one); they
    must all be the same model, since one precision decision holds for all of them."""
    if torch.cuda.is_available():
        count = torch.cuda.device_count() if devices == 0 else min(devices, torch.cuda.device_count())
        gpus = [_gpu(i) for i in range(max(count, 1))]
        kinds = {(gpu.name, gpu.capability) for gpu in gpus}
        if len(kinds) > 1:
            listed = ", ".join(f"GPU {i}: {gpu.describe()}" for i, gpu in enumerate(gpus))
            raise MixedGPUsError(f"the {len(gpus)} GPUs this run would use differ ({listed}); one precision holds "
                                 "for every process, so use GPUs of one model: set CUDA_VISIBLE_DEVICES to those, "
                                 "or lower devices")
        return gpus[0]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return DeviceInfo("mps", "Apple MPS")
    return DeviceInfo("cpu", "CPU")


def _gpu(index: int) -> DeviceInfo:
    props = torch.cuda.get_device_properties(index)
    return DeviceInfo("cuda", props.name, (props.major, props.minor), props.total_memory)


def in_colab() -> bool:
    """True inside a Google Colab runtime (its google.colab module is importable)."""
    if "google.colab" in sys.modules:
        return True
    try:
        return importlib.util.find_spec("google.colab") is not None
    except ModuleNotFoundError:  # no "google" namespace package at all
        return False


def read_colab_secret(name: str) -> tuple[Optional[str], str]:
    """(value, "") from Colab's Secrets panel, or (None, why not) in words a person can act on. Older Colab
    releases lack some of the error classes; each is caught by name where it exists."""
    try:
        from google.colab import userdata
    except ImportError:
        return None, f"no {name} in the environment and this Colab has no Secrets API"
    reasons = {"SecretNotFoundError": f"no {name} secret in Colab (add it in the key-icon Secrets panel)",
               "NotebookAccessError": f"this notebook has no access to the {name} secret (switch on "
                                      "'Notebook access' for it in the Secrets panel)",
               "TimeoutException": "reading Colab secrets timed out (they can only be read from the Colab UI)"}
    known = tuple(cls for cls in (getattr(userdata, n, None) for n in reasons) if isinstance(cls, type))
    try:
        value = userdata.get(name)
    except known as e:
        return None, next(why for n, why in reasons.items() if type(e).__name__ == n)
    return (value.strip(), "") if value and value.strip() else (None, f"the {name} secret in Colab is empty")


def available_host_bytes() -> Optional[int]:
    """The host RAM a process can still take without swapping (Linux's MemAvailable); None where the OS does not say.
    On Colab this, not the GPU, is what a model copied to the CPU runs out of (12.7 GB on the free tier)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None
