"""The command line for the whole life of a run: train, estimate, export, generate, predict, evaluate, runs.

    python -m utils.training [COMMAND] ...    # usage of each: utils/cli/common.py's USAGE, or --help

`train` is the command when none is named; `inspect` exits 4 when a check fails. After `pip install -e .` the same
commands run as `colab-kit COMMAND ...`. A problem the user can fix (a KitError) is printed as one line with exit
code 2; anything else is a bug and shows its traceback (exit code 1).

The commands live in utils/cli/: common.py (constants, exit codes), parsers.py (each command's arguments),
train_commands.py (train, estimate, inspect) and run_commands.py (export, generate, predict, evaluate, runs).
"""

from __future__ import annotations

import sys

# BUG_NOTE, HELP_WIDTH, USAGE, CommandLineError, set_text, parse_args, settings_help, estimate_and_report: the
# command line's names, importable from utils.cli as before it was split
from utils.cli.common import BUG_NOTE, COMMANDS, HELP_WIDTH, USAGE, CommandLineError, _prog, set_text  # noqa: F401
from utils.cli.parsers import (estimate_parser, evaluate_parser, export_parser, generate_parser, inspect_parser,
                               parse_args, predict_parser, runs_parser, settings_help, train_parser)  # noqa: F401
from utils.cli.run_commands import run_evaluate, run_export, run_generate, run_predict, run_runs
from utils.cli.train_commands import estimate_and_report, run_estimate, run_inspect, run_train  # noqa: F401


def main(argv: list[str] | None = None) -> int:
    """Run one command; the exit code: 0 done, 2 a problem the message names, 1 a bug, 130 stopped."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] in COMMANDS else "train"
    if command == "train" and argv and not argv[0].startswith("-"):
        print(f"error: unknown command {argv[0]!r}; choose one of {', '.join(COMMANDS)} "
              f"(see {_prog()} --help)", file=sys.stderr)
        return 2
    args = PARSERS[command]().parse_args(argv)
    try:
        return RUNNERS[command](args)
    except KeyboardInterrupt:  # Ctrl-C outside training (imports, data, model): training's own stop says more
        print(f"\nStopped (Ctrl-C) before {command} finished." + (
            " Run the same command again to continue: a run resumes from its last checkpoint, when it saved one."
            if command == "train" else ""), flush=True)
        return 130


PARSERS = {"train": train_parser, "estimate": estimate_parser, "inspect": inspect_parser, "export": export_parser,
           "generate": generate_parser, "predict": predict_parser, "evaluate": evaluate_parser, "runs": runs_parser}
RUNNERS = {"train": run_train, "estimate": run_estimate, "inspect": run_inspect, "export": run_export,
           "generate": run_generate, "predict": run_predict, "evaluate": run_evaluate, "runs": run_runs}
