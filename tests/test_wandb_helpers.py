"""W&B helpers: the run config, names, auth without prompts, and real offline runs read back from disk.

Mocked, because they cannot run here: the `google.colab` package (a fake one in sys.modules raises
each of userdata.get's errors) and a GPU (a DeviceInfo standing for a T4). W&B itself is the real
package in offline mode; its transaction log (.wandb) is parsed with wandb.proto. An unreachable W&B
server is real too: a closed 127.0.0.1 port, or a local socket that accepts and never answers.
"""

from __future__ import annotations

import json
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import types
from contextlib import contextmanager, nullcontext
from datetime import datetime
from pathlib import Path

import pytest

from utils.config import WizardConfig
from utils.env import DeviceInfo
from utils.training import train
from utils.precision import resolve_precision
from utils.training.callbacks.health import Fp16HealthError
from utils.wandb_helpers import (WandbAuth, build_wandb_config, make_project_name, make_run_name,
                                 resolve_wandb_auth, resolve_wandb_init_timeout)

ROOT = Path(__file__).resolve().parents[1]
CPU = DeviceInfo("cpu", "CPU")
FAKE_KEY = "f4k3f4k3f4k3f4k3f4k3f4k3f4k3f4k3f4k3f4k3"  # 40 characters, like a real W&B key
CONFIG_KEYS = {"learning_rate", "batch_size", "epochs", "warmup_ratio", "weight_decay", "max_grad_norm", "model_type",
               "vocab_size", "max_seq_len", "total_params", "trainable_params", "total_params_millions", "device",
               "gpu_name", "mixed_precision", "precision", "gradient_accumulation_steps"}


@pytest.fixture(autouse=True)
def isolated_wandb(tmp_path, monkeypatch):
    """No W&B key, no W&B state outside tmp_path, no google.colab unless a test installs its fake."""
    monkeypatch.setenv("WANDB_API_KEY", "unset")
    monkeypatch.delenv("WANDB_API_KEY")  # recorded, so a key a test puts in os.environ is removed afterwards
    monkeypatch.delenv("WANDB_MODE", raising=False)
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home" / var.lower()))
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)


def fake_colab(monkeypatch, behaviour):
    """Install a fake google.colab.userdata whose get() returns a key or raises the named error."""
    userdata = types.ModuleType("google.colab.userdata")
    for name, base in [("NotebookAccessError", Exception), ("SecretNotFoundError", Exception),
                       ("TimeoutException", Exception)]:
        setattr(userdata, name, type(name, (base,), {}))
    userdata.calls = []

    def get(key):
        userdata.calls.append(key)
        if behaviour in ("NotebookAccessError", "SecretNotFoundError", "TimeoutException"):
            raise getattr(userdata, behaviour)(key)
        return behaviour

    userdata.get = get
    colab = types.ModuleType("google.colab")
    colab.userdata = userdata
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    monkeypatch.setitem(sys.modules, "google.colab.userdata", userdata)
    return userdata


# ---------------------------------------------------------------------------- config and names
def test_build_wandb_config_is_flat_with_the_run_facts(tiny_lm):
    config = WizardConfig(learning_rate=3e-4, batch_size=8, max_epochs=2, warmup_ratio=0.1, weight_decay=0.05,
                          gradient_clip_val=0.5, max_seq_len=64, gradient_accumulation_steps=4)
    model = tiny_lm(vocab_size=100, dim=10)
    model.emb.weight.requires_grad_(False)
    t4 = DeviceInfo("cuda", "Tesla T4", (7, 5), 15 * 2**30)  # a GPU's facts, mocked
    data = build_wandb_config(config, model, resolve_precision(True, "auto", t4), vocab_size=100)
    assert set(data) == CONFIG_KEYS
    total = 100 * 10 + 10 * 100 + 100
    assert data == {
        "learning_rate": 3e-4, "batch_size": 8, "epochs": 2, "warmup_ratio": 0.1, "weight_decay": 0.05,
        "max_grad_norm": 0.5, "model_type": "tinylm", "vocab_size": 100, "max_seq_len": 64, "total_params": total,
        "trainable_params": total - 100 * 10, "total_params_millions": 0.002, "device": "cuda",
        "gpu_name": "Tesla T4", "mixed_precision": True, "precision": "16-mixed", "gradient_accumulation_steps": 4,
    }
    assert all(isinstance(v, (int, float, str, bool, type(None))) for v in data.values())
    on_cpu = build_wandb_config(config.replace(use_mixed_precision=False), model, resolve_precision(False, "auto", CPU), 100)
    assert (on_cpu["device"], on_cpu["gpu_name"], on_cpu["mixed_precision"], on_cpu["precision"]) == \
           ("cpu", None, False, "32-true")


