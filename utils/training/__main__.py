"""python -m utils.training [train|estimate|export|generate|predict] ...: see utils.training.cli.

With no command it trains the default template on the embedded corpus on whatever hardware is here,
then prints the metrics, the checkpoint path and a generated sample. `--help` lists every setting with
its default, and the commands.
"""

import sys

from utils.training.cli import BUG_NOTE, main, parse_args, set_text, settings_help  # noqa: F401  (tests, scripts)

if __name__ == "__main__":
    sys.exit(main())
