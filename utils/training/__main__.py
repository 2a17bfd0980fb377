"""Train from a terminal: python -m utils.training [--config FILE.json] [--set key=value ...]

With no arguments it trains the default template on the embedded corpus on whatever hardware is
here, then prints the metrics, the checkpoint path and a generated sample. `--help` lists every
setting with its default.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
import traceback
from dataclasses import fields

# Only the config here: torch and Lightning load after the settings are checked, so a typo in
# --set is reported in a fraction of a second instead of after seconds of imports.
from utils.config import SETTINGS, WizardConfig, apply_overrides
from utils.errors import KitError

HELP_COLUMN, HELP_WIDTH = 38, 110  # where a setting's help starts in --help, and where lines wrap
BUG_NOTE = "This looks like a bug in the kit; please report it with the traceback above."


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m utils.training", description=__doc__.splitlines()[0],
                                     epilog=settings_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="a saved WizardConfig JSON file (the wizard's Save writes one)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set max_epochs=1 (repeatable)")
    parser.add_argument("--sample-tokens", type=int, default=300, help="length of the sample printed at the end")
    return parser.parse_args(argv)


def settings_help() -> str:
    """Every WizardConfig field as `name=default  help [choices]`, in the dataclass's groups."""
    lines = ["settings (change with --set NAME=VALUE; shown with their defaults):"]
    group = None
    for f in fields(WizardConfig):
        setting = SETTINGS[f.name]
        if setting.group != group:
            group = setting.group
            lines += ["", f"{group}:"]
        left = f"  {f.name}={set_text(f.default)}"
        text = setting.help + (f" [{' | '.join(setting.choices)}]" if setting.choices else "")
        if len(left) > HELP_COLUMN - 2:  # a long default gets a line of its own
            lines.append(left)
            left = ""
        lines.append(textwrap.fill(text, HELP_WIDTH, initial_indent=f"{left:<{HELP_COLUMN}}",
                                   subsequent_indent=" " * HELP_COLUMN))
    return "\n".join(lines)


def set_text(value) -> str:
    """A value as --set takes it: text as written ("" for empty), everything else as JSON."""
    if isinstance(value, str):
        return value or '""'
    return json.dumps(value)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = WizardConfig.load(args.config) if args.config else WizardConfig()
        config = apply_overrides(config, args.overrides)
    except KitError as e:  # a bad setting or config file, reported before Lightning takes seconds to load
        return _print_error(e)
    return train_and_report(config, args)


def train_and_report(config: WizardConfig, args: argparse.Namespace) -> int:
    # Imported here, after the settings passed: these modules load torch and Lightning.
    from utils.training import train
    from utils.training.checkpoint_io import TrainingStopped
    from utils.user_models import UserModelError

    try:
        result = train(config)
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
    if not result.is_global_zero:  # another process of a multi-device run: rank zero reports
        return 0
    print("\n" + result.summary())
    print(f"config:           {result.output_dir / 'config.json'}")
    if config.task == "lm":
        print("\nSample:\n" + result.generate(max_new_tokens=args.sample_tokens, seed=config.seed))
    return 0


def _print_error(error: KitError) -> int:
    print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
