"""The committed notebooks are clean, valid, generated from notebooks/build_notebooks.py and safe to Run all.

Running them is nbval's job (`python -m pytest` collects notebooks/*.ipynb; see notebooks/conftest.py).
"""

import ast
import importlib.util
import json
import re
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
NAMES = ["train.ipynb", "amp_benchmark.ipynb"]


def load_builder():
    spec = importlib.util.spec_from_file_location("build_notebooks", NOTEBOOKS / "build_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read(name):
    return nbformat.read(NOTEBOOKS / name, as_version=nbformat.NO_CONVERT)


def code_cells(name):
    return [c for c in read(name).cells if c.cell_type == "code"]


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_is_what_the_builder_writes(name):
    assert (NOTEBOOKS / name).read_text(encoding="utf-8") == load_builder().render(name), (
        f"notebooks/{name} differs from notebooks/build_notebooks.py: edit the builder and run "
        "`python notebooks/build_notebooks.py`")


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_valid_nbformat_4_with_python3_kernel(name):
    nb = read(name)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    assert nb.metadata.kernelspec.name == "python3"
    assert nb.metadata.kernelspec.language == "python"


@pytest.mark.parametrize("name", NAMES)
def test_notebook_has_no_outputs_counts_or_widget_state(name):
    nb = read(name)
    assert "widgets" not in nb.metadata
    for cell in nb.cells:
        assert "widgets" not in cell.metadata
        if cell.cell_type == "code":
            assert cell.outputs == [], cell.source[:60]
            assert cell.execution_count is None, cell.source[:60]
    assert "application/vnd.jupyter.widget" not in (NOTEBOOKS / name).read_text(encoding="utf-8")


@pytest.mark.parametrize("name", NAMES)
def test_every_code_cell_has_a_title_and_compiles(name):
    for cell in code_cells(name):
        assert cell.source.startswith("#@title "), cell.source[:60]
        # IPython magics and shell escapes are not Python; there should be none, but strip them to be fair.
        python = "\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith(("%", "!")))
        compile(python, f"{name}: {cell.source.splitlines()[0]}", "exec")


@pytest.mark.parametrize("name", NAMES)
def test_form_fields_are_plain_assignments_of_literals(name):
    # Colab renders `NAME = literal  #@param ...` as a form field and rewrites the literal when it changes.
    for cell in code_cells(name):
        for line in cell.source.splitlines():
            if "#@param" in line:
                target, value = line.split("#@param")[0].split("=", 1)
                assert target.strip().isidentifier() and target.strip().isupper(), line
                ast.literal_eval(value.strip())


@pytest.mark.parametrize("name", NAMES)
def test_notebook_never_prompts_and_holds_no_keys(name):
    text = (NOTEBOOKS / name).read_text(encoding="utf-8")
    source = "\n".join(c.source for c in code_cells(name))
    assert not re.search(r"\binput\(|getpass|wandb\.login\(", source)
    assert not re.search(r"(?<![0-9a-fA-F])[0-9a-f]{40}(?![0-9a-fA-F])", text), "a 40-hex string looks like a W&B key"
    assert not re.search(r"WANDB_API_KEY[\"']?\s*[:=]\s*[\"'][^\"']+", source), "a literal WANDB_API_KEY"


def test_train_notebook_has_a_markdown_cell_per_stage_in_order():
    headings = [c.source.splitlines()[0] for c in read("train.ipynb").cells
                if c.cell_type == "markdown" and c.source.startswith("## ")]
    assert headings == ["## 1. Setup", "## 2. Google Drive (optional)", "## 3. Weights & Biases (optional)",
                        "## 4. Setup wizard", "## 5. Train", "## 6. Results", "## 7. Evaluate and compare (optional)",
                        "## 8. Export"]


def test_train_notebook_follows_the_contracts():
    source = "\n".join(c.source for c in code_cells("train.ipynb"))
    wizard_cell = next(c.source for c in code_cells("train.ipynb") if "SetupWizard" in c.source)
    assert "from utils.ui.setup_wizard import SetupWizard" in wizard_cell
    assert wizard_cell.rstrip().endswith("\nwizard"), "the wizard cell must end in `wizard` to display it"
    assert "resolve_wandb_auth(WANDB_MODE)" in source
    assert "train(config, on_change=\"start_new\")" in source and "wizard.config" in source
    assert "export_result(result, merged=result.config.finetune_method != \"full\")" in source  # merged: LoRA runs
    assert "load_exported(" in source


def test_both_notebooks_share_one_setup_cell():
    setups = [code_cells(name)[0].source for name in NAMES]
    assert setups[0] == setups[1]
    assert "KIT_REPO_URL" in setups[0] and "KIT_REPO_DIR" in setups[0]


def test_notebook_metadata_asks_colab_for_a_gpu():
    meta = json.loads((NOTEBOOKS / "train.ipynb").read_text(encoding="utf-8"))["metadata"]
    assert meta["accelerator"] == "GPU"


def test_readme_badge_opens_the_train_notebook_from_the_repo_the_setup_cell_clones():
    readme = (NOTEBOOKS.parent / "README.md").read_text(encoding="utf-8")
    badge = re.search(r"\(https://colab\.research\.google\.com/github/([^/]+/[^/]+)/blob/main/([^)]+)\)", readme)
    assert badge and badge.group(2) == "notebooks/train.ipynb"
    for name in NAMES:
        assert f'"https://github.com/{badge.group(1)}.git"' in code_cells(name)[0].source
    assert badge.group(1) == load_builder().REPO, "the badge and the builder's REPO disagree: run --repo again"
    assert "## What you see in Colab, step by step" in readme
    assert "python notebooks/build_notebooks.py --repo " in readme


def test_publish_stamps_one_address_into_the_builder_the_badge_and_both_notebooks(tmp_path):
    import shutil

    (tmp_path / "notebooks").mkdir()
    shutil.copy(NOTEBOOKS / "build_notebooks.py", tmp_path / "notebooks")
    shutil.copy(NOTEBOOKS.parent / "README.md", tmp_path)
    builder = load_builder()
    written = builder.publish("someone/my-kit", root=tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in written) == [
        "README.md", "notebooks/amp_benchmark.ipynb", "notebooks/build_notebooks.py", "notebooks/train.ipynb"]
    assert '\nREPO = "someone/my-kit"\n' in (tmp_path / "notebooks" / "build_notebooks.py").read_text()
    readme = (tmp_path / "README.md").read_text()
    assert "https://colab.research.google.com/github/someone/my-kit/blob/main/notebooks/train.ipynb" in readme
    for name in NAMES:
        nb = nbformat.read(tmp_path / "notebooks" / name, as_version=4)
        assert '"https://github.com/someone/my-kit.git"' in nb.cells[2].source
        assert "__REPO__" not in nb.cells[2].source
    with pytest.raises(ValueError, match="owner/name"):
        builder.publish("not a repo", root=tmp_path)


@pytest.mark.parametrize("name", NAMES)
def test_every_titled_cell_opens_as_a_form_in_colab(name):
    titled = [cell for cell in code_cells(name) if cell.source.startswith("#@title")]
    assert titled and all(cell.metadata.get("cellView") == "form" for cell in titled)
