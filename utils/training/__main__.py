"""Train from a terminal: python -m utils.training [--config FILE.json] [--set key=value ...]

With no arguments it trains the default template on the embedded corpus on whatever hardware is
here, then prints the metrics, the checkpoint path and a generated sample.
"""

from __future__ import annotations

import argparse
import sys

from utils.config import ConfigError, WizardConfig, apply_overrides
from utils.training.amp_utils import PrecisionError
from utils.training.checkpoint_io import TrainingStopped
from utils.training.checkpoints import IncompatibleCheckpointError
from utils.training.run_lock import RunFolderBusyError
from utils.training.health import TrainingHealthError
from utils.user_models import UserModelError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m utils.training", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="a saved WizardConfig JSON file (the wizard's Save writes one)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set max_epochs=1 (repeatable)")
    parser.add_argument("--sample-tokens", type=int, default=300, help="length of the sample printed at the end")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = WizardConfig.load(args.config) if args.config else WizardConfig()
        config = apply_overrides(config, args.overrides)
        from utils.training import train  # imported after the cheap checks: Lightning takes seconds to load

        result = train(config)
    except TrainingStopped:  # its message is printed already
        return 130
    except UserModelError as e:  # carries the user's own traceback: keep its lines
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (ConfigError, PrecisionError, IncompatibleCheckpointError, RunFolderBusyError, TrainingHealthError,
            FileNotFoundError, ValueError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print("\n" + result.summary())
    print(f"config:           {result.output_dir / 'config.json'}")
    if config.task == "lm":
        print("\nSample:\n" + result.generate(max_new_tokens=args.sample_tokens, seed=config.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
