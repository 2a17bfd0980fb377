"""GPU benchmark: the kit against a hand-written PyTorch loop, in fp32 and in the kit's mixed precision.

    pip install -e .    # once: makes utils and templates importable
    python bench/gpu.py [--templates gpt classifier] [--sizes small base] [--seq 256 512] [--batch 32 16]
                        [--warmup 10] [--steps 60] [--rounds 1] [--json results.json]
    python bench/gpu.py --smoke    # a tiny model for a few steps: checks the script end to end

For each template and size it trains in fp32 ('32-true') and in the mixed precision the kit picks for
this GPU (resolve_precision(True, "auto"): fp16 + GradScaler on a T4 or V100, bf16 on Ampere and
newer), by both sides in turn: a hand-written loop, then the kit (utils.training.train, default
callbacks on), `--rounds` such pairs (medians reported). The loop has the same model, seed, batches,
AdamW groups, warmup+cosine schedule, clipping, autocast and GradScaler; it never reads the loss back,
as the kit reads it only every log_every_n_steps. Each run times `--steps` optimizer steps after
`--warmup` untimed ones, the GPU drained at both ends, all inside the first epoch (the corpus is sized
for that), so neither validation nor a checkpoint falls in the timed stretch.

Prints one table: tokens/s of kit and loop and their ratio, the kit's model FLOPs utilisation (MFU)
against the GPU's datasheet peak for the dtype its matmuls run in, and the peak memory
(torch.cuda.max_memory_allocated, reset before each run) next to the kit's own answer for the same run
(the memory model train() checked the batch with, utils.plan.memory's counting: "model GiB"); then
the mixed / fp32 speed-up per size.
A batch that runs out of memory is halved (and said so) for every run of that size. The kit's own
output goes to a log file per run (outside Colab its progress bar then refreshes as when piped).
The defaults are sized for about 5 minutes on a T4 (an estimate from its peaks: base in fp32 dominates).

--smoke trains the tiny templates for a few steps; without a GPU its mixed run is fp16 autocast +
GradScaler on the CPU. Figures from a CPU mean nothing (MFU shows n/a): it only checks the script.
"""

from __future__ import annotations

import argparse
import csv
import gc
import importlib
import json
import math
import re
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from contextlib import redirect_stdout
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import pytorch_lightning as pl
import torch
from torch import nn

from hand_loop import hand_loop_tokens_per_sec  # bench/ is on sys.path when a script in it runs
from templates import TEMPLATES, build_template
from utils.config import WizardConfig
from utils.data.text import embedded_path
from utils.env import DeviceInfo, detect_device
from utils.training import train
from utils.precision import PrecisionDecision, resolve_precision

VAL_SPLIT = 0.01  # the kit validates once, after the timed steps; keep that short

# Dense peak TFLOPS per matmul dtype, from NVIDIA's datasheets (their "with sparsity" figures halved):
# Tesla T4 datasheet; V100 datasheet (SXM2 and PCIe columns); L4 datasheet; A100 datasheet (SXM and PCIe
# alike); H100 datasheet, SXM column (the H200 datasheet gives the same compute). H100/H200 PCIe and NVL
# boards peak lower and are left out: MFU n/a rather than against the wrong peak. First match wins.
PEAK_TFLOPS: list[tuple[str, dict[str, float]]] = [
    (r"\bT4\b", {"fp32": 8.1, "fp16": 65.0}),
    (r"\bV100\b.*\bPCIE\b", {"fp32": 14.0, "fp16": 112.0}),
    (r"\bV100\b", {"fp32": 15.7, "fp16": 125.0}),
    (r"\bL4\b", {"fp32": 30.3, "tf32": 60.0, "fp16": 121.0, "bf16": 121.0}),
    (r"\bA100\b", {"fp32": 19.5, "tf32": 156.0, "fp16": 312.0, "bf16": 312.0}),
    (r"\bH[12]00\b(?!.*\b(PCIE|NVL)\b)", {"fp32": 67.0, "tf32": 494.0, "fp16": 989.0, "bf16": 989.0}),
]


def peak_tflops(device_name: str, dtype: str) -> Optional[float]:
    """The datasheet's dense peak for matmuls in `dtype` on this GPU, or None where unknown."""
    for pattern, peaks in PEAK_TFLOPS:
        if re.search(pattern, device_name, re.IGNORECASE):
            if dtype == "tf32" and "tf32" not in peaks:  # no TF32 before Ampere: the matmuls stay fp32
                dtype = "fp32"
            return peaks.get(dtype)
    return None


def matmul_dtype(precision: str) -> str:
    """The dtype the matmuls of a run use: fp32 runs use TF32 tensor cores only if torch was told to."""
    if precision == "16-mixed":
        return "fp16"
    if precision == "bf16-mixed":
        return "bf16"
    return "fp32" if torch.get_float32_matmul_precision() == "highest" else "tf32"


