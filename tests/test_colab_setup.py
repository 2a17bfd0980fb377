"""The notebooks' Colab-only cells (clone or update, Drive, Secrets), run against stand-ins.

What cannot run here is faked, and only that: a fake `google.colab` package (drive.mount records
its calls, userdata.get returns a secret) and a local bare git repository standing in for GitHub,
made from a copy of this working tree. The cells' source is read from notebooks/train.ipynb.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import nbformat
import pytest

from utils import colab
from utils.config import WizardConfig

REPO = Path(__file__).resolve().parent.parent
NOT_COPIED = shutil.ignore_patterns(".git", ".venv", "__pycache__", "runs", "wandb", "artifacts", "test-artifacts",
                                    ".pytest_cache", ".ipynb_checkpoints", "*.egg-info")
GIT_USER = ["-c", "user.name=Test", "-c", "user.email=test@example.com"]


def cell_source(title_start: str) -> str:
    nb = nbformat.read(REPO / "notebooks" / "train.ipynb", as_version=4)
    return next(c.source for c in nb.cells if c.cell_type == "code" and c.source.startswith(f"#@title {title_start}"))


def git(*args, cwd=None) -> str:
    return subprocess.run(["git", *GIT_USER, *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


FAKE_COLAB = {
    "google/colab/__init__.py": "",
    "google/colab/drive.py": textwrap.dedent('''\
        import json, os
        from pathlib import Path

        def mount(mountpoint, force_remount=False):
            with open(os.environ["FAKE_COLAB_LOG"], "a") as f:
                f.write(json.dumps({"mount": mountpoint}) + "\\n")
            (Path(mountpoint) / "MyDrive").mkdir(parents=True, exist_ok=True)
        '''),
    "google/colab/userdata.py": textwrap.dedent('''\
        import os

        class SecretNotFoundError(Exception):
            pass

        def get(key):
            if key not in os.environ.get("FAKE_COLAB_SECRETS", ""):
                raise SecretNotFoundError(key)
            return dict(item.split("=", 1) for item in os.environ["FAKE_COLAB_SECRETS"].split(","))[key]
        '''),
}


@pytest.fixture
def fake_colab_dir(tmp_path):
    """A directory holding a `google.colab` package (no google/__init__.py: a namespace portion)."""
    root = tmp_path / "fake-colab"
    for rel, text in FAKE_COLAB.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


@pytest.fixture
def github(tmp_path):
    """A bare repository holding this working tree (uncommitted changes included) as one commit."""
    work = tmp_path / "upstream-work"
    shutil.copytree(REPO, work, ignore=NOT_COPIED)
    git("init", "-q", "-b", "main", cwd=work)
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", "snapshot of the working tree", cwd=work)
    bare = tmp_path / "github" / "colab-transformer-kit.git"
    git("clone", "-q", "--bare", str(work), str(bare))
    git("remote", "add", "origin", str(bare), cwd=work)
    return types.SimpleNamespace(bare=bare, work=work)


# An upstream commit that changes utils/colab.py, pushed between the two runs of the setup cell.
PUSH = ('echo "PULLED = True" >> "$UPSTREAM/utils/colab.py" && '
        'git -C "$UPSTREAM" -c user.name=Test -c user.email=test@example.com commit -qam "upstream change" && '
        'git -C "$UPSTREAM" push -q origin HEAD:main')


def test_setup_cell_clones_once_then_pulls_and_reloads_utils(tmp_path, fake_colab_dir, github):
    content = tmp_path / "content"  # Colab's working directory
    content.mkdir()
    target = content / "colab-transformer-kit"
    setup = cell_source("Setup")
    driver = textwrap.dedent(f'''\
        import json, subprocess, sys
        SETUP = {setup!r}
        exec(SETUP, {{}})
        import utils.colab
        print("RUN1", utils.colab.__file__, hasattr(utils.colab, "PULLED"))
        subprocess.run(["bash", "-c", {PUSH!r}], check=True)
        exec(SETUP, {{}})
        import utils.colab
        print("RUN2", utils.colab.__file__, hasattr(utils.colab, "PULLED"))
        ''')
    env = {**os.environ, "PYTHONPATH": str(fake_colab_dir), "KIT_REPO_URL": str(github.bare),
           "KIT_REPO_DIR": str(target), "UPSTREAM": str(github.work),
           # Whatever happens, pip installs nothing here: --dry-run and no index.
           "PIP_DRY_RUN": "1", "PIP_NO_INDEX": "1"}
    proc = subprocess.run([sys.executable, "-c", driver], cwd=content, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout

    assert sorted(p.name for p in content.iterdir()) == ["colab-transformer-kit"]
    assert (target / ".git").is_dir() and not (target / "colab-transformer-kit").exists(), "nested checkout"
    assert git("-C", str(target), "rev-parse", "HEAD") == git("-C", str(github.bare), "rev-parse", "HEAD")
    first, second = [line.split()[-1] for line in out.splitlines() if line.startswith("Code: ")]
    assert first != second and second == git("-C", str(target), "rev-parse", "--short", "HEAD")
    assert f"RUN1 {target / 'utils' / 'colab.py'} False" in out
    assert f"RUN2 {target / 'utils' / 'colab.py'} True" in out, "the second run must load the pulled code"
    assert out.count("Nothing to install; torch, numpy are left as installed.") == 2


def test_setup_cell_in_local_jupyter_uses_the_checkout_it_sits_in(tmp_path):
    driver = f"exec({cell_source('Setup')!r}, {{}})\nimport utils; print('UTILS', utils.__file__)"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "KIT_REPO_DIR", "KIT_REPO_URL")}
    proc = subprocess.run([sys.executable, "-c", driver], cwd=REPO / "notebooks", env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"Code: {REPO} at commit " in proc.stdout
    assert f"UTILS {REPO / 'utils' / '__init__.py'}" in proc.stdout
    assert "Nothing to install" not in proc.stdout, "off Colab nothing is installed"


@pytest.fixture
def fake_colab_modules(tmp_path, monkeypatch, fake_colab_dir):
    """The fake google.colab imported into this process, Drive mounted under tmp_path/drive."""
    log = tmp_path / "colab-calls.jsonl"
    monkeypatch.setenv("FAKE_COLAB_LOG", str(log))
    monkeypatch.syspath_prepend(str(fake_colab_dir))
    for name in [m for m in sys.modules if m == "google.colab" or m.startswith("google.colab.")]:
        monkeypatch.delitem(sys.modules, name)
    import google.colab.drive  # noqa: F401  (the fake: real Colab is not installed here)
    import google.colab.userdata  # noqa: F401
    monkeypatch.setattr(colab, "DRIVE_MOUNTPOINT", str(tmp_path / "drive"))
    yield types.SimpleNamespace(calls=lambda: [json.loads(line) for line in log.read_text().splitlines()]
                                if log.exists() else [])
    for name in [m for m in sys.modules if m == "google.colab" or m.startswith("google.colab.")]:
        sys.modules.pop(name, None)


def test_drive_cell_mounts_once_and_puts_runs_on_drive(tmp_path, fake_colab_modules, capsys):
    source = cell_source("Google Drive")
    assert "USE_DRIVE = False  #@param" in source  # off by default: Run all never waits for a Drive sign-in
    ticked = source.replace("USE_DRIVE = False", "USE_DRIVE = True")  # what ticking Colab's checkbox does
    namespaces = [{}, {}]
    for ns in namespaces:  # the cell run twice
        exec(ticked, ns)
    assert fake_colab_modules.calls() == [{"mount": str(tmp_path / "drive")}]
    root = tmp_path / "drive" / "MyDrive" / "colab-transformer-kit"
    workspace = namespaces[1]["workspace"]
    assert workspace.root == root and workspace.on_drive and root.is_dir()
    assert workspace.config_path == root / "runs" / "wizard_config.json"
    assert workspace.place(WizardConfig()).output_dir == str(root / "runs" / "default")
    assert f"saved under {root}, on Google Drive" in capsys.readouterr().out


def test_drive_cell_unticked_on_colab_does_not_mount(tmp_path, fake_colab_modules, monkeypatch):
    monkeypatch.setenv("KIT_WORKSPACE", str(tmp_path / "local"))
    ns = {}
    exec(cell_source("Google Drive"), ns)
    assert fake_colab_modules.calls() == []
    assert ns["workspace"].root == (tmp_path / "local").resolve() and not ns["workspace"].on_drive


def test_wandb_cell_reads_the_key_from_colab_secrets_without_printing_it(fake_colab_modules, monkeypatch, capsys):
    pytest.importorskip("utils.wandb_helpers")  # issue 5 supplies resolve_wandb_auth
    key = "0123456789abcdef" * 2 + "01234567"
    monkeypatch.setenv("WANDB_API_KEY", "")  # so teardown restores the variable's absence
    monkeypatch.delenv("WANDB_API_KEY")
    monkeypatch.setenv("FAKE_COLAB_SECRETS", f"WANDB_API_KEY={key}")
    ns = {}
    exec(cell_source("Weights & Biases").replace('WANDB_MODE = "disabled"', 'WANDB_MODE = "auto"'), ns)
    assert ns["wandb_auth"].mode == "online"
    assert key not in capsys.readouterr().out and key not in ns["wandb_auth"].message


def test_setup_cell_reports_why_an_update_was_refused(tmp_path, fake_colab_dir, github):
    target = tmp_path / "content" / "colab-transformer-kit"
    target.parent.mkdir()
    env = {**os.environ, "PYTHONPATH": str(fake_colab_dir), "KIT_REPO_URL": str(github.bare),
           "KIT_REPO_DIR": str(target), "UPSTREAM": str(github.work), "PIP_DRY_RUN": "1", "PIP_NO_INDEX": "1"}
    run = lambda: subprocess.run([sys.executable, "-c", f"exec({cell_source('Setup')!r}, {{}})"],  # noqa: E731
                                 cwd=target.parent, env=env, capture_output=True, text=True, timeout=300)
    assert run().returncode == 0
    with open(target / "utils" / "colab.py", "a") as f:
        f.write("# edited on Colab\n")  # the user edited the checkout ...
    subprocess.run(["bash", "-c", PUSH], env=env, check=True)  # ... and upstream changed the same file
    proc = run()
    assert proc.returncode != 0
    assert "RuntimeError: git -C" in proc.stderr and "pull --ff-only -q failed:" in proc.stderr
    assert "local changes" in proc.stderr, proc.stderr[-600:]


def test_setup_cell_of_an_unpublished_copy_says_to_set_the_address_not_a_git_error(tmp_path, fake_colab_dir):
    setup = cell_source("Setup")
    assert 'os.environ.get("KIT_REPO_URL", "https://github.com/OWNER/REPO.git")' in setup.replace(
        _published_repo(), "OWNER/REPO")
    # A copy never published: the address is still the placeholder (whatever this checkout's REPO is).
    setup = setup.replace(f"https://github.com/{_published_repo()}.git", "https://github.com/OWNER/REPO.git")
    target = tmp_path / "content" / "colab-transformer-kit"
    target.parent.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("KIT_REPO_URL",)}
    env.update(PYTHONPATH=str(fake_colab_dir), KIT_REPO_DIR=str(target), GIT_TERMINAL_PROMPT="0")
    proc = subprocess.run([sys.executable, "-c", f"exec({setup!r}, {{}})"], cwd=target.parent, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("RuntimeError: This notebook does not know which GitHub repository to clone: its "
                           "address is still the placeholder OWNER/REPO"), proc.stderr[-800:]
    assert "python notebooks/build_notebooks.py --repo you/colab-transformer-kit" in last
    assert "Username" not in proc.stderr and "git clone" not in proc.stderr
    assert not target.exists(), "nothing is cloned"


def _published_repo() -> str:
    import re

    text = (REPO / "notebooks" / "build_notebooks.py").read_text(encoding="utf-8")
    return re.search(r'^REPO = "(.*)"$', text, flags=re.M).group(1)
