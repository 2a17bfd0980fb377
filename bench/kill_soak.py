"""Kill-and-resume soak: SIGKILL a real training run many times, let it finish, compare with a clean run.

    pip install -e .    # once: makes utils importable
    python bench/kill_soak.py [--kills 20] [--seed 0] [--interval-minutes 0.05] [--max-steps 450]
                              [--output-root DIR] [--keep] [--lora [--chat N]]

Each training is a one-thread `python -m utils.training` process. A baseline trains uninterrupted; then
the same config in another folder is killed --kills times, about half at a random moment after launch
(start-up included), half as soon as its 1st or 2nd checkpoint temp file (*.kit-tmp) appears, and then
runs to the end. 450 steps cross the epoch boundary (409 batches). The run folders sit on another
filesystem than the system temp folder (/dev/shm), where a checkpoint moved from there could tear.
Goals, each printed as PASS/FAIL (exit status 1 if any fails): no corrupt file after any kill (last.ckpt
loads, config.json parses, tokenizer/ loads); no failed resume (a non-zero exit we did not cause, a
traceback, training without "Resuming from" while a checkpoint exists, or from another step than its);
steps lost per kill at most one checkpoint interval of steps (at the faster of the baseline's and the killed
run's speed) plus one; no *.kit-tmp file left after the final run; per-step training losses equal to the
baseline's (within 1e-6).

--lora soaks a LoRA fine-tune instead: a small Llama built from a config and saved in the soak's folder
(bench/lora.py's, nothing downloaded) gets rank-4 adapters with dropout 0.1; its checkpoints hold the
adapters only, and the same goals hold. --chat N (with --lora) trains it on N chat conversations
(bench/chat_cache.py's), encoded by the first run and read from data_cache/ by every rerun.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from utils.data.tokenizers import load_tokenizer
from utils.files import TEMP_MARK
from utils.run_folder.history import read_history

REPO_ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
LOSS_TOLERANCE = 1e-6


def start(out: Path, args, log: Path) -> subprocess.Popen:
    settings = dict(max_seq_len=64, batch_size=16, max_steps=args.max_steps, dropout=0.1, log_every_n_steps=1,
                    checkpoint_every_minutes=args.interval_minutes, output_dir=out)  # dropout: RNG must resume too
    if args.lora_model:
        settings.update(model_source="pretrained", pretrained_model=args.lora_model, finetune_method="lora",
                        lora_rank=4, lora_dropout=0.1)
    if args.chat_data:
        settings.update(dataset_source="file", dataset_path=args.chat_data)
    cmd = [sys.executable, "-m", "utils.training", "--sample-tokens", "0",
           *[a for key, value in settings.items() for a in ("--set", f"{key}={value}")]]
    return subprocess.Popen(cmd, cwd=REPO_ROOT, env=ENV, stdout=open(log, "wb"), stderr=subprocess.STDOUT)


def versions(out: Path) -> set[Path]:
    return set((out / "logs").glob("version_*"))


def newest_logged(out: Path) -> int:
    """The newest step in the run's loss history, read as the kit reads it (0: none)."""
    return max((step for step, _ in read_history(out / "logs").train), default=0)


def started(out: Path, before: set) -> bool:
    """Whether a run begun after `before` was listed has logged a training step."""
    return any((v / "segment.json").exists() and (v / "metrics.csv").exists() for v in versions(out) - before)


LOADERS = {  # the run's files a kill must never leave half-written, and how to read each back
    "checkpoints/last.ckpt": lambda p: torch.load(p, map_location="cpu", weights_only=False)["global_step"],
    "config.json": lambda p: json.loads(p.read_text(encoding="utf-8")),
    "tokenizer": load_tokenizer,  # its meta JSON (and tokenizer.json for BPE); a missing file raises too
}


def check_files(out: Path) -> tuple[list[str], int]:
    """What a kill left broken among the run's files present, and the global step of last.ckpt (0: none)."""
    problems, loaded = [], {}
    for name in [name for name in LOADERS if (out / name).exists()]:
        try:
            loaded[name] = LOADERS[name](out / name)
        except (RuntimeError, EOFError, OSError, ValueError, KeyError, pickle.UnpicklingError) as e:
            problems.append(f"{name} does not load: {str(e).splitlines()[0]}")
    return problems, loaded.get("checkpoints/last.ckpt", 0)


def resume_problem(run: dict) -> str | None:
    trained = run["start"] is not None
    checks = [("Traceback (most recent call last)" in run["text"], "traceback"),
              (run["rc"] != 0 and not run["killed"], f"exit status {run['rc']}"),
              (trained and run["ckpt_step"] and "Resuming from" not in run["text"], "no 'Resuming from' printed"),
              (trained and run["start"] != run["ckpt_step"], f"started at step {run['start']}, not {run['ckpt_step']}")]
    return next((why for failed, why in checks if failed), None)


