"""Resume safety, as a user meets it: last.ckpt keeps up after the best stops improving; a torn checkpoint is
stepped past; a changed data file, model file or config is refused (or archived) before anything is
overwritten; results after a resume describe the whole run; a busy folder is refused; Ctrl-C saves and exits
130; temp files of a killed write are cleaned up. Every run is a tiny CPU one."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from tests.conftest import REPO_ROOT, corpus_start
from utils.config import WizardConfig
from utils.env import DeviceInfo
from utils.training import train
from utils.run_folder.checkpoints import IncompatibleCheckpointError
from utils.run_folder.lock import RunFolderBusyError

CPU = DeviceInfo("cpu", "CPU")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
       "PYTHONPATH": str(REPO_ROOT)}


def load_ckpt(path: Path) -> dict:
    # Our own Lightning checkpoint, written by this test: it holds loop state besides tensors.
    return torch.load(path, map_location="cpu", weights_only=False)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file of the run under folder by relative path, to prove nothing was written. Left out: the run
    lock, and data_cache/ (tokens encoded from the data, keyed by its fingerprint: derived, never a run's)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".run.lock" and p.relative_to(folder).parts[0] != "data_cache"}


def only_archive(out: Path) -> Path:
    archives = list((out / "archive").iterdir())
    assert len(archives) == 1, archives
    return archives[0]


@pytest.fixture
def text_file(tmp_path) -> Path:
    """3,000 characters of the embedded corpus: 10 batches of 8 sequences of 32 per epoch."""
    return corpus_start(tmp_path / "data", 3_000)


# ------------------------------------------------------------------ 1. last.ckpt after the best stops improving

class WorseOnEveryValidation(nn.Module):
    """A model whose validation loss rises with every training step, like one that overfits, without the wait.

    It scores one id more than the tokenizer has (a padded vocabulary); that id is never a target, and in eval
    mode its logit grows by one per training step taken, so every validation loss exceeds the one before.
    """

    def __init__(self, vocab_size: int):
        super().__init__()
        self.emb = nn.Embedding(vocab_size, 8)
        self.head = nn.Linear(8, vocab_size + 1)
        self.register_buffer("steps_trained", torch.zeros(()))

    def forward(self, idx):
        logits = self.head(self.emb(idx))  # (B, T, V + 1)
        if self.training:
            self.steps_trained += 1
            return logits
        never_a_target = torch.zeros(logits.shape[-1])
        never_a_target[-1] = 1.0
        return logits + self.steps_trained * never_a_target


class LastCheckpointAtEpochEnd(pl.Callback):
    """Reads last.ckpt's step from disk at the end of every training epoch: (global step, step in last.ckpt)."""

    def __init__(self):
        self.seen = []

    def on_train_epoch_end(self, trainer, pl_module):
        path = Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"
        self.seen.append((trainer.global_step, load_ckpt(path)["global_step"]))


def test_last_checkpoint_keeps_moving_after_validation_loss_stops_improving(tiny_config, text_file):
    config = tiny_config.replace(dataset_path=str(text_file), max_steps=None, max_epochs=3,
                                 checkpoint_every_minutes=0, learning_rate=1e-4)
    vocab = len(set(text_file.read_text(encoding="utf-8")))
    watch = LastCheckpointAtEpochEnd()
    result = train(config, WorseOnEveryValidation(vocab), CPU, extra_callbacks=[watch])

    val_losses = [loss for _, loss in result.val_history]
    assert len(val_losses) == 3 and val_losses == sorted(val_losses) and len(set(val_losses)) == 3  # only worse
    steps_per_epoch = result.val_history[0][0]
    assert steps_per_epoch == 10  # 84 training sequences, batches of 8, the last part-batch dropped
    assert result.global_step == 3 * steps_per_epoch
    folder = result.output_dir / "checkpoints"
    assert load_ckpt(folder / "last.ckpt")["global_step"] == result.global_step
    assert result.best_checkpoint.parent == folder
    assert load_ckpt(result.best_checkpoint)["global_step"] == steps_per_epoch < result.global_step
    assert sorted(p.name for p in folder.iterdir()) == sorted(["last.ckpt", result.best_checkpoint.name])
    # During training too, not only at its end: at each epoch's end last.ckpt is one step behind (an epoch's
    # last batch is never a save point, see LastCheckpoint).
    assert watch.seen == [(k * steps_per_epoch, k * steps_per_epoch - 1) for k in (1, 2, 3)]