@pytest.mark.parametrize("name, expected", [("colab-transformer-kit", "colab-transformer-kit"),
                                            ("My Project_1", "my-project-1"), ("  GPT / tests!  ", "gpt-tests")])
def test_make_project_name_is_lowercase_with_hyphens(name, expected):
    assert make_project_name(name) == expected


def test_make_project_name_refuses_a_name_without_letters():
    with pytest.raises(ValueError, match="'!!!' has no letters or digits"):
        make_project_name("!!!")


def test_make_run_name_is_model_type_and_timestamp():
    assert make_run_name("gpt", now=datetime(2026, 3, 5, 14, 2, 9)) == "gpt_20260305_140209"
    name = make_run_name("gpt")
    assert name.startswith("gpt_") and datetime.strptime(name[4:], "%Y%m%d_%H%M%S")


# ---------------------------------------------------------------------------- auth order
def test_disabled_never_looks_for_a_key(monkeypatch):
    userdata = fake_colab(monkeypatch, FAKE_KEY)
    assert resolve_wandb_auth("disabled").mode == "disabled"
    assert userdata.calls == []


def test_offline_stays_offline_even_with_a_key(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    auth = resolve_wandb_auth("offline")
    assert (auth.mode, auth.source) == ("offline", "none")
    assert "wandb sync" in auth.message


@pytest.mark.parametrize("mode", ["auto", "online"])
def test_environment_key_comes_first(monkeypatch, mode):
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    userdata = fake_colab(monkeypatch, "another-key-from-colab")
    auth = resolve_wandb_auth(mode)
    assert (auth.mode, auth.source) == ("online", "environment")
    assert userdata.calls == []
    assert os.environ["WANDB_API_KEY"] == FAKE_KEY


def test_colab_secret_is_used_without_a_login_and_put_in_the_environment(monkeypatch):
    userdata = fake_colab(monkeypatch, FAKE_KEY)
    auth = resolve_wandb_auth("auto")
    assert auth == WandbAuth("online", "colab-secrets", "W&B logs this run online (API key from Colab secrets).")
    assert userdata.calls == ["WANDB_API_KEY"]
    assert os.environ["WANDB_API_KEY"] == FAKE_KEY
    assert FAKE_KEY not in repr(auth)


@pytest.mark.parametrize("error, reason", [
    ("SecretNotFoundError", "no WANDB_API_KEY secret in Colab"),
    ("NotebookAccessError", "this notebook has no access to the WANDB_API_KEY secret"),
    ("TimeoutException", "reading Colab secrets timed out"),
    ("", "the WANDB_API_KEY secret in Colab is empty"),
])
@pytest.mark.parametrize("mode", ["auto", "online"])
def test_each_colab_failure_falls_back_to_offline_with_the_reason(monkeypatch, error, reason, mode):
    fake_colab(monkeypatch, error)
    auth = resolve_wandb_auth(mode)
    assert (auth.mode, auth.source) == ("offline", "none")
    assert reason in auth.message and "wandb sync" in auth.message and "\n" not in auth.message
    assert ("wandb_mode='online'" in auth.message) is (mode == "online")
    assert "WANDB_API_KEY" not in os.environ


def test_no_key_outside_colab_is_offline():
    auth = resolve_wandb_auth("auto")
    assert (auth.mode, auth.source) == ("offline", "none")
    assert auth.message.startswith("W&B logs this run offline (no WANDB_API_KEY in the environment)")


def test_unknown_mode_is_an_error():
    with pytest.raises(ValueError, match="wandb_mode='cloud' is not allowed"):
        resolve_wandb_auth("cloud")


@pytest.mark.parametrize("value, seconds", [(None, 60.0), ("", 60.0), ("7.5", 7.5), (" 120 ", 120.0)])
def test_init_timeout_is_wandb_init_timeout_else_60_seconds(monkeypatch, value, seconds):
    if value is not None:
        monkeypatch.setenv("WANDB_INIT_TIMEOUT", value)
    else:
        monkeypatch.delenv("WANDB_INIT_TIMEOUT", raising=False)
    assert resolve_wandb_init_timeout() == seconds


@pytest.mark.parametrize("value", ["soon", "0", "-5", "nan"])
def test_a_bad_init_timeout_is_an_error_naming_the_variable(monkeypatch, value):
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", value)
    with pytest.raises(ValueError, match=f"WANDB_INIT_TIMEOUT='{value}' is not allowed; set it to a number of seconds"):
        resolve_wandb_init_timeout()


# ---------------------------------------------------------------------------- real offline runs
def read_wandb_records(run_dir: Path, timeout: float = 30.0) -> list:
    """The protobuf Records of a run's .wandb transaction log, once it holds the run's exit record.

    wandb.finish() can return while the wandb-core process is still writing the file, so this waits.
    """
    deadline = time.monotonic() + timeout
    while True:
        records = parse_wandb_log(next(run_dir.glob("*.wandb")).read_bytes())
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def parse_wandb_log(raw: bytes) -> list:
    """A 7-byte header (":W&B", magic, version), then leveldb-log records in 32 KiB blocks, each a
    wandb.proto Record (FULL, or FIRST/MIDDLE/LAST pieces across blocks)."""
    from wandb.proto import wandb_internal_pb2

    assert raw[:4] == b":W&B"
    block, pos, chunks, payloads = 32768, 7, b"", []
    while pos + 7 <= len(raw):
        left = block - pos % block
        if left < 7:  # a block's zero-filled trailer
            pos += left
            continue
        _checksum, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        if pos + 7 + length > len(raw):  # a record still being written
            break
        if kind == 0:  # zero padding up to the end of the block
            pos += left
            continue
        chunks += raw[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST
            payloads.append(chunks)
            chunks = b""
    records = []
    for payload in payloads:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        records.append(record)
    return records


def history_rows(records) -> list[dict]:
    rows = []
    for record in records:
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item})
    return rows


