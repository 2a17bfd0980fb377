"""pytest settings for running the notebooks headless under nbval (`python -m pytest`).

nbval starts each notebook's kernel as a child process that inherits os.environ, so setting
variables here reaches the notebooks; a user's Run all in Jupyter or Colab never loads this file.
- KIT_NOTEBOOK_OVERRIDES: a CI-sized run (tiny model, a few steps), applied by the notebooks'
  train and benchmark cells with utils.colab.apply_notebook_overrides.
- KIT_WORKSPACE: runs, exports and the wizard's saved config go to a temporary folder, not the
  checkout.
- OMP_NUM_THREADS=1 for the kernels (see below).
Values already in the environment win, so `KIT_NOTEBOOK_OVERRIDES="max_steps=50" pytest notebooks/`
runs them longer.
"""

import os
import shutil
import tempfile

CI_OVERRIDES = "model_size=tiny max_seq_len=32 batch_size=8 max_steps=6 val_split=0.02 log_every_n_steps=1"

_workspace = tempfile.mkdtemp(prefix="kit-notebooks-")
os.environ.setdefault("KIT_NOTEBOOK_OVERRIDES", CI_OVERRIDES)
os.environ.setdefault("KIT_WORKSPACE", _workspace)
# One intra-op thread: a tiny model gains nothing from more, and on a busy 2-core CI host OpenMP's
# spin-waiting made sampling 200 tokens take 15 s instead of 0.5 s.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_unconfigure(config):
    shutil.rmtree(_workspace, ignore_errors=True)