class LastCheckpointAfterEachStep(pl.Callback):
    """After every optimizer step: (global step, the step last.ckpt holds, or None before there is one)."""

    def __init__(self):
        self.seen = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        path = Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"
        self.seen.append((trainer.global_step, load_ckpt(path)["global_step"] if path.exists() else None))


def test_every_epoch_the_first_included_gets_a_checkpoint_after_its_first_step(tiny_config, text_file):
    """A kill at the end of epoch 1 used to lose the whole epoch: only later epochs were saved after their first
    step. The clock never falls due here (60 minutes), so every save seen is an epoch's."""
    config = tiny_config.replace(dataset_path=str(text_file), max_steps=None, max_epochs=2,
                                 checkpoint_every_minutes=60)
    watch = LastCheckpointAfterEachStep()
    result = train(config, device=CPU, extra_callbacks=[watch])
    assert result.global_step == 20  # 10 steps an epoch (see text_file)
    assert watch.seen[0] == (1, 1)  # the first epoch's first step
    assert watch.seen[9] == (10, 1)  # its last batch is never a save point
    assert watch.seen[10] == (11, 11) and watch.seen[-1] == (20, 11)  # the second epoch's first step


class KilledAt(pl.Callback):
    """Stands for a kill: raises at the start of the step after `step` optimizer steps, before anything saves."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise ConnectionAbortedError(f"killed at step {self.step}")


def test_a_resume_keeps_the_only_best_checkpoint_until_a_better_one_replaces_it(tiny_config, text_file, capsys):
    """The best saved after the resume point used to be deleted on resume; with save_top_k=1 the restored state's
    best was already gone, so a second kill left the run with no best checkpoint at all."""
    config = tiny_config.replace(dataset_path=str(text_file), max_steps=None, max_epochs=3,
                                 checkpoint_every_minutes=60, save_top_k=1)
    folder = Path(config.output_dir) / "checkpoints"
    with pytest.raises(ConnectionAbortedError):  # after epoch 2's validation (step 20), before step 21's save
        train(config, device=CPU, extra_callbacks=[KilledAt(20)])
    best = [p.name for p in folder.glob("epoch*.ckpt")]
    assert len(best) == 1 and "step20-" in best[0] and load_ckpt(folder / "last.ckpt")["global_step"] == 11
    with pytest.raises(ConnectionAbortedError):  # killed again right after resuming from step 11
        train(config, device=CPU, extra_callbacks=[KilledAt(12)])
    assert [p.name for p in folder.glob("epoch*.ckpt")] == best  # still there: the run's only best
    assert f"Kept {best[0]}" in capsys.readouterr().out
    result = train(config, device=CPU)
    assert result.global_step == 30
    names = sorted(p.name for p in folder.glob("*.ckpt"))
    assert len(names) == 2 and "last.ckpt" in names and result.best_checkpoint.name in names  # no -v1 copies
    assert "-v1" not in " ".join(names)


# ------------------------------------------------------------------ 2. a torn checkpoint is stepped past

def truncate_to_half(path: Path) -> bytes:
    data = path.read_bytes()[: path.stat().st_size // 2]
    path.write_bytes(data)
    return data


def test_truncated_last_checkpoint_is_moved_aside_and_the_best_one_resumed(tiny_config, capsys):
    config = tiny_config.replace(max_epochs=3, max_steps=4)
    first = train(config, device=CPU)
    best = first.best_checkpoint
    assert best is not None and best != first.last_checkpoint and load_ckpt(best)["global_step"] == 4
    torn = truncate_to_half(first.last_checkpoint)
    capsys.readouterr()

    second = train(config.replace(max_steps=6), device=CPU)
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "cannot be loaded" in line]
    assert len(lines) == 1 and lines[0].startswith("last.ckpt cannot be loaded (")
    damaged = list((first.output_dir / "checkpoints" / "damaged").iterdir())
    assert len(damaged) == 1 and damaged[0].read_bytes() == torn
    assert f"moved it to {damaged[0]}." in lines[0]
    assert f"Resuming from {best.name} (step 4), the newest checkpoint that loads." in out
    assert second.resumed_from == best
    assert (second.global_step, second.steps_run) == (6, 2)
    assert load_ckpt(second.last_checkpoint)["global_step"] == 6


def test_when_no_checkpoint_loads_the_run_starts_fresh(tiny_config, capsys):
    config = tiny_config.replace(max_epochs=3, max_steps=3)
    first = train(config, device=CPU)
    folder = first.output_dir / "checkpoints"
    ckpts = sorted(folder.glob("*.ckpt"))
    assert len(ckpts) == 2  # last.ckpt and the best
    torn = sorted(truncate_to_half(p) for p in ckpts)
    capsys.readouterr()

    second = train(config, device=CPU)
    out = capsys.readouterr().out
    assert sum("cannot be loaded" in line for line in out.splitlines()) == 2
    assert f"No checkpoint in {folder} loads: starting fresh." in out
    assert "Resuming from" not in out
    assert second.resumed_from is None and (second.global_step, second.steps_run) == (3, 3)
    kept = sorted(p.read_bytes() for p in first.output_dir.rglob("damaged/*.ckpt"))
    assert kept == torn  # the torn files are kept for inspection, not deleted
    assert [s for s, _ in second.train_history] == [1, 2, 3]


# ------------------------------------------------------------------ 3. a changed data file is refused

def test_changed_data_file_is_refused_before_anything_is_written(tiny_config, text_file):
    config = tiny_config.replace(dataset_path=str(text_file), max_steps=2)
    first = train(config, device=CPU)
    out = first.output_dir
    before = snapshot(out)
    assert "config.json" in before and "checkpoints/last.ckpt" in before
    assert any(name.startswith("tokenizer/") for name in before)
    with text_file.open("a", encoding="utf-8") as f:
        f.write("ΩΣ new characters ΩΣ\n")

    with pytest.raises(IncompatibleCheckpointError) as err:
        train(config, device=CPU)
    msg = str(err.value)
    assert f"the char tokenizer built from {text_file}" in msg
    assert "(the data changed since the checkpoint was written)" in msg
    assert "--set resume=false" in msg
    assert snapshot(out) == before  # config.json, tokenizer/, last.ckpt, logs: byte for byte
    assert not (out / "archive").exists()


# ------------------------------------------------------------------ 4. a changed model.py is refused or archived

MODEL_CODE = '''
from torch import nn

WIDTH = {width}


class Model(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.embed = nn.Embedding(config["vocab_size"], WIDTH)
        self.out = nn.Linear(WIDTH, config["vocab_size"])

    def forward(self, ids):
        return self.out(self.embed(ids))  # (B, T, V)
'''


def write_model(path: Path, width: int) -> str:
    code = textwrap.dedent(MODEL_CODE.format(width=width))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(code, encoding="utf-8")
    return code


def test_changed_model_file_is_refused_then_archived_with_start_new(tiny_config, tmp_path, capsys):
    model_py = tmp_path / "mine" / "model.py"
    old_code = write_model(model_py, width=16)
    config = tiny_config.replace(model_source="file", model_path=str(model_py), max_steps=2)
    first = train(config, device=CPU)
    out = first.output_dir
    vocab = first.tokenizer.vocab_size
    assert (out / "user_model" / "model.py").read_text(encoding="utf-8") == old_code
    old_ckpt = first.last_checkpoint.read_bytes()
    before = snapshot(out)
    new_code = write_model(model_py, width=24)

    with pytest.raises(IncompatibleCheckpointError) as err:
        train(config, device=CPU)
    msg = str(err.value)
    assert "the model's tensors differ from the checkpoint's in 2 places" in msg
    assert f"model.embed.weight: ({vocab}, 16) (checkpoint) vs ({vocab}, 24) (now)" in msg
    assert "--set resume=false" in msg
    assert snapshot(out) == before  # the user_model/model.py copy and last.ckpt included

    capsys.readouterr()
    fresh = train(config, device=CPU, on_change="start_new")
    archive = only_archive(out)
    assert (archive / "user_model" / "model.py").read_text(encoding="utf-8") == old_code
    assert (archive / "checkpoints" / "last.ckpt").read_bytes() == old_ckpt
    assert snapshot(archive) == before
    assert f"The old run was moved, untouched, to {archive}." in capsys.readouterr().out
    assert fresh.resumed_from is None and (fresh.global_step, fresh.steps_run) == (2, 2)
    assert (out / "user_model" / "model.py").read_text(encoding="utf-8") == new_code
    assert tuple(load_ckpt(fresh.last_checkpoint)["state_dict"]["model.embed.weight"].shape) == (vocab, 24)


# ------------------------------------------------------------------ 5. a changed config is refused or archived

def test_changed_config_is_refused_or_archived(tiny_config, capsys):
    first = train(tiny_config.replace(max_steps=2), device=CPU)
    out = first.output_dir
    before = snapshot(out)
    changed = tiny_config.replace(max_steps=2, dropout=0.1)

    with pytest.raises(IncompatibleCheckpointError) as err:
        train(changed, device=CPU)
    msg = str(err.value)
    assert "dropout: 0.0 (checkpoint) vs 0.1 (now)" in msg
    assert "run again with --set resume=false" in msg
    assert snapshot(out) == before

    capsys.readouterr()
    second = train(changed, device=CPU, on_change="start_new")
    printed = capsys.readouterr().out
    archive = only_archive(out)
    assert f"The settings differ from the run in {out} (Dropout: 0.0 (the old run) vs 0.1 (now)): starting a new run. " \
           f"The old run was moved, untouched, to {archive}." in printed
    assert snapshot(archive) == before  # the old run, whole and byte for byte
    assert second.resumed_from is None and (second.global_step, second.steps_run) == (2, 2)
    assert WizardConfig.load(out / "config.json").dropout == 0.1


# ------------------------------------------------------------------ 6, 7. results describe the whole run

def test_nothing_to_train_rerun_reports_the_whole_run(tiny_config, capsys):
    config = tiny_config.replace(max_steps=5)
    first = train(config, device=CPU)
    again = train(config, device=CPU)
    assert "Nothing to train" in capsys.readouterr().out
    assert (again.global_step, again.steps_run) == (5, 0)
    assert [s for s, _ in again.train_history] == [1, 2, 3, 4, 5]
    assert again.train_history == first.train_history
    assert again.val_history == first.val_history and again.val_history[-1][0] == 5
    assert (again.train_loss, again.val_loss) == (first.train_loss, first.val_loss)
    assert first.tokens_per_sec > 0
    assert again.tokens_per_sec == pytest.approx(first.tokens_per_sec, rel=0.1)


def test_history_spans_a_resume(tiny_config):
    config = tiny_config.replace(max_epochs=3)
    first = train(config.replace(max_steps=4), device=CPU)
    second = train(config.replace(max_steps=8), device=CPU)
    assert (second.global_step, second.steps_run) == (8, 4)
    assert [s for s, _ in second.train_history] == list(range(1, 9))
    assert second.train_history[:4] == first.train_history
    assert [s for s, _ in second.val_history] == [4, 8]


# ------------------------------------------------------------------ 8. a busy folder is refused

HOLD_LOCK = """
import importlib.util, sys, time
sys.path.insert(0, sys.argv[1])
spec = importlib.util.spec_from_file_location("run_lock", sys.argv[1] + "/utils/run_folder/lock.py")
run_lock = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run_lock)
run_lock.RunLock(sys.argv[2]).acquire()
time.sleep(120)
"""


def test_second_run_into_a_busy_folder_is_refused(tiny_config):
    out = Path(tiny_config.output_dir)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(REPO_ROOT), str(out)], env=ENV)
    try:
        lock, deadline = out / ".run.lock", time.monotonic() + 30
        while not (lock.exists() and lock.read_bytes().endswith(b"}")) and time.monotonic() < deadline:
            assert holder.poll() is None, "the lock holder died"
            time.sleep(0.02)
        assert json.loads(lock.read_text())["pid"] == holder.pid

        with pytest.raises(RunFolderBusyError) as err:
            train(tiny_config.replace(max_steps=1), device=CPU)
        assert f"{out} is in use by another training run (pid {holder.pid} on " in str(err.value)
        assert [p.name for p in out.iterdir()] == [".run.lock"]  # no checkpoints, config or logs
        assert json.loads(lock.read_text())["pid"] == holder.pid  # the holder's lock left alone
    finally:
        holder.kill()
        holder.wait(timeout=10)


# ------------------------------------------------------------------ 9. Ctrl-C saves and exits 130

def cli(data: Path, out: Path, **extra) -> list[str]:
    settings = {**dict(dataset_source="file", dataset_path=str(data), max_seq_len=32, batch_size=8, max_epochs=1,
                       max_steps=500, learning_rate=3e-3, log_every_n_steps=1, checkpoint_every_minutes=60,
                       output_dir=str(out)), **extra}
    args = [sys.executable, "-m", "utils.training", "--sample-tokens", "0"]
    for key, value in settings.items():
        args += ["--set", f"{key}={value}"]
    return args


@contextlib.contextmanager
def cli_process(args: list[str], log: Path):
    """The command line running with its output in log; killed if it still runs when the block ends."""
    with log.open("wb") as sink:
        proc = subprocess.Popen(args, cwd=REPO_ROOT, env=ENV, stdout=sink, stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def wait_until_training(proc, out: Path, log: Path, seconds: float) -> None:
    """Until the run has logged a training step (its metrics file exists), while it still runs."""
    metrics, deadline = out / "logs" / "version_0" / "metrics.csv", time.monotonic() + seconds
    while not metrics.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert metrics.exists() and proc.poll() is None, log.read_text()[-3000:]


def test_sigint_saves_last_checkpoint_and_exits_130(tmp_path, small_text):
    out, log = tmp_path / "run", tmp_path / "log.txt"
    with cli_process(cli(small_text, out), log) as proc:
        wait_until_training(proc, out, log, seconds=60)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
    text = log.read_text()
    assert code == 130, text[-3000:]
    last = out / "checkpoints" / "last.ckpt"
    step = load_ckpt(last)["global_step"]
    assert 0 < step < 500
    assert "SIGINT: finishing the current step, then saving last.ckpt and stopping" in text
    assert (f"Training stopped (SIGINT) at step {step}; saved {last}. Run again with the same output_dir "
            "(the Train cell, or the same command) to continue from there.") in text
    assert "Traceback" not in text

    again = subprocess.run(cli(small_text, out, max_steps=step + 2), cwd=REPO_ROOT, env=ENV, capture_output=True,
                           text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"Resuming from {last} (step {step})" in again.stdout
    assert f"steps:            2 this run, {step + 2} in total" in again.stdout
    assert load_ckpt(last)["global_step"] == step + 2


SLOW_MODEL = """
import time
from torch import nn


