"""The source of train.ipynb and amp_benchmark.ipynb: edit the cells here, then run

    python notebooks/build_notebooks.py

It writes both notebooks without outputs or widget state; tests/test_notebooks.py checks that the
committed .ipynb files are exactly what this script writes.

Publishing a copy of the kit under your own GitHub address is one command, run once in your fork:

    python notebooks/build_notebooks.py --repo you/colab-transformer-kit

It sets REPO below and stamps that address into the README's Open-in-Colab badge and both notebooks'
setup cells; commit and push the four files.
"""

from __future__ import annotations

from pathlib import Path

import argparse
import re

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

# The one place the kit's GitHub address lives ("owner/name"); set it with --repo, never by hand elsewhere.
REPO = "OWNER/REPO"
PLACEHOLDER = "OWNER/REPO"  # what a copy whose address was never set still holds

# Runs before `utils` is importable (it is what makes it importable), so it uses the standard
# library only. KIT_REPO_URL / KIT_REPO_DIR let the tests stand in a local bare repo for GitHub.
SETUP = '''\
#@title Setup: get the code, make `utils` importable, install what is missing
import importlib.util, os, subprocess, sys
from pathlib import Path

REPO_URL = os.environ.get("KIT_REPO_URL", "https://github.com/__REPO__.git")
REPO_DIR = Path(os.environ.get("KIT_REPO_DIR", "/content/colab-transformer-kit")).resolve()

def git(*args):
    proc = subprocess.run(["git", *args], capture_output=True, text=True)
    if proc.returncode:  # e.g. a pull refused because files in the checkout were edited
        raise RuntimeError(f"git {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout.strip()

try:
    IN_COLAB = importlib.util.find_spec("google.colab") is not None
except ModuleNotFoundError:  # no "google" package at all
    IN_COLAB = False
if IN_COLAB and REPO_URL.endswith("/OWNER/REPO.git") and not (REPO_DIR / ".git").is_dir():
    raise RuntimeError("This notebook does not know which GitHub repository to clone: its address is still "
                       "the placeholder OWNER/REPO (the copy it came from was never published). In a checkout of "
                       "your copy of the kit run `python notebooks/build_notebooks.py --repo you/colab-transformer-kit`, "
                       "commit and push, and open the notebook from there; or replace OWNER/REPO in REPO_URL above.")
if IN_COLAB:  # clone once, then update in place: absolute paths, so a rerun never nests the repo
    if (REPO_DIR / ".git").is_dir():
        before = git("-C", str(REPO_DIR), "rev-parse", "HEAD")
        git("-C", str(REPO_DIR), "pull", "--ff-only", "-q")
        if git("-C", str(REPO_DIR), "rev-parse", "HEAD") != before:  # drop modules of the old commit
            for name in [m for m in sys.modules if m.split(".")[0] in ("utils", "templates")]:
                del sys.modules[name]
    else:
        git("clone", "-q", REPO_URL, str(REPO_DIR))
    ROOT = REPO_DIR
else:  # local Jupyter: the checkout this notebook sits in
    ROOT = next((p for p in [Path.cwd(), *Path.cwd().parents] if (p / "utils" / "__init__.py").is_file()), None)
    if ROOT is None:
        raise FileNotFoundError(f"No kit checkout (a folder with utils/) at or above {Path.cwd()}: "
                                "open this notebook from the kit's notebooks/ folder, or on Colab")
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
print(f"Code: {ROOT} at commit {commit.stdout.strip() or 'unknown (not a git checkout)'}")
if IN_COLAB:
    from utils.colab import install_missing
    install_missing(ROOT / "requirements.txt")
'''

