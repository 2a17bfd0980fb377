"""What the notebooks need from Colab once `utils` is importable: installs, Drive, where runs go.

The notebooks' setup cell clones the repo and puts it on sys.path (it cannot import this module
before that), then calls install_missing(). Everything here also works outside Colab: there is
no Drive, nothing is installed, and runs go to the checkout's runs/ folder.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable, Optional

from utils.config import WizardConfig, apply_overrides
from utils.env import in_colab

# Colab ships these, already imported by the runtime: reinstalling either breaks it until a restart.
NEVER_INSTALL = ("torch", "numpy")
QLORA_REQUIREMENT = "bitsandbytes>=0.47"  # 4-bit layers that train, on a GPU and on a CPU (for tests)
DRIVE_MOUNTPOINT = "/content/drive"  # where Colab mounts Google Drive; tests point it elsewhere
OVERRIDES_ENV = "KIT_NOTEBOOK_OVERRIDES"  # "key=value key=value": CI's tiny run; unset for users
WORKSPACE_ENV = "KIT_WORKSPACE"  # folder for runs when Drive is off (default: the checkout)
REPO_ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- installs
@dataclass(frozen=True)
class InstallPlan:
    install: list[str]  # requirement lines pip will install (their distribution is missing)
    kept: list[str]  # "name installed-version (wanted spec)": present but outside the spec, left alone
    skipped: list[str]  # requirement lines never installed here (torch, numpy)


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def read_requirements(path: str | os.PathLike) -> list[str]:
    """Requirement lines of a requirements file: comments, blanks and -r/-c options dropped."""
    lines = []
    for raw in Path(path).read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            lines.append(line)
    return lines


def plan_installs(requirements: list[str],
                  installed_version: Callable[[str], Optional[str]] = None) -> InstallPlan:
    """Decide what to pip-install: only distributions that are missing, never torch or numpy.

    installed_version(name) returns the installed version or None; tests pass their own.
    """
    from packaging.requirements import Requirement  # matplotlib and Lightning need it: Colab has it

    installed_version = installed_version or _installed_version
    install, kept, skipped = [], [], []
    for line in requirements:
        req = Requirement(line)
        if _canonical(req.name) in NEVER_INSTALL:
            skipped.append(line)
            continue
        if req.marker is not None and not req.marker.evaluate():
            continue
        version = installed_version(req.name)
        if version is None:
            install.append(line)
        elif req.specifier and not req.specifier.contains(version, prereleases=True):
            kept.append(f"{req.name} {version} (wanted {req.specifier})")
    return InstallPlan(install, kept, skipped)


def _installed_version(name: str) -> Optional[str]:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def install_missing(requirements_path: str | os.PathLike,
                    runner: Callable[[list[str]], object] = None) -> InstallPlan:
    """pip-install what the runtime lacks; torch and numpy are pinned to what is installed.

    Versions Colab already has are never upgraded (an upgrade of an imported package needs a
    restart); they are listed instead. runner(cmd) runs pip; tests pass a recorder.
    """
    runner = runner or (lambda cmd: subprocess.run(cmd, check=True))
    plan = plan_installs(read_requirements(requirements_path))
    for note in plan.kept:
        print(f"Keeping the installed {note}: not upgraded, so no restart is needed.")
    if not plan.install:
        print(f"Nothing to install; {', '.join(NEVER_INSTALL)} are left as installed.")
        return plan
    _pip_install(plan.install, runner)
    return plan


def install_for(config: WizardConfig, runner: Callable[[list[str]], object] = None) -> list[str]:
    """What the chosen settings need beyond requirements.txt, on Colab: bitsandbytes for QLoRA (Colab lacks it),
    and only then. The notebook's Train cell calls it; returns what was installed."""
    if not (in_colab() and config.model_source == "pretrained" and config.finetune_method == "qlora"):
        return []
    plan = plan_installs([QLORA_REQUIREMENT])
    if plan.install:
        _pip_install(plan.install, runner or (lambda cmd: subprocess.run(cmd, check=True)))
    return plan.install


def _pip_install(lines: list[str], runner: Callable[[list[str]], object]) -> None:
    print(f"Installing {', '.join(lines)} (never {', '.join(NEVER_INSTALL)})")
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        # A constraint pins torch and numpy where they are: pip fails rather than replace them.
        f.write("".join(f"{n}=={v}\n" for n in NEVER_INSTALL if (v := _installed_version(n))))
    try:
        # No progress bars: Colab shows a subprocess's redraws as red lines of stderr nobody can act on.
        runner([sys.executable, "-m", "pip", "install", "-q", "--progress-bar", "off", "-c", f.name, *lines])
    finally:
        os.unlink(f.name)


# ---------------------------------------------------------------- Drive and the workspace
def mount_drive(folder: str, mountpoint: Optional[str] = None) -> Path:
    """Mount Google Drive (once per runtime) and return MyDrive/<folder>, created if missing."""
    from google.colab import drive  # only on Colab; callers check in_colab() first

    mountpoint = Path(mountpoint or DRIVE_MOUNTPOINT)
    if not (mountpoint / "MyDrive").is_dir():
        drive.mount(str(mountpoint))
    root = mountpoint / "MyDrive" / folder
    root.mkdir(parents=True, exist_ok=True)
    return root


@dataclass(frozen=True)
class Workspace:
    """Where this notebook's runs and the wizard's saved config live."""

    root: Path  # relative output_dir values are resolved against this folder
    on_drive: bool

    @property
    def config_path(self) -> Path:
        """The wizard's saved choices: Run all after a disconnect loads them and resumes."""
        return self.root / "runs" / "wizard_config.json"

    def place(self, config: WizardConfig) -> WizardConfig:
        """The config with a relative output_dir moved under the workspace root."""
        if Path(config.output_dir).is_absolute():
            return config
        return config.replace(output_dir=str(self.root / config.output_dir))

    def describe(self) -> str:
        where = ("Google Drive" if self.on_drive else
                 "this runtime's disk (lost when the runtime ends)" if in_colab() else "this machine")
        return f"Runs and the wizard's config are saved under {self.root}, on {where}."


def open_workspace(use_drive: bool, drive_folder: str = "colab-transformer-kit") -> Workspace:
    """Drive's folder when asked for on Colab; else $KIT_WORKSPACE or the checkout."""
    if use_drive and in_colab():
        return Workspace(mount_drive(drive_folder), on_drive=True)
    if use_drive:
        print("Google Drive is only available on Colab; saving on this machine instead.")
    root = Path(os.environ.get(WORKSPACE_ENV) or REPO_ROOT).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return Workspace(root, on_drive=False)


# ---------------------------------------------------------------- CI-sized runs
def apply_notebook_overrides(config: WizardConfig, env: Optional[dict] = None) -> WizardConfig:
    """Apply $KIT_NOTEBOOK_OVERRIDES ("max_steps=5 batch_size=4 ...") if set; else config unchanged.

    The tests set it so the notebooks train for seconds; a user's Run all never sees it.
    """
    text = (os.environ if env is None else env).get(OVERRIDES_ENV, "").strip()
    if not text:
        return config
    print(f"{OVERRIDES_ENV} changes the config: {text}")
    return apply_overrides(config, shlex.split(text))
