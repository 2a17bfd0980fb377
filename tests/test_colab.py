"""utils.colab: what gets pip-installed on Colab, the workspace, the CI override variable."""

import sys
from pathlib import Path

import pytest

from utils import colab
from utils.colab import (InstallPlan, Workspace, apply_notebook_overrides, install_missing, open_workspace,
                         plan_installs, read_requirements)
from utils.config import ConfigError, WizardConfig

REPO = Path(__file__).resolve().parent.parent


def versions(**installed):
    return lambda name: installed.get(name.lower().replace("-", "_"))


def test_plan_installs_only_missing_distributions_and_never_torch_or_numpy():
    plan = plan_installs(
        ["torch>=2.3", "numpy<2", "pytorch-lightning>=2.3,<3", "ipywidgets>=7.7,<9", "matplotlib>=3.7", "wandb>=0.17"],
        installed_version=versions(ipywidgets="7.7.1", matplotlib="3.6.0", wandb="0.19.1"))
    assert plan == InstallPlan(install=["pytorch-lightning>=2.3,<3"],
                               kept=["matplotlib 3.6.0 (wanted >=3.7)"],
                               skipped=["torch>=2.3", "numpy<2"])


def test_plan_installs_skips_torch_and_numpy_even_when_missing():
    plan = plan_installs(["Torch==2.13.0", "NumPy"], installed_version=lambda name: None)
    assert plan.install == [] and plan.skipped == ["Torch==2.13.0", "NumPy"]


def test_plan_installs_ignores_requirements_for_other_platforms():
    plan = plan_installs(['pywin32>=300; sys_platform == "win32"', "safetensors>=0.4"],
                         installed_version=lambda name: None)
    expected = ["safetensors>=0.4"] if sys.platform != "win32" else ['pywin32>=300; sys_platform == "win32"',
                                                                     "safetensors>=0.4"]
    assert plan.install == expected


def test_read_requirements_drops_comments_blanks_and_options(tmp_path):
    path = tmp_path / "requirements.txt"
    path.write_text("# a comment\n-r other.txt\n\ntorch>=2.3  # inline\nwandb>=0.17\n")
    assert read_requirements(path) == ["torch>=2.3", "wandb>=0.17"]


def test_the_repo_requirements_are_all_installed_here():
    # The tests run in an environment built from requirements-test.txt: Colab's setup cell on this
    # environment must install nothing (tests/test_colab_setup.py relies on it).
    plan = plan_installs(read_requirements(REPO / "requirements.txt"))
    assert plan.install == [] and plan.kept == []
    assert [line.split(">")[0] for line in plan.skipped] == ["torch"]


def test_install_missing_runs_pip_once_with_torch_and_numpy_pinned(tmp_path, capsys):
    path = tmp_path / "requirements.txt"
    path.write_text("torch>=2.3\nkit-test-missing-distribution>=1.0\nnumpy\npytest>=1\n")
    calls = []

    def runner(cmd):
        constraints = Path(cmd[cmd.index("-c") + 1]).read_text()
        calls.append((cmd, constraints))

    plan = install_missing(path, runner=runner)
    assert plan.install == ["kit-test-missing-distribution>=1.0"]
    (cmd, constraints), = calls
    assert cmd[:4] == [sys.executable, "-m", "pip", "install"]
    assert cmd[cmd.index("--progress-bar") + 1] == "off"  # no bars redrawn as red stderr lines in the setup cell
    assert cmd[-1] == "kit-test-missing-distribution>=1.0" and not any("torch" in c or "numpy" in c for c in cmd)
    assert f"torch=={colab._installed_version('torch')}" in constraints.splitlines()
    assert f"numpy=={colab._installed_version('numpy')}" in constraints.splitlines()
    assert not Path(cmd[cmd.index("-c") + 1]).exists(), "the constraints file is removed afterwards"
    assert "Installing kit-test-missing-distribution>=1.0 (never torch, numpy)" in capsys.readouterr().out


def test_install_missing_does_not_call_pip_when_nothing_is_missing(tmp_path, capsys):
    path = tmp_path / "requirements.txt"
    path.write_text("torch>=2.3\npytest>=1\n")
    plan = install_missing(path, runner=lambda cmd: pytest.fail(f"pip was called: {cmd}"))
    assert plan.install == []
    assert "Nothing to install; torch, numpy are left as installed." in capsys.readouterr().out


def test_workspace_places_relative_output_dirs_under_its_root(tmp_path):
    ws = Workspace(tmp_path, on_drive=False)
    assert ws.place(WizardConfig()).output_dir == str(tmp_path / "runs" / "default")
    assert ws.place(WizardConfig(output_dir="/elsewhere/run")).output_dir == "/elsewhere/run"
    assert ws.config_path == tmp_path / "runs" / "wizard_config.json"


def test_open_workspace_off_colab_uses_kit_workspace_and_says_drive_is_unavailable(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KIT_WORKSPACE", str(tmp_path / "ws"))
    ws = open_workspace(use_drive=True)
    assert ws == Workspace((tmp_path / "ws").resolve(), on_drive=False) and ws.root.is_dir()
    assert "Google Drive is only available on Colab" in capsys.readouterr().out


def test_open_workspace_defaults_to_the_checkout(monkeypatch):
    monkeypatch.delenv("KIT_WORKSPACE", raising=False)
    assert open_workspace(use_drive=False).root == REPO


def test_apply_notebook_overrides_changes_only_what_the_variable_names(capsys):
    config = WizardConfig(batch_size=32)
    assert apply_notebook_overrides(config, env={}) is config
    small = apply_notebook_overrides(config, env={"KIT_NOTEBOOK_OVERRIDES": "max_steps=5 output_dir='/tmp/a b'"})
    assert (small.max_steps, small.output_dir, small.batch_size) == (5, "/tmp/a b", 32)
    assert "KIT_NOTEBOOK_OVERRIDES changes the config: max_steps=5" in capsys.readouterr().out


def test_apply_notebook_overrides_rejects_unknown_fields():
    with pytest.raises(ConfigError, match="unknown field 'max_step'"):
        apply_notebook_overrides(WizardConfig(), env={"KIT_NOTEBOOK_OVERRIDES": "max_step=5"})


def test_bitsandbytes_is_installed_only_when_qlora_is_chosen(monkeypatch, capsys):
    from utils.config import WizardConfig

    monkeypatch.setattr(colab, "in_colab", lambda: True)  # stands for a Colab runtime
    installed = colab._installed_version
    # bitsandbytes is installed here: absent, as on Colab, for this test
    monkeypatch.setattr(colab, "_installed_version", lambda name: None if name == "bitsandbytes" else installed(name))
    calls = []
    pretrained = WizardConfig(model_source="pretrained", pretrained_model="gpt2")
    assert colab.install_for(pretrained.replace(finetune_method="lora"), runner=calls.append) == []
    assert colab.install_for(pretrained, runner=calls.append) == [] and calls == []
    assert colab.install_for(pretrained.replace(finetune_method="qlora"), runner=calls.append) == ["bitsandbytes>=0.47"]
    (cmd,) = calls
    assert cmd[:4] == [sys.executable, "-m", "pip", "install"] and cmd[-1] == "bitsandbytes>=0.47"
    assert "Installing bitsandbytes>=0.47 (never torch, numpy)" in capsys.readouterr().out
    monkeypatch.setattr(colab, "in_colab", lambda: False)  # elsewhere the user installs what they need
    assert colab.install_for(pretrained.replace(finetune_method="qlora"), runner=calls.append) == []
