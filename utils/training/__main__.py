"""python -m utils.training [train|estimate|export|generate|predict] ...: the command line, utils.cli.

With no command it trains the default template on the embedded corpus on whatever hardware is here,
then prints the metrics, the checkpoint path and a generated sample. `--help` lists every setting with
its default, and the commands.

The command line lives above every package it drives (utils.cli imports the training, the inspection, the
export, the run list); this entry point stays here so `python -m utils.training` keeps working. No module
imports it, so its edge to utils.cli closes no cycle (tests/test_imports.py exempts it by name).
"""

import sys

from utils.cli import main

if __name__ == "__main__":
    sys.exit(main())
