"""fp32 against mixed precision for the same model on this machine, through the one training core.

Each precision trains the same config (same seed, same data order) for config.max_steps optimizer
steps with utils.training; a callback times the steps and tracks peak memory. Used by
notebooks/amp_benchmark.ipynb:

    report = run_amp_benchmark(WizardConfig(max_steps=50))
    print(report.table()); print(report.verdict())
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytorch_lightning as pl
import torch

from utils.config import WizardConfig
from utils.env import DeviceInfo, detect_device
from utils.training import train
from utils.precision import resolve_precision

# A CPU runtime trains the notebook's GPU sizes for many minutes and shows nothing about AMP on a GPU:
# there the benchmark shrinks to sizes that finish both runs in about a minute.
CPU_SIZES = {"model_size": "tiny", "batch_size": 8, "max_seq_len": 64, "max_steps": 50, "val_split": 0.02}

LABELS = {"32-true": "fp32", "16-mixed": "fp16 autocast + GradScaler", "bf16-mixed": "bf16 autocast"}


@dataclass(frozen=True)
class BenchmarkRow:
    precision: str  # Lightning's string: "32-true", "16-mixed", "bf16-mixed"
    steps_per_sec: float  # optimizer steps per second, warm-up steps excluded
    tokens_per_sec: float  # training tokens per second, warm-up steps excluded
    peak_memory_bytes: int  # see AmpBenchmark.memory_kind
    train_loss: float  # training loss at the last step
    val_loss: float  # validation loss after the last step

    @property
    def label(self) -> str:
        return LABELS[self.precision]


@dataclass(frozen=True)
class AmpBenchmark:
    device: DeviceInfo
    steps: int  # optimizer steps each precision trained
    timed_steps: int  # steps the speed is averaged over (the first ones warm up and are left out)
    memory_kind: str  # what peak_memory_bytes measures on this device
    rows: list[BenchmarkRow]  # fp32 first, then the mixed precision

    def table(self) -> str:
        head = f"{'precision':<28}{'steps/s':>9}{'tokens/s':>11}{'peak MiB':>10}{'train loss':>12}{'val loss':>10}"
        lines = [head] + [
            f"{r.label:<28}{r.steps_per_sec:>9.2f}{r.tokens_per_sec:>11,.0f}{r.peak_memory_bytes / 2**20:>10,.0f}"
            f"{r.train_loss:>12.4f}{r.val_loss:>10.4f}" for r in self.rows]
        lines.append(f"peak memory: {self.memory_kind}; speed averaged over steps "
                     f"{self.steps - self.timed_steps + 1}-{self.steps} of {self.steps}")
        return "\n".join(lines)

    def verdict(self) -> str:
        fp32, mixed = self.rows
        speedup = mixed.steps_per_sec / fp32.steps_per_sec
        memory = mixed.peak_memory_bytes / fp32.peak_memory_bytes
        loss = (f"after {self.steps} steps the validation loss is {mixed.val_loss:.4f} against "
                f"{fp32.val_loss:.4f} in fp32 ({(mixed.val_loss - fp32.val_loss) / fp32.val_loss:+.2%}).")
        if self.device.kind == "cuda":
            return (f"On {self.device.describe()}, {mixed.label} ran {speedup:.2f}x the steps/s of fp32 "
                    f"with {memory:.2f}x its peak memory; {loss}")
        return (f"Measured on {self.device.describe()}, not a GPU: {mixed.label} ran {speedup:.2f}x the steps/s "
                f"of fp32 with {memory:.2f}x its peak memory. That ratio is about how this CPU runs fp16 "
                f"math; it does not predict what mixed precision gains on a GPU with tensor cores. Run this "
                f"notebook on a GPU runtime (Runtime > Change runtime type > T4 GPU) to measure that. "
                f"Loss parity: {loss}")


class StepTimer(pl.Callback):
    """Times each training batch and tracks the peak memory of this run."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.batch_seconds: list[float] = []
        self.batch_tokens: list[int] = []
        self.peak_rss = 0
        self._t0 = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        self.batch_seconds.append(time.perf_counter() - self._t0)
        self.batch_tokens.append(batch[0].numel())
        self.peak_rss = max(self.peak_rss, current_rss_bytes())

    def peak_memory(self) -> int:
        return torch.cuda.max_memory_allocated() if self.cuda else self.peak_rss


