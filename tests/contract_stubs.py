"""Throwaway stand-ins so the notebooks run under nbval before issues 3 and 5 are merged. Delete at merge.

notebooks/conftest.py runs this file in each notebook kernel at start-up (an IPython startup
script), and only while the real modules are missing; tests/test_train_notebook.py installs the
same stand-ins with monkeypatch. Each stand-in follows its issue's contract
and is installed only if the real one is absent:
- utils.ui.setup_wizard.SetupWizard(config_path, interactive=None, preset=None): .config, .save()
- utils.wandb_helpers.resolve_wandb_auth(mode) -> .mode, .source, .message
"""

import os
import sys
import types
from dataclasses import dataclass
from pathlib import Path

_REPO = str(Path(__file__).resolve().parent.parent)
sys.path.insert(0, _REPO)
try:
    from utils.config import WizardConfig
    from utils.ui import setup_wizard
finally:
    sys.path.remove(_REPO)  # the notebook's setup cell puts the checkout on sys.path itself


class _StubSetupWizard:
    def __init__(self, config_path, interactive=None, preset=None):
        self.config_path = Path(config_path)
        self.config = WizardConfig.load(self.config_path) if self.config_path.exists() else WizardConfig()

    def save(self) -> Path:
        return self.config.save(self.config_path)

    def _repr_pretty_(self, p, cycle):
        p.text(f"SetupWizard stand-in (tests/contract_stubs.py): {self.config_path}")


@dataclass(frozen=True)
class _StubWandbAuth:
    mode: str
    source: str
    message: str


def _stub_resolve_wandb_auth(mode: str) -> _StubWandbAuth:
    if mode == "disabled":
        return _StubWandbAuth("disabled", "choice", "W&B logging is off.")
    source = "environment" if os.environ.get("WANDB_API_KEY") else "none"
    resolved = "online" if source != "none" and mode in ("auto", "online") else "offline"
    return _StubWandbAuth(resolved, source, f"W&B logging {resolved} (stand-in).")


def missing_contracts() -> dict:
    """{"SetupWizard": stand-in, "utils.wandb_helpers": stand-in module} for what is not there yet."""
    missing = {}
    if not hasattr(setup_wizard, "SetupWizard"):
        missing["SetupWizard"] = _StubSetupWizard
    try:
        import utils.wandb_helpers  # noqa: F401
    except ModuleNotFoundError:
        module = types.ModuleType("utils.wandb_helpers")
        module.resolve_wandb_auth = _stub_resolve_wandb_auth
        missing["utils.wandb_helpers"] = module
    return missing


if __name__ == "__main__":  # an IPython startup script in a notebook kernel: install for good
    for name, stub in missing_contracts().items():
        if name == "SetupWizard":
            setup_wizard.SetupWizard = stub
        else:
            sys.modules[name] = stub