TRAIN_CELLS = [
    ("md", """\
# Train a transformer with mixed precision

1. On Colab, pick a GPU first: **Runtime > Change runtime type > T4 GPU** (a CPU works, slowly).
2. Run the cells down to the wizard, click through it and save your choices.
3. **Runtime > Run all**. The precision is chosen for your GPU and printed with its reason; you
   get loss curves, samples, and an exported model you can load anywhere.

Every cell below is one stage and calls the kit's `utils` package; none of them asks for input."""),
    ("md", """\
## 1. Setup
On Colab this clones the kit into `/content/colab-transformer-kit`, or updates that checkout when
it is already there, so running it twice is harmless. It installs only what Colab lacks, never
torch or numpy, so no runtime restart is needed. In a local Jupyter it uses the checkout this
notebook sits in. It prints the commit in use."""),
    ("code", SETUP),
    ("md", """\
## 2. Google Drive (optional)
Tick `USE_DRIVE` to keep checkpoints, the exported model and the wizard's saved choices in
`MyDrive/colab-transformer-kit`: after a disconnect, **Run all** picks them up and training
resumes from the last checkpoint. Colab asks once for permission to mount Drive. Without Drive,
files live on the runtime's disk until the runtime ends."""),
    ("code", '''\
#@title Google Drive (optional): keep runs across disconnects
USE_DRIVE = False  #@param {type:"boolean"}
DRIVE_FOLDER = "colab-transformer-kit"  #@param {type:"string"}

from utils.colab import open_workspace

workspace = open_workspace(USE_DRIVE, DRIVE_FOLDER)
print(workspace.describe())
'''),
    ("md", """\
## 3. Weights & Biases (optional)
Pick `auto` to log online when a W&B API key is available, offline otherwise. The key comes
from Colab's Secrets panel (key icon on the left, a secret named `WANDB_API_KEY` with notebook
access switched on) or from the `WANDB_API_KEY` environment variable. This cell never prompts
and never prints the key. The choice here is the one the run uses."""),
    ("code", '''\
#@title Weights & Biases logging (optional)
WANDB_MODE = "disabled"  #@param ["disabled", "auto", "online", "offline"]

from utils.wandb_helpers import resolve_wandb_auth

wandb_auth = resolve_wandb_auth(WANDB_MODE)
print(wandb_auth.message)
'''),
    ("md", """\
## 4. Setup wizard
Choose the data, tokenizer, model, training length and precision, then save. It starts from
your saved choices (or the defaults) and never waits: **Run all** trains with whatever it holds."""),
    ("code", '''\
#@title Setup wizard
from utils.ui.setup_wizard import SetupWizard

wizard = SetupWizard(config_path=workspace.config_path, run_root=workspace.root)
wizard
'''),
    ("md", """\
### Inspect your model (optional)
Ten checks of the wizard's model on a batch of your data, each with a verdict and a fix: shapes at
several lengths, causality (a language model must not see later tokens), padding, the initial
loss, gradient flow, activations, fp16 safety, overfitting one batch, memory, and attention
heatmaps. Training runs the quick ones by itself (setting `inspect`)."""),
    ("code", '''\
#@title Inspect your model (optional)
INSPECT_MODEL = False  #@param {type:"boolean"}

from utils.inspection import inspect_model
from utils.inspection.view import show_report

if INSPECT_MODEL:  # the report and plots go to the run folder's inspect/
    show_report(inspect_model(workspace.place(wizard.config)))
else:
    print("Tick INSPECT_MODEL and run this cell to check the model before training.")
'''),
    ("md", """\
## 5. Train
Prints the precision it chose and why (fp16 + GradScaler on a T4, bf16 on an A100 or L4, fp32 on
a CPU), the data and model sizes, then a progress bar. `checkpoints/last.ckpt` in the run's folder
is rewritten every few minutes (`checkpoint_every_minutes`), at each epoch and when you press Stop;
if the runtime disconnects, reconnect and **Run all**: training resumes exactly where that
checkpoint left it. If you changed a setting the old run cannot continue with, a new run starts and
the old one is moved, untouched, to the folder's `archive/` (the wizard's review says which)."""),
    ("code", '''\
#@title Train
from utils.colab import apply_notebook_overrides, install_for
from utils.training import train

wizard.save()  # with Drive on, the choices survive a disconnect and the rerun resumes the same run
config = workspace.place(wizard.config).replace(wandb_mode=wandb_auth.mode)
config = apply_notebook_overrides(config)  # only when KIT_NOTEBOOK_OVERRIDES is set: the tests' tiny run
install_for(config)  # bitsandbytes when QLoRA is chosen (Colab lacks it); nothing otherwise
result = train(config, on_change="start_new")  # a changed setting starts anew; the old run goes to archive/
print(result.summary())
print(result.notebook_next_step())
'''),
    ("md", """\
## 6. Results
One figure for the whole run, resumed stretches included: training and validation loss, the
learning rate, the gradient norm before clipping (the clip value as a dashed line) and the
throughput (with the peak memory on a GPU); it is also saved as `training.png` in the run's
folder. Then text sampled from the model after your prompt; a chat model answers it as a message,
word by word."""),
    ("code", '''\
#@title Curves, throughput and samples
PROMPT = "The "  #@param {type:"string"}
NUM_SAMPLES = 2  #@param {type:"integer"}
MAX_NEW_TOKENS = 200  #@param {type:"integer"}
TEMPERATURE = 0.8  #@param {type:"number"}
# A language model continues PROMPT, a chat model answers it, a classifier labels it.

import matplotlib.pyplot as plt
from utils.inference import print_piece
from utils.plots import plot_training

plot_training(result)
plt.show()  # the curves now, above the samples (a figure is otherwise shown when the cell ends)
print(f"Throughput: {result.tokens_per_sec:,.0f} training tokens/s with {result.precision}")
if result.config.task == "classification":
    print(f"{PROMPT!r} -> {result.predict([PROMPT])[0]}")
elif result.is_chat_model:  # PROMPT is a user message; the answer is printed as it is sampled
    result.chat(PROMPT, MAX_NEW_TOKENS, TEMPERATURE, stream=print_piece)
else:
    for i in range(NUM_SAMPLES):
        print(f"--- sample {i + 1}:\\n{result.generate(PROMPT, MAX_NEW_TOKENS, TEMPERATURE, seed=i)}")
'''),
    ("md", """\
## 7. Evaluate and compare (optional)
Score the model on a file it never saw: the same kinds of file as training (`.txt`, `.csv`,
`.jsonl`, with the same columns). A language model gets its loss and perplexity; a classifier its
accuracy, macro-F1, per-class scores and a confusion matrix. Left empty, the cell says so and
Run all goes on. The second cell lists every run in this run's parent folder (archived ones
included) with the settings in which they differ, and overlays their validation curves."""),
    ("code", '''\
#@title Evaluate on your own test file
TEST_FILE = ""  #@param {type:"string"}
# e.g. /content/drive/MyDrive/test.csv, or a file uploaded to /content

if TEST_FILE:
    evaluation = result.evaluate(TEST_FILE, figure=result.output_dir / "evaluation" / "confusion.png")
    print(evaluation.describe())
    if evaluation.figure:
        from IPython.display import Image, display
        display(Image(evaluation.figure))
else:
    print("No TEST_FILE given: nothing evaluated. Put the path of a held-out file above to score the model.")
'''),
    ("code", '''\
#@title Compare runs
from utils.run_list import list_runs, plot_runs

runs = list_runs(result.output_dir.parent)
print(runs.describe())
if runs.runs:
    from IPython.display import Image, display
    display(Image(plot_runs(runs, result.output_dir.parent / "runs.png")))
'''),
    ("md", """\
## 8. Export
One folder with the weights (`model.safetensors`), the config (`config.json`), the tokenizer and,
for a classifier or your own model, the class names and your model code: everything needed to
rebuild and use the model, nothing from the training run. The second cell
loads it back, as you would in a new session, and generates from the loaded model."""),
    ("code", '''\
#@title Export the model
# LoRA/QLoRA: the adapter merged into its base, a 16-bit model transformers loads alone (adapter/ beside)
from utils.export import export_result

export_dir = export_result(result, merged=result.config.finetune_method != "full")
print(f"Exported to {export_dir}: {', '.join(sorted(p.name for p in export_dir.iterdir() if p.name[0] != '.'))}")
'''),
    ("code", '''\
#@title Load the export and generate
EXPORT_FOLDER = ""  #@param {type:"string"}
PROMPT = "The "  #@param {type:"string"}
# Empty EXPORT_FOLDER: this run's export. Any export folder works, e.g. one on Drive from an earlier session.

from utils.export import load_exported

folder = EXPORT_FOLDER or result.output_dir / "export"
loaded = load_exported(folder)
print(f"Loaded {type(loaded.model).__name__} from {folder}:")
if loaded.config.task == "classification":
    print(f"{PROMPT!r} -> {loaded.predict([PROMPT])[0]}")
else:
    print(loaded.generate(PROMPT, max_new_tokens=200, seed=0))
'''),
]