def flops_per_token(template: str, size: str, seq_len: int) -> float:
    """Training FLOPs per token: 6 * N + 12 * n_layer * d_model * seq_len.

    N counts the non-embedding parameters (the tied output head is the token embedding, so it is out
    too); 6 * N is the forward and backward matmuls (2 + 4 FLOPs per parameter per token), and
    12 * n_layer * d_model * seq_len the attention scores and weighted sum (QK^T and AV), forward and
    backward, counted in full as in the PaLM paper's MFU (causal masking is not subtracted).
    """
    shape = importlib.import_module(TEMPLATES[template].module).SIZES[size]
    with torch.device("meta"):  # shapes only, no memory
        model = build_template(template, {"vocab_size": 256, "max_seq_len": seq_len, "size": size,
                                          "num_classes": 2, "pad_id": 0})
    return 6 * non_embedding_params(model) + 12 * shape["n_layer"] * shape["n_embd"] * seq_len


def non_embedding_params(model: nn.Module) -> int:
    embedding = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    unique = {id(p): p for p in model.parameters()}  # a tied weight once
    return sum(p.numel() for key, p in unique.items() if key not in embedding)


# ---------------------------------------------------------------------------- data and configs
def write_corpus(folder: Path, template: str, rows_needed: int, seq_len: int) -> Path:
    """A data file with room for rows_needed training sequences of seq_len tokens in one epoch.

    Language model: the embedded corpus repeated. Classifier: CSV rows of exactly seq_len characters
    cut from it (the char tokenizer makes them seq_len tokens: no padding), labels alternating.
    """
    rows = max(math.ceil(rows_needed / (1 - VAL_SPLIT) * 1.05), math.ceil(2 / VAL_SPLIT))  # 2+ to validate
    text = embedded_path("python_reference").read_text(encoding="utf-8")
    text = text * math.ceil((rows + 1) * seq_len / len(text))
    if TEMPLATES[template].task == "lm":
        path = folder / f"{template}.txt"
        path.write_text(text[:(rows + 1) * seq_len], encoding="utf-8")
        return path
    path = folder / f"{template}.csv"
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows([text[i * seq_len:(i + 1) * seq_len], "ab"[i % 2]] for i in range(rows))
    return path


def bench_config(template: str, size: str, seq_len: int, batch: int, precision: str, data: Path,
                 max_steps: int, out: Path) -> WizardConfig:
    return WizardConfig(task=TEMPLATES[template].task, model_template=template, model_size=size,
                        dataset_source="file", dataset_path=str(data), val_split=VAL_SPLIT, max_seq_len=seq_len,
                        batch_size=batch, max_steps=max_steps, max_epochs=1, precision=precision,
                        output_dir=str(out))


# ---------------------------------------------------------------------------- the two sides
@dataclass
class Measurement:
    tokens_per_sec: float
    peak_bytes: Optional[int]  # torch.cuda.max_memory_allocated over the run; None off CUDA
    answer_bytes: Optional[int] = None  # the kit's memory model at the run's batch (train()'s pre-flight answer)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _fresh_memory(device: str) -> None:
    """Free what the previous run left and restart the peak-memory count."""
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_bytes(device: str) -> Optional[int]:
    return torch.cuda.max_memory_allocated() if device == "cuda" else None


class StepClock(pl.Callback):
    """Times the kit's optimizer steps warmup+1 .. warmup+steps, the GPU drained at both ends."""

    def __init__(self, warmup: int, steps: int, device: str):
        self.warmup, self.steps, self.device = warmup, steps, device
        self.t0 = self.t1 = None
        self.tokens = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.warmup and self.t0 is None:
            _sync(self.device)
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.t0 is None or self.t1 is not None:
            return
        self.tokens += batch[0].numel()  # every position is computed, padding or not
        if trainer.global_step == self.warmup + self.steps:
            _sync(self.device)
            self.t1 = time.perf_counter()


def measure_kit(config: WizardConfig, device: DeviceInfo, warmup: int, steps: int) -> Measurement:
    kind = "cuda" if device.kind == "cuda" else "cpu"
    out = Path(config.output_dir)
    clock = StepClock(warmup, steps, kind)
    _fresh_memory(kind)
    log = out.parent / f"{out.name}.log"  # the kit's own output
    try:
        with open(log, "w") as f, redirect_stdout(f):
            result = train(config, device=device, extra_callbacks=[clock])
        if clock.t1 is None:
            raise RuntimeError(f"the kit stopped before optimizer step {warmup + steps}")
    except torch.cuda.OutOfMemoryError:
        raise  # measure_size halves the batch
    except Exception:
        print("The kit's run failed; the end of its output:\n" + "".join(log.read_text().splitlines(True)[-20:]),
              file=sys.stderr)
        raise
    shutil.rmtree(out)  # checkpoints of a base model: a GB each
    answer = result.estimate.memory.bytes_at(config.batch_size) if result.estimate else None
    return Measurement(clock.tokens / (clock.t1 - clock.t0), _peak_bytes(kind), answer)