class Model(nn.Module):
    def __init__(self, config):
        super().__init__()
        print("building the model", flush=True)
        time.sleep(float(config.get("build_seconds", 0)))  # start-up under way while this sleeps
        self.emb = nn.Embedding(config["vocab_size"], 8)
        self.head = nn.Linear(8, config["vocab_size"])

    def forward(self, idx):
        if self.training:
            print("forward", flush=True)
            time.sleep(float(config_step_seconds))  # a step long enough for two presses of Ctrl-C within it
        return self.head(self.emb(idx))
"""


def slow_model(folder: Path, build_seconds: float, step_seconds: float) -> Path:
    folder.mkdir(parents=True)
    path = folder / "model.py"
    path.write_text(SLOW_MODEL.replace("config_step_seconds", str(step_seconds)), encoding="utf-8")
    (folder / "config.json").write_text(json.dumps({"build_seconds": build_seconds}), encoding="utf-8")
    return path


def wait_for(proc, log: Path, text: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while text not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert text in log.read_text() and proc.poll() is None, log.read_text()[-3000:]


def test_ctrl_c_during_start_up_is_one_line_and_exit_130(tmp_path, small_text):
    """It used to print a 33-frame KeyboardInterrupt traceback."""
    out, log = tmp_path / "run", tmp_path / "log.txt"
    model = slow_model(tmp_path / "model", build_seconds=60, step_seconds=0)
    with cli_process(cli(small_text, out, model_source="file", model_path=model), log) as proc:
        wait_for(proc, log, "building the model")
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
    text = log.read_text()
    assert code == 130, text[-3000:]
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text[-3000:]
    assert text.rstrip().splitlines()[-1] == ("Stopped (Ctrl-C) before train finished. Run the same command again to "
                                              "continue: a run resumes from its last checkpoint, when it saved one.")
    assert not (out / "checkpoints").exists()


def test_a_second_ctrl_c_stops_at_once_and_says_so(tmp_path, small_text):
    """It used to exit 130 without a word: the message was raised inside `except SystemExit`, past its printer."""
    out, log = tmp_path / "run", tmp_path / "log.txt"
    model = slow_model(tmp_path / "model", build_seconds=0, step_seconds=3.0)
    with cli_process(cli(small_text, out, model_source="file", model_path=model), log) as proc:
        wait_until_training(proc, out, log, seconds=120)
        forwards = log.read_text().count("forward")
        while log.read_text().count("forward") == forwards and proc.poll() is None:
            time.sleep(0.01)  # a training step has just begun: its forward pass sleeps for 3 s now
        proc.send_signal(signal.SIGINT)
        wait_for(proc, log, "SIGINT: finishing the current step")
        proc.send_signal(signal.SIGINT)  # within the same step
        code = proc.wait(timeout=60)
    text = log.read_text()
    assert code == 130, text[-3000:]
    last = out / "checkpoints" / "last.ckpt"  # the first step's save (every epoch's first step is saved)
    assert re.search(rf"Training stopped at once at step \d+, without a new checkpoint. Run again with the same "
                     rf"output_dir to continue from {re.escape(str(last))}.", text), text[-3000:]
    assert "Traceback" not in text


# ------------------------------------------------------------------ 10. temp files of a killed write

def test_temp_files_of_a_killed_write_are_removed_on_the_next_start(tiny_config, capsys):
    first = train(tiny_config.replace(max_steps=2), device=CPU)
    out = first.output_dir
    leftovers = [out / "checkpoints" / ".last.ckpt.12345.kit-tmp", out / ".config.json.12345.kit-tmp"]
    for path in leftovers:
        path.write_bytes(b"half a file")
    capsys.readouterr()

    again = train(tiny_config.replace(max_steps=2), device=CPU)
    assert f"Removed 2 temp file(s) left by an interrupted write in {out}." in capsys.readouterr().out
    assert not any(path.exists() for path in leftovers)
    assert not [p for p in out.rglob("*") if ".kit-tmp" in p.name]
    assert again.resumed_from == first.last_checkpoint and again.global_step == 2


# ------------------------------------------------------------------ 11. a full disk during a checkpoint write

def test_a_full_disk_during_a_checkpoint_write_is_one_line_exit_2_and_the_old_checkpoint_survives(
        tiny_config, monkeypatch, capsys):
    """A full disk is simulated (this machine's is not full): every write to a checkpoint's temp file raises
    OSError(ENOSPC), as a full disk or Drive quota does. torch.save reports that as a RuntimeError ("unexpected
    pos") without the errno, which the command line used to show as a bug."""
    import errno
    import io

    from utils.cli import main

    config = tiny_config.replace(checkpoint_every_minutes=0)
    with pytest.raises(ConnectionAbortedError):  # a run killed after step 2, saved at every step
        train(config, device=CPU, extra_callbacks=[KilledAt(2)])
    out = Path(config.output_dir)
    old = (out / "checkpoints" / "last.ckpt").read_bytes()

    class FullDisk(io.RawIOBase):
        """A checkpoint's temp file on a full disk: every write raises ENOSPC."""

        def __init__(self, f):
            self.f = f

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def writable(self):
            return True

        def fileno(self):
            return self.f.fileno()

        def close(self):
            self.f.close()
            super().close()

    real_open = open

    def open_on_a_full_disk(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        return FullDisk(f) if "w" in mode and ".ckpt" in str(file) else f

    monkeypatch.setattr("builtins.open", open_on_a_full_disk)
    args = ["--sample-tokens", "0", "--config", str(out / "config.json")]
    assert main(args) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"error: No space left on the disk holding {out / 'checkpoints'} "
                                "(or your Google Drive quota) for last.ckpt: the checkpoint needs about "), errors[0]
    assert "Free some space or choose an output_dir with room, then run again; the last.ckpt from before is intact" \
        in errors[0]
    monkeypatch.undo()
    assert (out / "checkpoints" / "last.ckpt").read_bytes() == old
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]  # no temp file left


# ------------------------------------------------------------------ 12. optimizer settings changed between runs

class OptimizerSeen(pl.Callback):
    """(global step, learning rate, weight decay of the decayed group) at the start of every training batch."""

    def __init__(self):
        self.seen = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        group = trainer.optimizers[0].param_groups[0]
        self.seen.append((trainer.global_step, group["lr"], group["weight_decay"]))


def logged_learning_rates(out: Path) -> dict[int, float]:
    import csv

    rates = {}
    for path in sorted((out / "logs").glob("version_*/metrics.csv")):
        with path.open(encoding="utf-8") as f:
            rates.update({int(row["step"]): float(row["lr"]) for row in csv.DictReader(f) if row.get("lr")})
    return rates


def test_changed_optimizer_settings_take_effect_from_the_resume_point_and_are_said(tiny_config, capsys):
    """A changed learning_rate used to resume silently at the old rate (the restored schedule kept its base) while
    config.json recorded the new one."""
    config = tiny_config.replace(checkpoint_every_minutes=0, learning_rate=1e-3, weight_decay=0.1)
    with pytest.raises(ConnectionAbortedError):
        train(config, device=CPU, extra_callbacks=[KilledAt(4)])
    capsys.readouterr()
    seen = OptimizerSeen()
    changed = config.replace(learning_rate=1e-5, weight_decay=0.01, gradient_clip_val=0.5)
    train(changed, device=CPU, extra_callbacks=[seen])
    out = capsys.readouterr().out
    assert "learning_rate 0.001 -> 1e-05 from step 4 on" in out
    assert "weight_decay 0.1 -> 0.01 from step 4 on" in out
    assert "gradient_clip_val 1.0 -> 0.5 from step 4 on" in out
    assert all(wd == 0.01 for _, _, wd in seen.seen)
    rates = logged_learning_rates(Path(config.output_dir))
    assert all(rates[step] > 1e-4 for step in range(1, 5)), rates  # 1e-3 on a cosine to step 8 (10% at its end)
    assert all(1e-6 <= rates[step] <= 1e-5 for step in range(5, 9)), rates  # 1e-5 on the same cosine
    assert WizardConfig.load(Path(config.output_dir) / "config.json").learning_rate == 1e-5  # what the run used
