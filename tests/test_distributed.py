"""Training on several processes, as a user starts it: `python -m utils.training --set devices=2` (Lightning
launches the second process on gloo) and two "machines" on 127.0.0.1 started by torchrun. Each process uses
one thread. The two-process run must match one process reading the same global batch, step by step."""

from __future__ import annotations

import csv
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO_ROOT, corpus_start
from utils.config import ConfigError, WizardConfig
from utils.env import MixedGPUsError, detect_device
from utils.training.builder import ResumableSampler, build_strategy, template_blocks

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
       "PYTHONPATH": str(REPO_ROOT)}
B = 2  # sequences per process and step; the single process reads 2 * B


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return corpus_start(tmp_path_factory.mktemp("data"), 8_000)


def settings(data: Path, out: Path, **extra) -> list[str]:
    values = dict(dataset_source="file", dataset_path=str(data), max_seq_len=32, max_steps=6, dropout=0.0,
                  learning_rate=3e-3, log_every_n_steps=1, checkpoint_every_minutes=0, output_dir=str(out))
    values.update(extra)
    return [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]


def train_cli(data: Path, out: Path, launcher: list[str] | None = None, **extra) -> str:
    args = (launcher or [sys.executable]) + ["-m", "utils.training", "--sample-tokens", "0"] + settings(data, out, **extra)
    done = subprocess.run(args, cwd=REPO_ROOT, env=ENV, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def losses(out: Path, version: int) -> dict[int, float]:
    with open(out / "logs" / f"version_{version}" / "metrics.csv") as f:
        return {int(row["step"]): float(row["train/loss"]) for row in csv.DictReader(f) if row["train/loss"]}


def run_files(out: Path) -> list[str]:
    """The run's files, a best checkpoint's validation loss left out of its name."""
    return sorted(re.sub(r"-val[\d.]+", "-val", str(p.relative_to(out))) for p in out.rglob("*") if p.is_file())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one_write_once_and_resume_on_any_device_count(tmp_path, corpus):
    one, two = tmp_path / "one", tmp_path / "two"
    train_cli(corpus, one, batch_size=2 * B, devices=1)
    printed = train_cli(corpus, two, batch_size=B, devices=2, strategy="ddp")

    # The union of the two processes' batches is the single process's batch: the same losses each step.
    assert losses(two, 0) == pytest.approx(losses(one, 0), rel=1e-5) and len(losses(two, 0)) == 6
    # Every file once (one log version, one token cache, one best checkpoint), every message once.
    assert run_files(two) == run_files(one)
    assert [name for name in run_files(two) if name.startswith("logs")] == \
        ["logs/version_0/metrics.csv", "logs/version_0/segment.json"]
    assert printed.count("Precision:") == 1 and printed.count("steps:") == 1
    assert f"Batch: {B} sequences per device x 2 device(s) x 1 machine(s) x 1 accumulation = {2 * B} sequences" in printed
    assert "tokens/s (summed over 2 processes)" in printed

    # Resumed on two processes, and (a copy) on one: both continue where the one-process run continues.
    shutil.copytree(two, tmp_path / "two_to_one")
    train_cli(corpus, one, batch_size=2 * B, devices=1, max_steps=10)
    printed = train_cli(corpus, two, batch_size=B, devices=2, strategy="ddp", max_steps=10)
    assert "Resuming from" in printed and "4 this run, 10 in total" in printed
    assert losses(two, 1) == pytest.approx(losses(one, 1), rel=1e-5) and sorted(losses(two, 1)) == [7, 8, 9, 10]
    train_cli(corpus, tmp_path / "two_to_one", batch_size=2 * B, devices=1, max_steps=10)
    assert losses(tmp_path / "two_to_one", 1) == pytest.approx(losses(one, 1), rel=1e-5)


@pytest.mark.slow
def test_two_machines_started_by_torchrun_train_together(tmp_path, corpus):
    """Two "nodes" on 127.0.0.1, one process each; rank zero trains the BPE, the other reads it."""
    out, port = tmp_path / "run", free_port()
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
                "--master_addr=127.0.0.1", f"--master_port={port}"]
    args = ["-m", "utils.training", "--sample-tokens", "0"] + settings(
        corpus, out, batch_size=B, devices=1, num_nodes=2, strategy="ddp", max_steps=4, tokenizer_strategy="bpe",
        vocab_size=300)
    nodes = [subprocess.Popen(torchrun + [f"--node_rank={rank}"] + args, cwd=REPO_ROOT, env=ENV, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for rank in (0, 1)]
    printed = [node.communicate(timeout=240)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], printed[0][-3000:] + printed[1][-3000:]
    assert "4 this run, 4 in total" in printed[0] and "summed over 2 processes" in printed[0]
    assert "Precision:" not in printed[1]  # rank one prints nothing of its own
    assert sorted(losses(out, 0)) == [1, 2, 3, 4]
    assert len(list((out / "data_cache").glob("*.tokens-*.bin"))) == 1


def test_each_process_reads_its_interleaved_share_of_one_order():
    data = list(range(10))
    single = list(ResumableSampler(data, seed=3))
    shards = []
    for rank in (0, 1):
        sampler = ResumableSampler(data, seed=3, num_replicas=2, drop_last=True)
        sampler.rank = rank
        shards.append(list(sampler))
    assert shards == [single[0::2], single[1::2]]


def test_a_position_saved_by_two_processes_continues_the_same_order_on_one():
    data = list(range(12))
    two = ResumableSampler(data, seed=3, num_replicas=2, drop_last=True)
    it = iter(two)
    [next(it) for _ in range(2)]  # each process has read 2: 4 of the epoch in all
    one = ResumableSampler(data, seed=3)
    one.load_state_dict(two.state_dict())
    assert list(one) == list(ResumableSampler(data, seed=3))[4:]


def test_devices_num_nodes_and_strategy_are_validated():
    with pytest.raises(ConfigError) as e:
        WizardConfig(devices=-1, num_nodes=0, strategy="deepspeed").validate()
    assert [p.split(")")[0] for p in e.value.problems] == ["Devices per machine (devices", "Machines (num_nodes",
                                                           "Multi-device strategy (strategy"]


def test_fsdp_on_a_cpu_is_refused_before_training(tmp_path):
    from utils.training import train

    with pytest.raises(ConfigError, match="strategy='fsdp' needs CUDA GPUs"):
        train(WizardConfig(output_dir=str(tmp_path / "run"), strategy="fsdp", devices=2))


def test_fsdp_wraps_a_templates_blocks_and_a_user_model_by_size():
    from templates import build_template

    gpt = build_template("gpt", {"vocab_size": 64, "max_seq_len": 16, "size": "tiny", "dropout": 0.0})
    blocks = template_blocks(gpt)
    assert [cls.__module__ + "." + cls.__name__ for cls in blocks] == ["templates.gpt.Block"]
    assert build_strategy(WizardConfig(strategy="fsdp"), gpt).kwargs["auto_wrap_policy"]._module_classes == blocks
    user = torch.nn.Sequential(torch.nn.Linear(8, 8))
    policy = build_strategy(WizardConfig(strategy="fsdp"), user).kwargs["auto_wrap_policy"]
    assert policy.keywords == {"min_num_params": 1_000_000}


def test_gpus_of_different_models_are_an_error_naming_them(monkeypatch):
    """No GPU here: torch.cuda's answers are replaced by two different cards."""
    class Props:
        def __init__(self, name, major, minor):
            self.name, self.major, self.minor, self.total_memory = name, major, minor, 16 << 30

    cards = [Props("Tesla T4", 7, 5), Props("NVIDIA A100-SXM4-40GB", 8, 0)]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: cards[i])
    assert detect_device(1).name == "Tesla T4"
    with pytest.raises(MixedGPUsError, match=r"GPU 0: Tesla T4 \(compute capability 7.5\), GPU 1: NVIDIA A100"):
        detect_device(0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fsdp_on_the_gpus_trains_saves_once_and_resumes(tmp_path, corpus):
    """Up to two GPUs: with one, FSDP still wraps the Blocks and goes through its own checkpoint path."""
    out, devices = tmp_path / "run", min(2, torch.cuda.device_count())
    printed = train_cli(corpus, out, batch_size=B, devices=devices, strategy="fsdp", max_steps=4)
    assert "4 this run, 4 in total" in printed and (out / "checkpoints" / "last.ckpt").exists()
    assert sorted(losses(out, 0)) == [1, 2, 3, 4]
    printed = train_cli(corpus, out, batch_size=B, devices=devices, strategy="fsdp", max_steps=6)
    assert "Resuming from" in printed and "2 this run, 6 in total" in printed