def measure_loop(config: WizardConfig, decision: PrecisionDecision, warmup: int, steps: int) -> Measurement:
    """The same training written by hand (bench/hand_loop.py), its peak memory measured alike."""
    device = "cuda" if decision.device.kind == "cuda" else "cpu"
    _fresh_memory(device)
    return Measurement(hand_loop_tokens_per_sec(config, decision, warmup, steps), _peak_bytes(device))


# ---------------------------------------------------------------------------- one size, all precisions
@dataclass
class Row:
    device: str
    template: str
    size: str
    seq_len: int
    batch: int
    precision: str
    tokens_per_sec_kit: float
    tokens_per_sec_loop: float
    kit_over_loop: float
    mfu_kit: Optional[float]  # fraction of the datasheet peak; None where the peak is unknown
    mfu_loop: Optional[float]
    peak_bytes_kit: Optional[int]
    peak_bytes_loop: Optional[int]
    flops_per_token: float
    memory_model_bytes: Optional[int] = None  # what the kit's memory model said the run needs (same batch)


def measure_size(args, device: DeviceInfo, decisions: list[PrecisionDecision], template: str, size: str,
                 seq_len: int, batch: int, data: Path, tmp: Path) -> list[Row]:
    """Every precision of one template and size at one batch; the batch is halved on running out of memory."""
    while True:
        try:
            return [measure_precision(args, device, d, template, size, seq_len, batch, data, tmp) for d in decisions]
        except torch.cuda.OutOfMemoryError:
            if batch == 1:
                raise
        print(f"{template} {size}: out of GPU memory at batch {batch} x {seq_len} tokens; "
              f"retrying every precision at batch {batch // 2}", flush=True)
        batch //= 2


def measure_precision(args, device, decision, template, size, seq_len, batch, data, tmp) -> Row:
    kit, loop = [], []
    for r in range(args.rounds):
        out = tmp / f"{template}-{size}-{decision.precision}-b{batch}-r{r}"
        config = bench_config(template, size, seq_len, batch, decision.precision, data, args.warmup + args.steps, out)
        loop_config = config.replace(output_dir=f"{out}-loop")  # prepare_data caches tokens there
        loop.append(measure_loop(loop_config, decision, args.warmup, args.steps))
        if Path(loop_config.output_dir).exists():  # only a language model's tokens are cached
            shutil.rmtree(loop_config.output_dir)
        kit.append(measure_kit(config, device, args.warmup, args.steps))
        print(f"{template} {size} {decision.precision} round {r + 1}: loop {loop[-1].tokens_per_sec:,.0f} tok/s, "
              f"kit {kit[-1].tokens_per_sec:,.0f} tok/s", flush=True)
    kit_tps = statistics.median(m.tokens_per_sec for m in kit)
    loop_tps = statistics.median(m.tokens_per_sec for m in loop)
    flops = flops_per_token(template, size, seq_len)
    peak = peak_tflops(device.name, matmul_dtype(decision.precision)) if device.kind == "cuda" else None
    return Row(device.name, template, size, seq_len, batch, decision.precision, kit_tps, loop_tps,
               kit_tps / loop_tps, _mfu(kit_tps, flops, peak), _mfu(loop_tps, flops, peak), _max_peak(kit),
               _max_peak(loop), flops, max((m.answer_bytes for m in kit if m.answer_bytes), default=None))


def _mfu(tokens_per_sec: float, flops_per_token: float, peak_tflops: Optional[float]) -> Optional[float]:
    return None if peak_tflops is None else tokens_per_sec * flops_per_token / (peak_tflops * 1e12)


def _max_peak(measurements: list[Measurement]) -> Optional[int]:
    peaks = [m.peak_bytes for m in measurements if m.peak_bytes is not None]
    return max(peaks) if peaks else None


# ---------------------------------------------------------------------------- report
def speedups(rows: list[Row]) -> list[dict]:
    """mixed / fp32 tokens/s of each template and size, for the kit and for the loop."""
    result = []
    for fp32 in (r for r in rows if r.precision == "32-true"):
        same_size = (r for r in rows if (r.template, r.size) == (fp32.template, fp32.size))
        for mixed in (r for r in same_size if r.precision != "32-true"):
            result.append({"template": fp32.template, "size": fp32.size, "precision": mixed.precision,
                           "kit": mixed.tokens_per_sec_kit / fp32.tokens_per_sec_kit,
                           "loop": mixed.tokens_per_sec_loop / fp32.tokens_per_sec_loop})
    return result


