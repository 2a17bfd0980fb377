"""What every command of the command line shares: its constants, the argument parser that reports a usage error
in one line, the config a command reads, and the exit codes (a KitError one line and 2; anything else a bug, 1)."""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path
from typing import Callable

# Only the config here: torch and Lightning load after the settings are checked, so a typo in
# --set is reported in a fraction of a second instead of after seconds of imports.
from utils.config import WizardConfig, apply_overrides
from utils.errors import KitError

GPU_CHOICES = ("t4", "l4", "a100", "h100")  # utils.training.fit_plan.GPUS, named here without importing torch
COMMANDS = ("train", "estimate", "inspect", "export", "generate", "predict", "evaluate", "runs")
ENTRY_POINT = "colab-kit"  # [project.scripts] in pyproject.toml
HELP_COLUMN, HELP_WIDTH = 38, 110  # where a setting's help starts in --help, and where lines wrap
BUG_NOTE = "This looks like a bug in the kit; please report it with the traceback above."
USAGE = """\
    python -m utils.training [train] [--config FILE.json] [--set KEY=VALUE ...]
    python -m utils.training estimate [--gpu t4|l4|a100|h100] [--config FILE.json] [--set KEY=VALUE ...]
    python -m utils.training inspect [--config FILE.json] [--set KEY=VALUE ...]
    python -m utils.training export RUN_DIR [--to DIR] [--merged] [--onnx] [--push-to-hub NAME [--public]]
    python -m utils.training export RUN_DIR --gguf [--quant f16|bf16|q8_0|q4_0|q5_1] [--to DIR]
    python -m utils.training generate RUN_DIR_OR_EXPORT [--prompt TEXT | --chat MESSAGE] [--max-new-tokens N]
    python -m utils.training predict RUN_DIR_OR_EXPORT (--text TEXT [--text TEXT ...] | --file FILE)
    python -m utils.training evaluate RUN_DIR_OR_EXPORT --data FILE [--exact-match] [--json FILE]
    python -m utils.training runs PARENT_DIR [--plot [FILE]]
"""  # every command's usage; the package's docstring and the top-level --help show it


class CommandLineError(KitError, ValueError):
    """A command's own input (a --file of texts) that cannot be used; the message says what to give instead."""

class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors as one line, like every other error of the command line."""

    def error(self, message: str):
        print(f"error: {message}; see {self.prog} --help", file=sys.stderr)
        sys.exit(2)

def _prog(command: str = "") -> str:
    base = ENTRY_POINT if Path(sys.argv[0]).name == ENTRY_POINT else "python -m utils.training"
    return f"{base} {command}".strip()

def set_text(value) -> str:
    """A value as --set takes it: text as written ("" for empty), everything else as JSON."""
    if isinstance(value, str):
        return value or '""'
    return json.dumps(value)

def _config(args: argparse.Namespace) -> WizardConfig:
    config = WizardConfig.load(args.config) if args.config else WizardConfig()
    return apply_overrides(config, args.overrides)

def _reported(call: Callable[[], object]) -> int:
    """Run a command's work: 0 when done; a KitError as one line (2); anything else is a bug (1)."""
    from utils.training.callbacks.last_checkpoint import TrainingStopped
    from utils.models.user_models import UserModelError

    try:
        call()
    except TrainingStopped:  # its message is printed already
        return 130
    except UserModelError as e:  # carries the user's own traceback: keep its lines
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KitError as e:
        return _print_error(e)
    except Exception:  # not raised on purpose: a bug, and its traceback is what a report needs
        traceback.print_exc()
        print(BUG_NOTE, file=sys.stderr)
        return 1
    return 0

def _print_error(error: KitError) -> int:
    print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
    return 2
