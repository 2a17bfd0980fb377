"""Share a trained model: upload its export folder to the Hugging Face Hub with a model card.

    python -m utils.training export runs/default --push-to-hub my-model [--public]
    export_result(result, push_to_hub="my-model")    # from the notebook or Python (utils.export)

The repository is created private unless public is asked for. The model card (README.md, written
into the export folder and uploaded with it) says what was trained on what, the validation
metrics, the precision and how to load it. The token comes from a Colab secret named HF_TOKEN or
the HF_TOKEN environment variable; it is passed to huggingface_hub and never printed or written.
"""

from __future__ import annotations

import importlib
import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import Optional

from utils.config import CONFIG_FILENAME
from utils.env import in_colab, read_colab_secret
from utils.errors import KitError
from utils.files import atomic_write_text
from utils.models.pretrained import KIT_CONFIG_FILENAME

TOKEN_VAR = "HF_TOKEN"
CARD_FILENAME = "README.md"
HOW_TO_ADD = (f"add a Hugging Face token with write access (https://huggingface.co/settings/tokens) as a Colab "
              f"secret named {TOKEN_VAR} (key icon on the left, Notebook access on), or set the {TOKEN_VAR} "
              "environment variable")


class HubError(KitError, RuntimeError):
    """An upload that cannot happen (no token, the Hub refused or could not be reached); the message says why."""


def find_token() -> str:
    """The HF_TOKEN from the environment, else from Colab's secrets; HubError saying how to add one."""
    token = os.environ.get(TOKEN_VAR, "").strip()
    if token:
        return token
    why = f"no {TOKEN_VAR} in the environment"
    if in_colab():
        token, why = read_colab_secret(TOKEN_VAR)
        if token:
            return token
    raise HubError(f"No Hugging Face token ({why}): {HOW_TO_ADD}.")


def push_to_hub_folder(export_dir: str | Path, repo_name: str, public: bool = False,
                       run_dir: Optional[str | Path] = None, token: Optional[str] = None) -> str:
    """Create the repository (private unless public) and upload the export folder with its model card.
    run_dir: the training run, whose logs and checkpoint give the card its metrics. Returns the repo's URL."""
    from huggingface_hub import HfApi

    token = token or find_token()
    folder = Path(export_dir)
    api = HfApi()
    with _hub_errors(repo_name):
        repo = api.create_repo(repo_name, token=token, private=not public, exist_ok=True, repo_type="model")
        atomic_write_text(folder / CARD_FILENAME, model_card(folder, repo.repo_id, run_dir))
        api.upload_folder(repo_id=repo.repo_id, folder_path=str(folder), token=token, repo_type="model",
                          commit_message="Upload model trained with the Colab transformer kit")
    return str(repo)


class _hub_errors:
    """The Hub's refusals and network failures as one HubError line, naming the repository."""

    def __init__(self, repo_name: str):
        self.repo_name = repo_name

    def __enter__(self):
        return self

    def __exit__(self, kind, error, tb):
        if error is None or not isinstance(error, _network_errors()):
            return False
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise HubError(f"Uploading to {self.repo_name!r} failed ({type(error).__name__}: {first}); check the "
                       f"name, that the {TOKEN_VAR} token has write access, and the connection") from None


def _network_errors() -> tuple[type, ...]:
    errors: list[type] = [OSError]  # huggingface_hub's HfHubHTTPError is one
    for name in ("httpx2", "httpx"):  # the HTTP client huggingface_hub uses, whichever is installed
        try:
            errors.append(importlib.import_module(name).HTTPError)
        except (ImportError, AttributeError):
            continue
    return tuple(errors)


def model_card(export_dir: Path, repo_id: str, run_dir: Optional[str | Path] = None) -> str:
    """README.md for the Hub: front matter, what and on what, metrics, precision, how to load it."""
    from utils.config import WizardConfig
    from utils.run_list import count_text, data_text, describe_run, model_text

    pretrained = (export_dir / KIT_CONFIG_FILENAME).is_file()
    config = WizardConfig.load(export_dir / (KIT_CONFIG_FILENAME if pretrained else CONFIG_FILENAME))
    facts = asdict(config)
    has_run = run_dir is not None and (Path(run_dir) / CONFIG_FILENAME).is_file()
    run = describe_run(Path(run_dir), Path(run_dir).parent) if has_run else None
    task = "text classification" if config.task == "classification" else "language modelling (next-token prediction)"
    lines = ["---", "library_name: " + ("transformers" if pretrained else "pytorch"),
             "tags:", "- colab-transformer-kit",
             f"- {'text-classification' if config.task == 'classification' else 'text-generation'}",
             "---", "", f"# {repo_id.split('/')[-1]}", "",
             f"A {model_text(facts)} model for {task}, trained with the Colab transformer kit on "
             f"{data_text(facts)} ({config.dataset_source} data, max_seq_len={config.max_seq_len}).", ""]
    lines += ["## Training", ""]
    if run is not None:
        lines += [f"- steps: {run.steps} of {run.planned if run.planned is not None else '?'} planned",
                  f"- precision: {run.precision or '?'}", f"- parameters: {count_text(run.params)}"]
    lines += [f"- learning rate {config.learning_rate:g}, batch size {config.batch_size} x "
              f"{config.gradient_accumulation_steps} accumulation, seed {config.seed}", ""]
    lines += ["## Validation", ""] + _metric_lines(run, config.task) + [""]
    lines += ["## How to load it", "", "```python"] + _load_lines(repo_id, config.task, pretrained) + ["```", ""]
    return "\n".join(lines)


def _metric_lines(run, task: str) -> list[str]:
    if run is None or run.best_val is None:
        return ["No validation metrics were recorded with this export."]
    step, loss = run.best_val
    lines = [f"- best validation loss: {loss:.4f} (step {step})"]
    if task == "lm":
        lines.append(f"- validation perplexity there: {math.exp(loss):.2f}")
    acc = dict(run.val_accuracy).get(step)
    if acc is not None:
        lines.append(f"- validation accuracy there: {acc:.4f}")
    return lines


def _load_lines(repo_id: str, task: str, pretrained: bool) -> list[str]:
    if pretrained:
        auto = "AutoModelForSequenceClassification" if task == "classification" else "AutoModelForCausalLM"
        return [f"from transformers import {auto}, AutoTokenizer", "",
                f"model = {auto}.from_pretrained({repo_id!r})",
                f"tokenizer = AutoTokenizer.from_pretrained({repo_id!r})"]
    use = 'model.predict(["a text"])' if task == "classification" else 'model.generate("The ", max_new_tokens=100)'
    return ["# with the kit's code on the path (git clone the kit, then run from its folder)",
            "from huggingface_hub import snapshot_download", "from utils.export import load_exported", "",
            f"model = load_exported(snapshot_download({repo_id!r}))", use]


def finish_export(predictor, folder: Path, run_dir: Optional[str | Path], push_to_hub: Optional[str] = None,
                  public: bool = False, onnx: bool = False, token: Optional[str] = None) -> Path:
    """After an export was written: model.onnx beside it (checked) when onnx, then the upload when push_to_hub
    names a repository, so the ONNX file travels too. Prints what was done; returns the folder.
    token: found before the export was written (find_token), so a missing one costs no export."""
    if onnx:
        from utils.onnx_export import export_onnx

        print(export_onnx(predictor, folder).describe())
    if push_to_hub:
        url = push_to_hub_folder(folder, push_to_hub, public, run_dir, token)
        print(f"Uploaded {folder} to {url} ({'public' if public else 'private'}), with a model card ({CARD_FILENAME})")
    return Path(folder)