def print_table(rows: list[Row]) -> None:
    gib = lambda b: "n/a" if b is None else f"{b / 2**30:.2f}"  # noqa: E731
    pct = lambda f: "n/a" if f is None else f"{100 * f:.1f}%"  # noqa: E731
    header = ["device", "template", "size", "batch x seq", "precision", "tok/s kit", "tok/s loop", "kit/loop",
              "MFU kit", "peak GiB kit", "model GiB", "peak GiB loop"]
    table = [header] + [[r.device, r.template, r.size, f"{r.batch} x {r.seq_len}", r.precision,
                         f"{r.tokens_per_sec_kit:,.0f}", f"{r.tokens_per_sec_loop:,.0f}", f"{r.kit_over_loop:.3f}",
                         pct(r.mfu_kit), gib(r.peak_bytes_kit), gib(r.memory_model_bytes), gib(r.peak_bytes_loop)]
                        for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    print()
    for line in table:
        print("  ".join(cell.ljust(w) if i < 5 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths))))
    for s in speedups(rows):
        print(f"{s['template']} {s['size']}: {s['precision']} / 32-true speed-up: kit {s['kit']:.2f}x, "
              f"loop {s['loop']:.2f}x")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--templates", nargs="+", default=["gpt"], choices=list(TEMPLATES))
    parser.add_argument("--sizes", nargs="+", default=["small", "base"])
    parser.add_argument("--seq", nargs="+", type=int, default=[256, 512], help="sequence length, one per size")
    parser.add_argument("--batch", nargs="+", type=int, default=[32, 16],
                        help="first batch to try, one per size (halved on running out of memory)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed optimizer steps at the start of each run")
    parser.add_argument("--steps", type=int, default=60, help="timed optimizer steps of each run")
    parser.add_argument("--rounds", type=int, default=1, help="loop/kit pairs per precision (medians reported)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny templates, a few steps: checks the script end to end (on a CPU too)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.templates, args.sizes, args.seq, args.batch = list(TEMPLATES), ["tiny"], [32], [4]
        args.warmup, args.steps, args.rounds = 2, 4, 1
    if not len(args.sizes) == len(args.seq) == len(args.batch):
        parser.error(f"--sizes, --seq and --batch need one value each per size; got {len(args.sizes)}, "
                     f"{len(args.seq)} and {len(args.batch)}")
    return args


def precisions(device: DeviceInfo) -> list[PrecisionDecision]:
    """fp32 and the kit's mixed-precision choice for this device; off a GPU, fp16 + GradScaler to exercise it."""
    fp32 = resolve_precision(True, "32-true", device)
    mixed = resolve_precision(True, "auto" if device.kind == "cuda" else "16-mixed", device)
    print(f"mixed precision: {mixed.precision} - {mixed.reason}")
    if mixed.precision == "32-true":
        print("so only fp32 is measured here")
        return [fp32]
    return [fp32, mixed]


def main(argv=None) -> None:
    args = parse_args(argv)
    warnings.filterwarnings("ignore", message=r".*'set_vital' is deprecated.*")  # torchdata's, once per loader
    device = detect_device()
    if device.kind != "cuda" and not args.smoke:
        sys.exit(f"No CUDA GPU here ({device.describe()}): this benchmark needs one. "
                 "`--smoke` checks the script on a CPU (its figures mean nothing).")
    print(f"device: {device.describe()}; torch {torch.__version__}, lightning {pl.__version__}; "
          f"fp32 matmul precision {torch.get_float32_matmul_precision()!r}; {args.warmup} untimed + {args.steps} "
          f"timed steps per run, {args.rounds} round(s)"
          + ("" if device.kind == "cuda" else "; CPU figures mean nothing"))
    decisions = precisions(device)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        tmp = Path(tmp)
        for template in args.templates:
            rows_needed = max(b for b in args.batch) * (args.warmup + args.steps)
            data = write_corpus(tmp, template, rows_needed, max(args.seq))
            for size, seq_len, batch in zip(args.sizes, args.seq, args.batch):
                rows += measure_size(args, device, decisions, template, size, seq_len, batch, data, tmp)
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps({"device": asdict(device), "torch": torch.__version__,
                                         "lightning": pl.__version__, "warmup": args.warmup, "steps": args.steps,
                                         "rounds": args.rounds, "rows": [asdict(r) for r in rows],
                                         "speedups": speedups(rows)}, indent=2))
        print(f"results written to {args.json}")


if __name__ == "__main__":
    main()