def run_config(records) -> dict:
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in run.config.update}


def exit_code(records) -> int:
    return next(r.exit.exit_code for r in records if r.WhichOneof("record_type") == "exit")


def offline_config(tmp_path, **changes) -> WizardConfig:
    base = dict(max_steps=6, max_seq_len=16, batch_size=4, val_split=0.002, log_every_n_steps=1, learning_rate=2e-3,
                precision="16-mixed", wandb_mode="offline", wandb_project="kit-tests",
                output_dir=str(tmp_path / "run"))
    return WizardConfig(**{**base, **changes})


def test_offline_run_records_amp_metrics_skips_and_config(tmp_path, tiny_lm, capsys):
    import wandb

    result = train(offline_config(tmp_path), model=tiny_lm(inf_grad_calls={3}), device=CPU)
    assert wandb.run is None  # finished, so a re-run starts a new one
    assert "W&B logs this run offline (wandb_mode='offline')" in capsys.readouterr().out
    run_dirs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(run_dirs) == 1
    records = read_wandb_records(run_dirs[0])
    rows = history_rows(records)

    steps = [r for r in rows if "amp/skipped_steps" in r]
    assert [r["amp/loss_scale"] for r in steps] == [65536.0, 65536.0, 32768.0, 32768.0, 32768.0, 32768.0]
    assert [r["amp/skipped_steps"] for r in steps] == [0, 0, 1, 1, 1, 1]
    assert [r["trainer/global_step"] for r in steps] == [1, 2, 3, 4, 5, 6]  # logged after each optimizer step
    assert any(r.get("amp/precision") == "16-mixed" and r.get("amp/enabled") == 1 for r in rows)
    assert any("val/loss" in r for r in rows)

    config = run_config(records)
    assert CONFIG_KEYS <= set(config)
    assert config["learning_rate"] == 2e-3
    assert config["precision"] == "16-mixed" and config["mixed_precision"] is True
    assert config["model_type"] == "tinylm" and config["vocab_size"] == 103 and config["max_grad_norm"] == 1.0
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert run.project == "kit-tests" and run.display_name.startswith("tinylm_")
    assert exit_code(records) == 0
    assert result.global_step == 6