def one_run(out: Path, args, log: Path, kill=None) -> dict:
    """Start a run, let kill(proc, before) end it (None: let it finish), and say what happened."""
    before, ckpt_step = versions(out), check_files(out)[1]
    proc = start(out, args, log)
    seen = kill(proc, before) if kill else {}
    rc, new = proc.wait(timeout=900), versions(out) - before
    segments = [json.loads((v / "segment.json").read_text()) for v in new if (v / "segment.json").exists()]
    start_step = next((seg["start_step"] for seg in segments if "start_step" in seg), None)  # None: it never trained
    return dict(rc=rc, killed="kill_t" in seen and rc == -9, text=log.read_text(errors="replace"), start=start_step,
                ckpt_step=ckpt_step, reached=newest_logged(out) if start_step is not None else 0, **seen,
                mid_write=any(p.name.endswith(f".{proc.pid}{TEMP_MARK}") for p in out.glob("checkpoints/*")))


def first_step(proc, out: Path, before: set, deadline: float) -> tuple[float, int] | None:
    """(time, step) when the run's first logged step shows up, if it does before the deadline."""
    while proc.poll() is None and time.monotonic() < deadline:
        if started(out, before):
            return time.monotonic(), newest_logged(out)
        time.sleep(0.05)
    return None


def wait_for_temp_file(proc, folder: Path, count: int, timeout: float) -> None:
    """Return when this process's checkpoint temp file appears for the count-th time (polled every ms)."""
    mine, present, deadline = f".{proc.pid}{TEMP_MARK}", False, time.monotonic() + timeout
    while count and proc.poll() is None and time.monotonic() < deadline:
        now = folder.is_dir() and any(name.endswith(mine) for name in os.listdir(folder))
        count, present = count - (now and not present), now
        time.sleep(0.001)


def kill_plan(mode: str, rng: random.Random, out: Path, startup_s: float, interval_s: float):
    """A kill(proc, before) for one_run: at a random moment after launch, or during the 1st or 2nd checkpoint write."""
    def kill(proc, before) -> dict:
        t_launch = time.monotonic()
        delay = rng.uniform(0, startup_s + 2 * interval_s) if mode == "random" else 0.0
        seen = {"first": first_step(proc, out, before, t_launch + (delay if mode == "random" else 120.0))}
        if mode == "write" and seen["first"]:
            n = rng.randint(1, 2)
            wait_for_temp_file(proc, out / "checkpoints", n, timeout=n * interval_s + 10)
        try:
            proc.wait(timeout=max(0.0, t_launch + delay - time.monotonic()))  # it may have finished first
        except subprocess.TimeoutExpired:
            proc.kill()
            seen["kill_t"] = time.monotonic()
        return seen
    return kill


def run_baseline(out: Path, args, log: Path) -> tuple[float, list]:
    """Train uninterrupted; return the seconds from launch to the first logged step, and (time, step) samples."""
    t_launch, samples, proc = time.monotonic(), [], start(out, args, log)
    while proc.poll() is None:
        samples += [(time.monotonic(), newest_logged(out))] if started(out, set()) else []
        time.sleep(0.05)
    if proc.returncode != 0 or len(samples) < 2:
        sys.exit(f"the baseline run failed (exit status {proc.returncode}); see {log}")
    return samples[0][0] - t_launch, samples


