"""The command line's own work, before any training: --help lists every setting from the config's
metadata, and a bad setting is reported in one line without loading torch or Lightning."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from dataclasses import fields

import pytest

from tests.conftest import REPO_ROOT
from utils.config import SETTINGS, WizardConfig, apply_overrides
from utils.cli import main, set_text
from utils.cli import HELP_WIDTH

HEAVY = ("torch", "lightning", "pytorch_lightning")


def _python(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)


def _imported(importtime_stderr: str) -> list[str]:
    """Module names from `python -X importtime` lines: 'import time: self | cumulative |   name'."""
    return [line.split("|")[-1].strip() for line in importtime_stderr.splitlines() if line.startswith("import time:")]


def test_help_lists_every_setting_with_its_default_and_help_in_groups():
    proc = _python("-m", "utils.training", "--help")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    entries = _setting_entries(out)
    assert list(entries) == [f.name for f in fields(WizardConfig)]
    for f in fields(WizardConfig):
        assert entries[f.name].startswith(f"{f.name}={set_text(f.default)} "), entries[f.name]
        assert " ".join(SETTINGS[f.name].help.split()) in entries[f.name], f.name
    assert "  batch_size=16 " in out and "  max_steps=null " in out and "  dataset_path=\"\" " in out
    assert "  use_mixed_precision=true " in out
    assert entries["precision"].endswith("[auto | 16-mixed | bf16-mixed]")
    groups = ["Task and data:", "Tokenizer:", "Model:", "Optimisation:", "Precision:", "Output and checkpoints:",
              "Logging:"]
    positions = [out.index(f"\n{g}\n") for g in groups]
    assert positions == sorted(positions)
    assert out.index("\nModel:\n") < out.index("  model_size=") < out.index("\nOptimisation:\n")


def _setting_entries(help_text: str) -> dict[str, str]:
    """name -> 'name=default help...' (wrapped lines joined) for each setting line of --help."""
    settings = help_text.split("settings (change with --set NAME=VALUE", 1)[1]
    entries: dict[str, str] = {}
    name = None
    for line in settings.splitlines():
        if line.startswith("  ") and not line.startswith("   "):
            name = line.split("=", 1)[0].strip()
            entries[name] = line.strip()
        elif line.startswith("   ") and name:
            entries[name] += " " + line.strip()
        else:
            name = None  # a blank line or a group title
    return {k: " ".join(v.split()) for k, v in entries.items()}


def test_help_defaults_are_what_set_accepts():
    """Each default as --help prints it, given to --set as a shell would pass it, gives the default config."""
    assignments = [shlex.split(f"{f.name}={set_text(f.default)}")[0] for f in fields(WizardConfig)]
    assert apply_overrides(WizardConfig(), assignments) == WizardConfig()


def test_typo_is_one_line_and_exit_2_without_importing_torch():
    proc = _python("-X", "importtime", "-m", "utils.training", "--set", "batch_sise=8")
    assert proc.returncode == 2
    messages = [line for line in proc.stderr.splitlines() if not line.startswith("import time:")]
    assert len(messages) == 1 and messages[0].startswith(
        "error: Invalid WizardConfig: - unknown field 'batch_sise' (known fields: batch_size, ")
    heavy = [name for name in _imported(proc.stderr) if name.split(".")[0] in HEAVY]
    assert heavy == []
    assert "utils.config" in _imported(proc.stderr)  # the check did run in this process


def test_missing_config_file_is_one_line(tmp_path, capsys):
    assert main(["--config", str(tmp_path / "nope.json")]) == 2
    assert capsys.readouterr().err == f"error: No config file at {tmp_path / 'nope.json'}\n"


def test_importing_the_training_package_loads_lightning_only_when_used():
    code = ("import sys, utils.training as t\n"
            "print('torch' in sys.modules)\n"
            "from utils.training import train\n"
            "from utils.training.coordinator import train as core\n"
            "print(train is core, 'torch' in sys.modules)")
    proc = _python("-c", code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "True", "True"]


def test_every_commands_help_shows_its_defaults_and_fits_the_help_width(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")  # argparse wraps its own text to the terminal; ours is wrapped at HELP_WIDTH
    for command in ("train", "estimate", "export", "generate", "predict"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        too_long = [line for line in text.splitlines() if len(line) > HELP_WIDTH]
        assert too_long == [], f"{command} --help has lines past {HELP_WIDTH} characters"
        if command == "generate":
            for default in ("(default: 200)", "(default: 0.8)", "(default: 40)", "(default: a newline)",
                            "(default: none, a new sample each time)", "(default: the GPU when there is one)"):
                assert default in " ".join(text.split()), default


def test_the_top_level_help_names_every_commands_main_options(capsys):
    """A user reading only `--help` learns that generate answers chat messages, export merges an adapter and
    evaluate can score greedy chat answers."""
    with pytest.raises(SystemExit):
        main(["--help"])
    commands: dict[str, str] = {}  # a command's usage lines, joined (export has two: a folder, and --gguf)
    for line in capsys.readouterr().out.splitlines():
        if line.startswith("  python -m utils.training ") and len(line.split()) > 3:
            commands[line.split()[3]] = commands.get(line.split()[3], "") + line
    assert "--chat MESSAGE" in commands["generate"] and "--prompt TEXT" in commands["generate"]
    assert "--merged" in commands["export"] and "--onnx" in commands["export"] and "--gguf" in commands["export"]
    assert "--exact-match" in commands["evaluate"]