BENCHMARK_CELLS = [
    ("md", """\
# What does mixed precision buy on this machine?

Trains the same model for the same number of steps twice through the kit's training core, first
in fp32 and then in the mixed precision the kit would pick here (fp16 + GradScaler on a T4, bf16
on an A100 or L4), and compares steps/s, tokens/s, peak memory and the loss after those steps.

On Colab pick a GPU first (**Runtime > Change runtime type > T4 GPU**), then **Run all**. On a
CPU the notebook still runs, at smaller sizes that finish in about a minute (it prints which): it
measures fp32 against the CPU's fp16 path and says that this does not predict a GPU's gain."""),
    ("md", "## 1. Setup\nThe same setup cell as `train.ipynb`: clone or update, install what is missing."),
    ("code", SETUP),
    ("md", """\
## 2. Benchmark
Both runs use the same seed and data order. The first steps of each run warm up (memory
allocation, kernel selection) and are left out of the speed. Checkpoints go to a temporary
folder that is removed afterwards."""),
    ("code", '''\
#@title Train fp32, then mixed precision
MODEL_SIZE = "small"  #@param ["tiny", "small", "base"]
BATCH_SIZE = 32  #@param {type:"integer"}
SEQ_LEN = 256  #@param {type:"integer"}
STEPS = 100  #@param {type:"integer"}

# The sizes above are for a GPU; a CPU runtime uses smaller ones that finish in about a minute.

from utils.amp_benchmark import fit_to_device, run_amp_benchmark
from utils.colab import apply_notebook_overrides
from utils.config import WizardConfig
from utils.env import detect_device

device = detect_device()
config = WizardConfig(model_size=MODEL_SIZE, batch_size=BATCH_SIZE, max_seq_len=SEQ_LEN, max_steps=STEPS)
config = fit_to_device(config, device)  # on a CPU: smaller sizes, and a line saying which
config = apply_notebook_overrides(config)  # only when KIT_NOTEBOOK_OVERRIDES is set: the tests' tiny run
report = run_amp_benchmark(config, device)
'''),
    ("md", """\
## 3. Results
A table and bars for both runs, then one sentence saying what was measured and what it means."""),
    ("code", '''\
#@title Table, chart and verdict
from utils.plots import plot_benchmark

print(report.table())
plot_benchmark(report)
print(report.verdict())
'''),
]