def test_offline_run_that_fails_health_is_finished_as_failed(tmp_path, tiny_lm):
    import wandb

    with pytest.raises(Fp16HealthError):
        train(offline_config(tmp_path, max_steps=20), tiny_lm(nan_loss_calls={2}), CPU)
    assert wandb.run is None
    records = read_wandb_records(next((tmp_path / "run" / "wandb").glob("offline-run-*")))
    assert exit_code(records) == 1


def test_a_run_left_open_by_an_earlier_cell_is_finished_not_reused(tmp_path, tiny_lm, capsys):
    import wandb

    stale = wandb.init(mode="offline", project="kit-tests", name="stale", dir=str(tmp_path))
    train(offline_config(tmp_path, max_steps=2), model=tiny_lm(), device=CPU)
    assert "W&B: finishing the run 'stale' left open by an earlier cell" in capsys.readouterr().out
    assert wandb.run is None
    assert exit_code(read_wandb_records(next((tmp_path / "wandb").glob(f"offline-run-*-{stale.id}")))) == 0
    ours = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(ours) == 1 and not ours[0].name.endswith(stale.id)


def test_reruns_of_a_run_folder_continue_one_wandb_run_and_open_none_when_nothing_is_left(tmp_path, tiny_lm, capfd):
    train(offline_config(tmp_path, max_steps=2), model=tiny_lm(), device=CPU)
    train(offline_config(tmp_path, max_steps=4), model=tiny_lm(), device=CPU)  # resumes at step 2
    err = capfd.readouterr().err
    assert "anonymous setting" not in err  # wandb's warning about the anonymous=None Lightning passes
    train(offline_config(tmp_path, max_steps=4), model=tiny_lm(), device=CPU)  # nothing left: no W&B run
    assert "W&B: nothing is left to train, so no W&B run is opened." in capfd.readouterr().out
    run_id = (tmp_path / "run" / "wandb_run_id.txt").read_text().strip()
    runs = sorted((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(f"-{run_id}" in run.name for run in runs)  # offline-run-<time>-<id>[-1]
    steps = [r["trainer/global_step"] for run in runs for r in history_rows(read_wandb_records(run))
             if "train/loss" in r]
    assert steps == [1, 2, 3, 4]  # one W&B run id, continued where the checkpoint was


def run_cli(tmp_path, env_changes: dict, *overrides: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(tmp_path / "home"), WANDB_CONFIG_DIR=str(tmp_path / "wandb-home" / "config"),
               WANDB_CACHE_DIR=str(tmp_path / "wandb-home" / "cache"),
               WANDB_DATA_DIR=str(tmp_path / "wandb-home" / "data"), OMP_NUM_THREADS="1", **env_changes)
    args = ["max_steps=3", "max_seq_len=16", "batch_size=4", "val_split=0.002", "log_every_n_steps=1",
            "precision=32-true", f"output_dir={tmp_path / 'run'}", *overrides]
    command = [sys.executable, "-m", "utils.training", "--sample-tokens", "5"]
    for arg in args:
        command += ["--set", arg]
    return subprocess.run(command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=180)


def test_training_with_stdin_closed_and_no_key_finishes_offline(tmp_path):
    # WANDB_MODE=online in the environment must not make wandb ask for a login either.
    out = run_cli(tmp_path, {"WANDB_MODE": "online"}, "wandb_mode=online")
    assert out.returncode == 0, out.stderr[-3000:]
    assert ("W&B: wandb_mode='online' but no WANDB_API_KEY in the environment, so this run logs offline"
            in out.stdout)
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and exit_code(read_wandb_records(runs[0])) == 0


def test_a_fake_key_never_reaches_files_or_output(tmp_path):
    out = run_cli(tmp_path, {"WANDB_API_KEY": FAKE_KEY}, "wandb_mode=offline")
    assert out.returncode == 0, out.stderr[-3000:]
    assert FAKE_KEY not in out.stdout and FAKE_KEY not in out.stderr
    scanned = [p for p in (tmp_path).rglob("*") if p.is_file()] + list((ROOT / "notebooks").glob("*.ipynb"))
    names = {p.name for p in scanned}
    assert {"config.json", "last.ckpt", "metrics.csv", "output.log", "debug.log", "debug-internal.log"} <= names
    assert any(p.suffix == ".wandb" for p in scanned)
    leaked = [str(p) for p in scanned if FAKE_KEY.encode() in p.read_bytes()]
    assert leaked == []


# ---------------------------------------------------------------------------- W&B server out of reach
def refused_url() -> str:
    """The address of a 127.0.0.1 port nothing listens on: connecting is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@contextmanager
def silent_server():
    """A 127.0.0.1 server that accepts connections and never answers, as a hung proxy or firewall does."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted = []

    def accept():
        while True:
            try:
                accepted.append(listener.accept()[0])
            except OSError:  # the listener was shut down: the test is over
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(); close() alone would not
        listener.close()
        for conn in accepted:
            conn.close()
        thread.join(timeout=5)


@pytest.fixture
def unreachable_wandb(request, monkeypatch):
    """A fake key and a W&B address that never starts a run; request.param is "refused" or "silent"."""
    import wandb

    with silent_server() if request.param == "silent" else nullcontext(refused_url()) as url:
        monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
        monkeypatch.setenv("WANDB_BASE_URL", url)
        # How long wandb.init waits for the server (60 s unless set): short here, so each test takes ~15 s.
        monkeypatch.setenv("WANDB_INIT_TIMEOUT", "5")
        wandb.teardown()  # wandb reads WANDB_* once per process: set it up again from this environment
        yield url
    wandb.teardown()  # so later tests don't inherit this address and key


@pytest.mark.parametrize("unreachable_wandb", ["refused", "silent"], indirect=True)
def test_an_unreachable_server_means_offline_logging_not_a_crash(tmp_path, tiny_lm, capsys, unreachable_wandb):
    import wandb

    result = train(offline_config(tmp_path, wandb_mode="auto", max_steps=3), model=tiny_lm(), device=CPU)
    out, err = capsys.readouterr()
    assert FAKE_KEY not in out and FAKE_KEY not in err
    assert [p for p in tmp_path.rglob("*") if p.is_file() and FAKE_KEY.encode() in p.read_bytes()] == []
    said = [line for line in out.splitlines() if line.startswith("W&B")]
    assert len(said) == 2, said
    assert said[0] == "W&B logs this run online (API key from the WANDB_API_KEY environment variable)."
    waited = re.fullmatch(rf"W&B: could not start the run on the W&B server at {re.escape(unreachable_wandb)} "
                          r"within (\d+) s \(.+\); logging this run offline instead; upload it later with "
                          r"`wandb sync <output_dir>/wandb/offline-run-\*` on a machine logged in to W&B\.", said[1])
    assert waited, said[1]
    assert int(waited[1]) < 30  # WANDB_INIT_TIMEOUT=5 plus wandb's own ~10 s of login lookups, not the 60 s default

    assert result.global_step == 3 and wandb.run is None
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    records = read_wandb_records(runs[0])
    assert exit_code(records) == 0
    assert run_config(records)["model_type"] == "tinylm"
    assert [r["trainer/global_step"] for r in history_rows(records) if "train/loss" in r] == [1, 2, 3]
