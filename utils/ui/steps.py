"""The wizard's five steps, the fields each shows, and the words it uses where they differ from the config's."""

from __future__ import annotations

import html
import importlib.util
from dataclasses import dataclass

from utils.config import EMBEDDED_DATASETS, SETTINGS


@dataclass(frozen=True)
class Step:
    key: str  # short name, used in CSS classes and screenshot names
    title: str
    fields: tuple[tuple[str, str], ...]  # (WizardConfig field, its label from the field's metadata)


def _step(key: str, title: str, *names: str) -> Step:
    return Step(key, title, tuple((name, SETTINGS[name].label) for name in names))


STEPS = (
    _step("dataset", "Dataset", "task", "dataset_source", "dataset_name", "dataset_config", "dataset_path",
          "text_column", "label_column", "val_split"),
    _step("tokenizer", "Tokenizer", "tokenizer_strategy", "vocab_size", "tokenizer_path"),
    _step("model", "Model", "model_source", "model_template", "model_size", "model_path", "gist_id", "pretrained_model",
          "finetune_method", "lora_rank", "lora_alpha", "lora_dropout", "lora_target", "gradient_checkpointing",
          "train_on", "pack_sequences", "dropout", "inspect"),  # train_on: chat data is read only for a pretrained model, chosen here
    _step("training", "Training", "batch_size", "max_seq_len", "learning_rate", "max_epochs",
          "gradient_accumulation_steps", "gradient_clip_val", "early_stopping_patience", "use_mixed_precision",
          "precision", "compile", "devices", "num_nodes", "strategy"),
    _step("review", "Review & save", "output_dir"),
)

MULTI_DEVICE_FIELDS = ("devices", "num_nodes", "strategy")  # shown only where more than one GPU is visible
# Which fields matter for which choices is the config's rule (each Setting's `when`): the wizard shows
# just those, and its one addition is that the built-in corpus is picked from a menu, not typed.
PLACEHOLDERS = {"dataset_path": "/content/drive/MyDrive/data/train.txt", "tokenizer_path": "path/to/tokenizer",
                "model_path": "/content/drive/MyDrive/models/model.py", "gist_id": "https://gist.github.com/you/ID"}
HF_AVAILABLE = importlib.util.find_spec("datasets") is not None
# Where the wizard's words differ from the config's own (SETTINGS): said once, in the help line of the
# field it is about, not as a note on every view of the step.
FIELD_WORDS = {} if HF_AVAILABLE else {"dataset_source": (
    SETTINGS["dataset_source"].label, SETTINGS["dataset_source"].help + " (Hugging Face datasets need the datasets "
                                                                         "library: pip install datasets)")}


def corpus_title(name: str) -> str:
    """A built-in corpus as its menu shows it: 'Python Language Reference', without the size and kind."""
    return EMBEDDED_DATASETS[name].split(" (")[0]


def indicator_html(current: int, errors: dict[str, str]) -> str:
    """The step line above the form: the current step underlined, a step with an error marked (!)."""
    parts = []
    for i, step in enumerate(STEPS):
        text = f"{i + 1}. {html.escape(step.title)}"
        if any(name in errors for name, _ in step.fields):
            text += " (!)"
        parts.append(f"<b><u>{text}</u></b>" if i == current else f'<span style="color:#666">{text}</span>')
    return " &rsaquo; ".join(parts)