def current_rss_bytes() -> int:
    """Resident memory of this process now (Linux /proc); elsewhere the process's lifetime peak."""
    statm = Path("/proc/self/statm")
    if statm.exists():
        return int(statm.read_text().split()[1]) * resource.getpagesize()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def fit_to_device(config: WizardConfig, device: DeviceInfo) -> WizardConfig:
    """The config on a GPU; on a CPU the config with CPU_SIZES, and a line saying so."""
    if device.kind == "cuda":
        return config
    shrunk = config.replace(**CPU_SIZES)
    print(f"No GPU on this runtime ({device.describe()}): the benchmark runs at "
          + ", ".join(f"{k}={v}" for k, v in CPU_SIZES.items())
          + " so both runs finish in about a minute. The sizes in the form above are for a GPU, where "
            "mixed precision's effect shows: Runtime > Change runtime type > T4 GPU, then Run all.")
    return shrunk


def mixed_precision_for(device: DeviceInfo) -> str:
    """The mixed precision the training core would pick here; fp16 + GradScaler where it picks fp32."""
    decision = resolve_precision(True, "auto", device)
    return decision.precision if decision.precision != "32-true" else "16-mixed"


def run_amp_benchmark(config: WizardConfig, device: Optional[DeviceInfo] = None,
                      warmup_steps: Optional[int] = None) -> AmpBenchmark:
    """Train config (max_steps of it) in fp32 and in mixed precision; time, measure, compare.

    Checkpoints go to a temporary folder that is removed afterwards.
    """
    if config.max_steps is None:
        raise ValueError("max_steps is None; the benchmark needs a step count, e.g. config.replace(max_steps=50)")
    device = device or detect_device()
    warmup = min(5, config.max_steps // 4) if warmup_steps is None else warmup_steps
    if not 0 <= warmup < config.max_steps:
        raise ValueError(f"warmup_steps={warmup} must be in [0, max_steps={config.max_steps})")
    rows = []
    with tempfile.TemporaryDirectory(prefix="amp-benchmark-") as tmp:
        for precision in ("32-true", mixed_precision_for(device)):
            print(f"--- {LABELS[precision]}, {config.max_steps} steps")
            mixed = precision != "32-true"
            run = config.replace(use_mixed_precision=mixed, precision=precision if mixed else "auto",
                                 output_dir=str(Path(tmp) / precision), resume=False,
                                 early_stopping_patience=0, wandb_mode="disabled")
            rows.append(_measure(run, device, warmup))
    memory_kind = ("torch.cuda.max_memory_allocated (tensors on the GPU)" if device.kind == "cuda"
                   else "resident memory (RSS) of the whole Python process, sampled after each step")
    return AmpBenchmark(device, config.max_steps, config.max_steps - warmup, memory_kind, rows)


def _measure(config: WizardConfig, device: DeviceInfo, warmup: int) -> BenchmarkRow:
    timer = StepTimer(cuda=device.kind == "cuda")
    result = train(config, device=device, extra_callbacks=[timer])
    accum = config.gradient_accumulation_steps
    seconds = sum(timer.batch_seconds[warmup * accum:])
    tokens = sum(timer.batch_tokens[warmup * accum:])
    timed_steps = (len(timer.batch_seconds) - warmup * accum) / accum
    return BenchmarkRow(result.precision, timed_steps / seconds, tokens / seconds, timer.peak_memory(),
                        result.train_history[-1][1], result.val_loss)