def run_kills(args, root: Path, rng: random.Random, startup_s: float, interval_s: float, window: int):
    """Kill the soak run --kills times, printing a row per kill; return (kills, corrupt files, failed resumes)."""
    soak, kills, problems, failed = root / "soak", [], [], []
    print(f"{'kill':>4} {'mode':<6} {'mid-write':>9} {'from':>5} {'reached':>7} {'ckpt':>5} {'lost':>5} {'limit':>5}")
    for i in range(args.kills):
        mode = "write" if rng.random() < 0.5 else "random"
        run = one_run(soak, args, root / "cli" / f"kill_{i:02d}.log", kill_plan(mode, rng, soak, startup_s, interval_s))
        found, ckpt_step = check_files(soak)
        # Reached: the newest step this run logged. With log_every_n_steps=1 the kit writes each step's loss
        # to the CSV log right after the step, and always before that step's checkpoint, so a kill that tears
        # the checkpoint of step N finds N logged; only a step in flight is not counted. The next run must
        # resume from ckpt_step (checked as a failed resume), so reached - ckpt_step is what the kill cost.
        reached = max(run["reached"], ckpt_step, run["start"] or 0)
        # Limit: one interval of steps at the faster of the baseline's best and this run's own speed (the machine is
        # shared, so speed drifts; a run that trained less than an interval has no telling speed), plus one: a save
        # waits for the step that ends after the due time.
        t0, s0 = run.get("first") or (math.inf, 0)
        span = run["kill_t"] - t0 if run["killed"] else 0.0
        rate = (reached - s0) / span if span >= interval_s else 0.0
        limit, lost, why = 1 + max(window, math.ceil(rate * interval_s)), reached - ckpt_step, resume_problem(run)
        problems += [f"after kill {i}: {x}" for x in found]
        failed += [f"kill {i}: {why}"] if why else []
        if run["killed"]:
            kills.append(dict(lost=lost, limit=limit, trained=run["start"] is not None, mid_write=run["mid_write"]))
        print(f"{i:>4} {mode:<6} {'yes' if run['mid_write'] else '':>9} {str(run['start']):>5} {reached:>7} "
              f"{ckpt_step:>5} {lost if run['killed'] else '-':>5} {limit:>5}  {'; '.join(found + [why or ''])}")
        if not run["killed"] and run["rc"] == 0:
            print(f"training finished before kill {i}; raise --max-steps for more kills")
            break
    return kills, problems, failed


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--interval-minutes", type=float, default=0.05, help="checkpoint_every_minutes")
    p.add_argument("--max-steps", type=int, default=450)
    p.add_argument("--output-root", type=Path, help="where the run folders go (default: /dev/shm)")
    p.add_argument("--keep", action="store_true", help="keep the run folders (always kept on FAIL)")
    p.add_argument("--lora", action="store_true", help="a LoRA fine-tune of a small Llama instead of the default GPT")
    p.add_argument("--chat", type=int, default=0, metavar="N",
                   help="with --lora: train on N chat conversations (bench/chat_cache.py's) instead of the corpus")
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="kill_soak_", dir=args.output_root or "/dev/shm"))
    args.lora_model = root / "llama" if args.lora else None
    args.chat_data = root / "chat.jsonl" if args.lora and args.chat else None
    if args.lora:
        from lora import build_model  # bench/lora.py, beside this script

        build_model(args.lora_model, hidden=64, layers=2)
    if args.chat_data:
        from chat_cache import write_rows  # bench/chat_cache.py, beside this script

        write_rows(args.chat_data, args.chat)
    tmp_dev, root_dev = os.stat(tempfile.gettempdir()).st_dev, os.stat(root).st_dev
    print(f"temp folder {tempfile.gettempdir()} (st_dev {tmp_dev}), run folders {root} (st_dev {root_dev})"
          + ("  WARNING: the same filesystem" if tmp_dev == root_dev else ""))
    (root / "cli").mkdir()
    interval_s, rng, soak, t0 = args.interval_minutes * 60, random.Random(args.seed), root / "soak", time.monotonic()

    startup_s, samples = run_baseline(root / "baseline", args, root / "cli" / "baseline.log")
    rate = (samples[-1][1] - samples[0][1]) / (samples[-1][0] - samples[0][0])
    # Steps in one interval: the most the baseline made in any interval-long stretch (the mean undercounts them).
    window = max(s2 - s1 for t1, s1 in samples for t2, s2 in samples if 0 <= t2 - t1 <= interval_s)
    print(f"baseline: {args.max_steps} steps, first step {startup_s:.1f} s after launch, {rate:.1f} steps/s on average "
          f"= {rate * interval_s:.1f} per {interval_s:g} s checkpoint interval; at most {window} in one interval\n")

    kills, problems, failed = run_kills(args, root, rng, startup_s, interval_s, window)
    final = one_run(soak, args, root / "cli" / "final.log")
    why = resume_problem(final)
    failed += [f"final run: {why}"] if why else []
    missing = [name for name in LOADERS if not (soak / name).exists()]
    problems += check_files(soak)[0] + [f"after the final run: no {name}" for name in missing]
    leftovers = [str(p.relative_to(soak)) for p in soak.rglob(f"*{TEMP_MARK}")]
    expected, got = read_history(root / "baseline" / "logs").train, read_history(soak / "logs").train
    same_steps = [s for s, _ in expected] == [s for s, _ in got]
    first_gap = next((a for (a, _), (b, _) in zip(expected + [(None, 0)], got + [(None, 0)]) if a != b), None)
    diff = max(abs(a - b) for (_, a), (_, b) in zip(expected, got)) if same_steps else float("inf")
    lost = [k["lost"] for k in kills if k["trained"]]
    over = [k for k in kills if k["lost"] > k["limit"]]
    print(f"\nwall time {time.monotonic() - t0:.0f} s; {len(kills)} kills, {len(lost)} after training began, "
          f"{sum(k['mid_write'] for k in kills)} during a checkpoint write; final run exit status {final['rc']}, "
          f"from step {final['start']}; {len(list(soak.glob('checkpoints/damaged/*')))} in checkpoints/damaged/")
    goals = [
        ("corrupt files", f"{len(problems)}", "0", not problems),
        ("failed resumes", f"{len(failed)}", "0", not failed),
        ("steps lost per kill", f"max {max(lost, default=0)}, mean {sum(lost) / max(len(lost), 1):.1f}, "
         f"{len(over)} over limit", "<= limit", not over),
        ("leftover temp files", f"{len(leftovers)}", "0", not leftovers),
        ("loss vs baseline", f"max |diff| {diff:.3g} over {len(got)} steps" if same_steps
         else f"steps differ ({len(expected)} vs {len(got)}) at {first_gap}", f"<= {LOSS_TOLERANCE:g}",
         diff <= LOSS_TOLERANCE),
    ]
    for name, value, goal, ok in goals:
        print(f"{name:<20} {value:<36} goal {goal:<8} {'PASS' if ok else 'FAIL'}")
    for line in problems + failed + leftovers:
        print(f"  {line}")
    passed = all(ok for *_, ok in goals)
    if passed and not args.keep:
        shutil.rmtree(root)
    else:
        print(f"run folders and process output kept in {root}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
