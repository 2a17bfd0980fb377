"""`runs PARENT_DIR` (utils.run_list): a finished, a stopped, an archived and a running run, read from their folders.

The running one is a copy of a finished run folder whose lock a live subprocess holds, as a training
process would; it is killed by its own pid when the test ends.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest
import pytorch_lightning as pl

from tests.conftest import REPO_ROOT, corpus_start
from utils.config import WizardConfig
from utils.env import DeviceInfo
from utils.run_list import RunInfo, RunTable, list_runs
from utils.training import train
from utils.cli import main

CPU = DeviceInfo("cpu", "CPU")


class StopAt(pl.Callback):
    """Stops training after `step` optimizer steps, as pressing Stop does between steps."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= self.step:
            trainer.should_stop = True


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    base = WizardConfig(dataset_source="file", dataset_path=str(corpus_start(root / "data", 6_000)), max_seq_len=32,
                        batch_size=4, max_steps=4, model_size="tiny", log_every_n_steps=1, warmup_ratio=0.0)
    parent = root / "runs"
    train(base.replace(output_dir=str(parent / "a"), learning_rate=1e-3), device=CPU)  # archived below
    train(base.replace(output_dir=str(parent / "a"), learning_rate=2e-3, resume=False), device=CPU)  # finished
    train(base.replace(output_dir=str(parent / "b"), max_steps=6, learning_rate=3e-3), device=CPU,
          extra_callbacks=[StopAt(2)])  # stopped at step 2 of 6
    shutil.copytree(parent / "a", parent / "c", ignore=shutil.ignore_patterns("archive"))
    code = ("import sys, time; from utils.run_folder.lock import RunLock; RunLock(sys.argv[1]).acquire(); "
            "print('held', flush=True); time.sleep(120)")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    holder = subprocess.Popen([sys.executable, "-c", code, str(parent / "c")], env=env, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield parent, holder.pid
    finally:
        holder.kill()
        holder.wait()


def test_runs_lists_each_run_with_its_state_and_the_settings_that_differ(parent, capsys):
    folder, pid = parent
    table = list_runs(folder)
    archived = next((folder / "a" / "archive").iterdir()).name
    assert [r.name for r in table.runs] == ["a", f"a/archive/{archived}", "b", "c"]
    by_name = {r.name: r for r in table.runs}
    assert by_name["a"].state == by_name[f"a/archive/{archived}"].state == "finished"
    assert by_name["b"].state == "stopped" and (by_name["b"].steps, by_name["b"].planned) == (2, 6)
    assert by_name["c"].state.startswith(f"running now (pid {pid} on ")
    assert all(r.precision == "32-true" and r.params == table.runs[0].params > 0 for r in table.runs)
    assert by_name["a"].train_seconds > 0 and by_name["a"].best_val[0] == 4
    assert table.differing_settings() == {"learning_rate": [0.002, 0.001, 0.003, 0.002],
                                          "max_steps": [4, 4, 6, 4], "resume": [False, True, True, False]}

    assert main(["runs", str(folder), "--plot"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == f"4 runs under {folder}"
    assert lines[1].split() == ["#", "run", "task", "model", "params", "data", "steps", "best", "validation", "time",
                                "precision", "state"]
    assert lines[2].split()[:9] == ["1", "a", "lm", "gpt", "(tiny)", _params(table), "total", "corpus-6000.txt", "4/4"]
    assert lines[4].split()[8] == "2/6" and lines[4].endswith("stopped")
    differ = lines.index("Settings in which they differ (by run #):")
    assert [line.split() for line in lines[differ + 1:differ + 6]] == [
        ["setting", "1", "2", "3", "4"], ["learning_rate", "0.002", "0.001", "0.003", "0.002"],
        ["max_steps", "4", "4", "6", "4"], ["resume", "false", "true", "true", "false"], []]
    assert (folder / "runs.png").read_bytes()[:4] == b"\x89PNG"
    assert lines[-1] == f"Validation curves: {folder / 'runs.png'}"


def _params(table) -> str:
    from utils.run_list import count_text

    return count_text(table.runs[0].params)


def test_runs_on_a_missing_folder_is_one_line_exit_2(tmp_path, capsys):
    assert main(["runs", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_a_torn_last_checkpoint_is_reported_not_a_crash(parent, tmp_path):
    folder, _ = parent
    copy = tmp_path / "runs" / "torn"
    shutil.copytree(folder / "b", copy)
    (copy / "checkpoints" / "last.ckpt").write_bytes(b"PK\x03\x04 cut off by a kill")
    (run,) = list_runs(tmp_path / "runs").runs
    assert run.state == "last.ckpt unreadable" and run.steps == 2  # the logs still tell the steps


@pytest.mark.parametrize("method, label", [("lora", "trainable"), ("qlora", "trainable"), ("full", "total")])
def test_a_pretrained_run_is_named_by_its_folder_and_its_parameters_say_which_count(tmp_path, method, label):
    """A converted model's folder often ends in "hf": the table once showed just that, and a LoRA run's
    checkpoint (adapters only) counted beside a full run's whole model with no word to tell them apart."""
    config = {"task": "lm", "model_source": "pretrained", "finetune_method": method,
              "pretrained_model": "/content/drive/MyDrive/models/SmolLM2-135M-Instruct/hf"}
    hub = {**config, "pretrained_model": "HuggingFaceTB/SmolLM2-135M-Instruct"}
    table = RunTable(tmp_path, [RunInfo(tmp_path / "a", "a", config, params=921_600),
                                RunInfo(tmp_path / "b", "b", hub, params=None)])
    rows = [re.split(r"\s{2,}", row) for row in table.describe().splitlines()[2:4]]  # columns: 2+ spaces apart
    assert rows[0][3:5] == [f"SmolLM2-135M-Instruct/hf ({method})", f"921.6k {label}"]
    assert rows[1][3:5] == [f"HuggingFaceTB/SmolLM2-135M-Instruct ({method})", "?"]