def build(cells: list[tuple[str, str]], repo: str = REPO) -> nbformat.NotebookNode:
    cells = [(kind, src.replace("__REPO__", repo)) for kind, src in cells]
    nb = new_notebook(cells=[new_markdown_cell(src) if kind == "md" else new_code_cell(src.rstrip("\n"))
                             for kind, src in cells])
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
        "accelerator": "GPU",  # Colab opens it on a GPU runtime when one is available
        "colab": {"provenance": [], "gpuType": "T4"},
    }
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell-{i:02d}"  # fixed ids: random ones would make every rebuild a diff
        if cell.cell_type == "code" and cell.source.startswith("#@title"):
            cell.metadata["cellView"] = "form"  # Colab shows the form, the code only when asked
    return nb


NOTEBOOKS = {"train.ipynb": TRAIN_CELLS, "amp_benchmark.ipynb": BENCHMARK_CELLS}


def render(name: str, repo: str = REPO) -> str:
    nb = build(NOTEBOOKS[name], repo)
    nbformat.validate(nb)
    return nbformat.writes(nb, version=4) + "\n"


REPO_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*/[A-Za-z0-9._-]+")
BADGE = re.compile(r"(https://colab\.research\.google\.com/github/)[^/]+/[^/]+(/blob/)")


def publish(repo: str, root: Path = HERE.parent) -> list[Path]:
    """Stamp repo ("owner/name") into this file's REPO, the README badge and both notebooks; return what changed."""
    if not REPO_PATTERN.fullmatch(repo) or repo == PLACEHOLDER:
        raise ValueError(f"--repo {repo!r}: give your GitHub repository as owner/name, e.g. you/colab-transformer-kit")
    builder, readme = root / "notebooks" / "build_notebooks.py", root / "README.md"
    builder.write_text(re.sub(r'^REPO = ".*"$', f'REPO = "{repo}"', builder.read_text(encoding="utf-8"), count=1,
                              flags=re.M), encoding="utf-8")
    text = readme.read_text(encoding="utf-8")
    if not BADGE.search(text):
        raise ValueError(f"{readme} has no Open-in-Colab badge link to stamp")
    readme.write_text(BADGE.sub(rf"\g<1>{repo}\g<2>", text), encoding="utf-8")
    for name in NOTEBOOKS:
        (root / "notebooks" / name).write_text(render(name, repo), encoding="utf-8")
    return [builder, readme] + [root / "notebooks" / name for name in NOTEBOOKS]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Write both notebooks from this file's cells.")
    parser.add_argument("--repo", help="owner/name of your GitHub copy of the kit: stamped into REPO below, "
                                       "the README badge and both notebooks")
    args = parser.parse_args()
    if args.repo:
        for path in publish(args.repo):
            print(f"wrote {path}")
    else:
        for name in NOTEBOOKS:
            (HERE / name).write_text(render(name), encoding="utf-8")
            print(f"wrote {HERE / name}")
