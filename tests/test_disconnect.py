"""The disconnect promise, tested as a user meets it: kill the training process, run it again, and
compare with a run that was never interrupted. Each training here is a real `python -m utils.training`
process (one thread, so the kill tests stay fast on a shared machine)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO_ROOT, corpus_start
from utils.run_folder.history import read_history

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def short_text(tmp_path_factory) -> Path:
    """About 20 batches of 8 per epoch, so 3 epochs cross two epoch boundaries."""
    return corpus_start(tmp_path_factory.mktemp("data"), 6_000)


def cli_args(data: Path, out: Path, **extra) -> list[str]:
    settings = dict(dataset_source="file", dataset_path=str(data), max_seq_len=32, batch_size=8, max_epochs=3,
                    dropout=0.1, learning_rate=3e-3, log_every_n_steps=1, checkpoint_every_minutes=0,
                    output_dir=str(out), **extra)  # dropout: the RNG state must survive a kill too
    args = [sys.executable, "-m", "utils.training", "--sample-tokens", "0"]
    for key, value in settings.items():
        args += ["--set", f"{key}={value}"]
    return args


def start(args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(args, cwd=REPO_ROOT, env=ENV, stdout=open(log, "ab"), stderr=subprocess.STDOUT)


def weights(ckpt: Path) -> dict:
    # Our own checkpoint written by this test: it holds loop state besides tensors.
    return torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]


def wait_for_checkpoints(folder: Path, count: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """Block until last.ckpt has been replaced `count` times (or the process ended)."""
    last, seen, deadline = folder / "last.ckpt", None, time.monotonic() + timeout
    while count > 0 and proc.poll() is None and time.monotonic() < deadline:
        mtime = last.stat().st_mtime_ns if last.exists() else None
        if mtime is not None and mtime != seen:
            seen, count = mtime, count - 1
        time.sleep(0.005)


def kill_during_a_write(folder: Path, proc: subprocess.Popen, timeout: float = 20.0) -> bool:
    """SIGKILL the moment a checkpoint temp file shows up; False if none showed up in time (then kill anyway)."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if any(".kit-tmp" in name for name in os.listdir(folder)):
            proc.kill()
            return True
    proc.kill()
    return False


@pytest.mark.slow
def test_killed_and_resumed_run_matches_the_uninterrupted_one(tmp_path, short_text):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    log = tmp_path / "log.txt"
    assert start(cli_args(short_text, whole), log).wait(timeout=300) == 0, log.read_text()

    rng = random.Random(7)
    mid_write = 0
    for attempt in range(4):
        proc = start(cli_args(short_text, killed), log)
        wait_for_checkpoints(killed / "checkpoints", rng.randint(2, 12), proc)
        if attempt % 2 == 0:
            mid_write += kill_during_a_write(killed / "checkpoints", proc)
        else:
            time.sleep(rng.uniform(0, 0.2))
            proc.kill()
        proc.wait(timeout=30)
    assert mid_write >= 1, "no kill landed during a checkpoint write"
    assert start(cli_args(short_text, killed), log).wait(timeout=300) == 0, log.read_text()[-3000:]

    expected, got = read_history(whole / "logs"), read_history(killed / "logs")
    steps = [s for s, _ in expected.train]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 60  # every step of 3 epochs
    assert [s for s, _ in got.train] == [s for s, _ in expected.train]
    for (step, a), (_, b) in zip(expected.train, got.train):
        assert a == pytest.approx(b, abs=1e-6), f"step {step}: {a} uninterrupted vs {b} resumed"
    final_whole, final_killed = weights(whole / "checkpoints/last.ckpt"), weights(killed / "checkpoints/last.ckpt")
    assert final_whole.keys() == final_killed.keys()
    for name in final_whole:
        torch.testing.assert_close(final_killed[name], final_whole[name], rtol=0, atol=1e-6)
    assert log.read_text().count("Resuming from") >= 3
    assert not [p for p in killed.rglob("*") if ".kit-tmp" in p.name]  # the next start removed them
