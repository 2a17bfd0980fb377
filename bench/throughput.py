"""Throughput of the kit's train() against two hand-written PyTorch loops, and start-up time.

    pip install -e .    # once: makes utils and templates importable
    python bench/throughput.py [--steps 200] [--rounds 3] [--size tiny] [--seq 128] [--batch 16] [--clock cpu]

Three sides per round, interleaved so that background load hits all alike:
- the kit-shaped hand loop (bench/hand_loop.py): the kit's model, loader, AdamW options, schedule and
  clipping without Lightning; kit / hand loop is what Lightning and the kit's callbacks cost;
- the minimal loop (bench/minimal_loop.py): a nanoGPT-style loop written without the kit's builder
  (its own GPT of the same shape and parameter count, batches cut by index from the token tensor);
  it cannot move with the kit, so kit / minimal loop is the kit against a hand-written trainer;
- the kit's train() with its default callbacks on (progress bar, checkpointing, metric logging).
Each times steps 6..N in wall time (--clock cpu: the process's CPU time, for a CPU run on a machine
that other programs share). Prints each round's tokens/s and ratios with the load average, then medians.

Start-up: seconds from launching `python -c "<train one step with the kit>"` to its first
optimizer step, against launching `python -c "import torch, pytorch_lightning"` (the floor).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import pytorch_lightning as pl
import torch

from hand_loop import hand_loop_tokens_per_sec  # bench/ is on sys.path when a script in it runs
from minimal_loop import minimal_tokens_per_sec
from utils.config import WizardConfig
from utils.data.text import embedded_path
from utils.training import train
from utils.precision import resolve_precision

REPO_ROOT = Path(__file__).resolve().parents[1]

SKIP = 5  # warm-up steps left out of the timing on both sides
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


class StepClock(pl.Callback):
    """Times the kit from the start of batch SKIP+1 to the end of the last step."""

    def __init__(self, clock: Callable[[], float]):
        self.clock = clock
        self.t0 = self.t1 = None
        self.tokens = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == SKIP and self.t0 is None:
            self.t0 = self.clock()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.t0 is not None:
            self.tokens += batch[0].numel()
            self.t1 = self.clock()


def kit_tokens_per_sec(config: WizardConfig, out: Path, clock: Callable[[], float] = time.perf_counter) -> float:
    step_clock = StepClock(clock)
    train(config.replace(output_dir=str(out)), extra_callbacks=[step_clock])
    return step_clock.tokens / (step_clock.t1 - step_clock.t0)


def loop_tokens_per_sec(config: WizardConfig, clock: Callable[[], float] = time.perf_counter) -> float:
    """The same training written by hand (bench/hand_loop.py): no Lightning, no callbacks, no logging."""
    decision = resolve_precision(config.use_mixed_precision, config.precision)
    return hand_loop_tokens_per_sec(config, decision, SKIP, config.max_steps - SKIP, clock)


def minimal_loop_tokens_per_sec(config: WizardConfig, clock: Callable[[], float] = time.perf_counter) -> float:
    """The nanoGPT-style loop (bench/minimal_loop.py) on the same corpus, shape, batch and schedule."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tps, _ = minimal_tokens_per_sec(embedded_path(config.dataset_name), config.model_size, config.max_seq_len,
                                    config.batch_size, config.learning_rate, config.warmup_ratio, SKIP,
                                    config.max_steps - SKIP, clock, config.seed, device)
    return tps


def load() -> str:
    return "load " + " / ".join(f"{x:.2f}" for x in os.getloadavg())


def startup_seconds(python_code: str) -> float:
    """Seconds from launching `python -c code` until it prints READY."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", python_code], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:
        if "READY" in line:  # the kit's progress bar may lead the line
            elapsed = time.perf_counter() - t0
            proc.kill()
            proc.wait()
            return elapsed
    raise RuntimeError(f"the start-up run exited with code {proc.wait()} before printing READY; run its code by "
                       f"hand to see why:\n{python_code}")


# Both print READY when done and are timed to that line: the interpreter's exit (over a second with
# torch loaded) is left out of both.
IMPORT_CODE = 'import torch, pytorch_lightning; print("READY", flush=True)'
FIRST_STEP_CODE = """
import sys, tempfile, pytorch_lightning as pl
from utils.config import WizardConfig
from utils.training import train
class First(pl.Callback):
    def on_train_batch_end(self, trainer, *args):
        print("READY", flush=True); sys.exit(0)
cfg = WizardConfig(output_dir=tempfile.mkdtemp(), max_steps=1)
train(cfg, extra_callbacks=[First()])
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--startup-rounds", type=int, default=3)
    parser.add_argument("--clock", choices=CLOCKS, default="wall",
                        help="wall: elapsed time; cpu: this process's CPU time, which other programs "
                             "on a shared machine disturb less (CPU training only)")
    args = parser.parse_args()
    clock = CLOCKS[args.clock]

    config = WizardConfig(model_size=args.size, max_seq_len=args.seq, batch_size=args.batch, max_steps=args.steps,
                          max_epochs=100, log_every_n_steps=10)
    decision = resolve_precision(config.use_mixed_precision, config.precision)
    print(f"device: {decision.device.describe()}; precision {decision.precision}; torch {torch.__version__}, "
          f"lightning {pl.__version__}; model {args.size}, batch {args.batch} x {args.seq} tokens, "
          f"{args.steps} steps (first {SKIP} untimed); {args.clock} clock")
    kit, loop, minimal = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            loop.append(loop_tokens_per_sec(config, clock))
            minimal.append(minimal_loop_tokens_per_sec(config, clock))
            kit.append(kit_tokens_per_sec(config, Path(tmp) / f"kit{r}", clock))
            print(f"round {r + 1}: hand loop {loop[-1]:,.0f}, minimal loop {minimal[-1]:,.0f}, kit {kit[-1]:,.0f} "
                  f"tok/s; kit/hand {kit[-1] / loop[-1]:.3f}, kit/minimal {kit[-1] / minimal[-1]:.3f}; {load()}",
                  flush=True)
    k, h, m = (statistics.median(x) for x in (kit, loop, minimal))
    print(f"median: hand loop {h:,.0f}, minimal loop {m:,.0f}, kit {k:,.0f} tok/s; "
          f"kit/hand = {k / h:.3f}, kit/minimal = {k / m:.3f}; {load()}")

    floor, first = [], []
    for _ in range(args.startup_rounds):  # alternating, as the training rounds do
        floor.append(startup_seconds(IMPORT_CODE))
        first.append(startup_seconds(FIRST_STEP_CODE))
        print(f"start-up round {len(first)}: import {floor[-1]:.2f} s, kit {first[-1]:.2f} s; {load()}", flush=True)
    print(f"start-up: import torch+lightning {statistics.median(floor):.2f} s; kit to first optimizer step "
          f"{statistics.median(first):.2f} s (median of {args.startup_rounds}); "
          f"overhead over the floor {statistics.median(first) - statistics.median(floor):.2f} s, "
          f"kit/floor = {statistics.median(first) / statistics.median(floor):.3f}")


if __name__ == "__main__":
    main()
