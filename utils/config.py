"""WizardConfig: the single source of truth for a training run.

Every field has a type, a default and a comment. The wizard edits one of these, the command line
builds one from `--config FILE.json` and `--set key=value`, and the training core reads nothing
else. `validate()` holds every rule; the wizard shows its messages and has none of its own.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Optional

from utils.errors import KitError, MissingFileError
from utils.files import atomic_write_text

TASKS = ("lm", "classification")
DATASET_SOURCES = ("embedded", "file", "upload", "huggingface")
EMBEDDED_DATASETS = ("python_reference",)
DATA_FILE_SUFFIXES = (".txt", ".csv", ".jsonl")  # plain text (lm only), CSV with a header row, JSON lines
TOKENIZER_STRATEGIES = ("char", "byte", "bpe", "pretrained")
MODEL_SOURCES = ("template", "file", "gist")
MODEL_SIZES = ("tiny", "small", "base")
PRECISIONS = ("auto", "32-true", "16-mixed", "bf16-mixed")
WANDB_MODES = ("disabled", "auto", "online", "offline")

CONFIG_FILENAME = "config.json"


class ConfigError(KitError, ValueError):
    """A config with one or more bad fields; the message lists each one."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("Invalid WizardConfig:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass
class WizardConfig:
    # --- task and data
    task: str = "lm"  # "lm" (next-token language model) or "classification" (text -> label)
    dataset_source: str = "embedded"  # embedded | file (local or Drive path) | upload | huggingface
    dataset_name: str = "python_reference"  # embedded corpus name, or Hugging Face dataset name
    dataset_config: str = ""  # Hugging Face dataset config (subset) name, "" for none
    dataset_path: str = ""  # .txt / .csv / .jsonl path for file and upload sources
    text_column: str = "text"  # column holding the text in CSV, JSONL and Hugging Face data
    label_column: str = "label"  # column holding the class label (classification only)
    val_split: float = 0.1  # fraction of the data held out for validation, in (0, 1)
    # --- tokenizer
    tokenizer_strategy: str = "char"  # char | byte | bpe (trained on your data) | pretrained
    tokenizer_path: str = ""  # pretrained tokenizer folder (or name on Colab)
    vocab_size: int = 4096  # target vocabulary of the trained BPE (bpe only: char, byte, pretrained bring their own)
    # --- model
    model_source: str = "template"  # template (from templates/) | file (your .py) | gist
    model_template: str = "gpt"  # template name, see templates.list_templates()
    model_size: str = "tiny"  # tiny | small | base
    model_path: str = ""  # your model .py file (model_source="file")
    gist_id: str = ""  # Gist id or URL holding model.py (+ config.json) (model_source="gist")
    max_seq_len: int = 128  # tokens per training sequence (context length)
    dropout: float = 0.0  # dropout in the template models
    # --- optimisation
    batch_size: int = 16  # sequences per optimizer micro-batch
    learning_rate: float = 1e-3  # peak AdamW learning rate
    weight_decay: float = 0.1  # AdamW weight decay (never on norms, biases, embeddings)
    warmup_ratio: float = 0.05  # fraction of optimizer steps spent warming up the LR, in [0, 1)
    max_epochs: int = 5  # passes over the training data
    max_steps: Optional[int] = None  # stop after this many optimizer steps (None: epochs decide)
    gradient_accumulation_steps: int = 1  # micro-batches per optimizer step
    gradient_clip_val: float = 1.0  # max gradient norm (after unscaling); 0 turns clipping off
    early_stopping_patience: int = 0  # validations without improvement before stopping; 0 = off
    val_check_interval: float = 1.0  # validate this often within an epoch (fraction of an epoch)
    seed: int = 42  # seeds model init, data split and shuffling
    # --- precision
    use_mixed_precision: bool = True  # autocast where the hardware gains from it (T4 fp16, A100 bf16)
    precision: str = "auto"  # auto | 32-true | 16-mixed | bf16-mixed (auto follows the hardware)
    # --- output and checkpoints
    output_dir: str = "runs/default"  # checkpoints, config.json, logs and export go here
    checkpoint_every_minutes: float = 5.0  # write last.ckpt at least this often while training (0: every step)
    checkpoint_every_n_epochs: int = 1  # consider a best-by-validation checkpoint every N epochs
    save_top_k: int = 1  # keep the best K checkpoints by validation loss (plus last.ckpt)
    resume: bool = True  # continue from output_dir's last.ckpt when it holds one of this config
    # --- logging
    log_every_n_steps: int = 10  # how often step metrics are logged
    wandb_mode: str = "disabled"  # disabled | auto (online with a key, else offline) | online | offline
    wandb_project: str = "colab-transformer-kit"  # W&B project (lowercase, hyphens)
    wandb_run_name: str = ""  # W&B run name, "" for {model}_{YYYYMMDD_HHMMSS}

    # ------------------------------------------------------------------ conversion
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "WizardConfig":
        """Build and validate a config; unknown keys and wrong types are errors, not ignored."""
        if not isinstance(data, dict):
            raise ConfigError([f"expected a JSON object of config fields, got {type(data).__name__}"])
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        problems = [f"unknown field {k!r} (known fields: {', '.join(sorted(known))})" for k in unknown]
        kwargs = {k: v for k, v in data.items() if k in known}
        config = cls.__new__(cls)
        for f in fields(cls):
            setattr(config, f.name, kwargs.get(f.name, f.default))
        problems += config.problems()
        if problems:
            raise ConfigError(problems)
        return config

    def save(self, path: str | os.PathLike) -> Path:
        """Write the config as JSON atomically (temp file + rename), so a crash never leaves half a file."""
        self.validate()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"
        atomic_write_text(path, text)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "WizardConfig":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise MissingFileError(f"No config file at {path}") from None
        except json.JSONDecodeError as e:
            raise ConfigError([f"{path} is not valid JSON ({e})"]) from None
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> "WizardConfig":
        """A validated copy with some fields changed."""
        return WizardConfig.from_dict({**self.to_dict(), **changes})

    # ------------------------------------------------------------------ validation
    def validate(self) -> "WizardConfig":
        problems = self.problems()
        if problems:
            raise ConfigError(problems)
        return self

    def problems(self) -> list[str]:
        """Every problem with this config, one message per bad field."""
        problems = _type_problems(self)
        if problems:  # range checks on wrongly typed values would only add noise
            return problems
        return [msg for name, msg in field_errors(self)]


def _choice(name: str, value: Any, allowed: tuple) -> Optional[str]:
    if value not in allowed:
        return f"{name}={value!r} is not allowed; choose one of {', '.join(map(repr, allowed))}"
    return None


def _type_problems(config: WizardConfig) -> list[str]:
    return [msg for name, msg in type_errors(config)]


def type_errors(config: WizardConfig) -> list[tuple[str, str]]:
    """(field, message) for each field whose value has the wrong type (the wizard shows them per field)."""
    hints = typing.get_type_hints(WizardConfig)
    problems = []
    for f in fields(WizardConfig):
        value, hint = getattr(config, f.name), hints[f.name]
        optional = typing.get_origin(hint) is typing.Union
        base = [a for a in typing.get_args(hint) if a is not type(None)][0] if optional else hint
        if optional and value is None:
            continue
        ok = isinstance(value, base) and not (base is not bool and isinstance(value, bool))
        if base is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True  # JSON writes 1.0 as 1
        if not ok:
            want = base.__name__ + (" or null" if optional else "")
            problems.append((f.name, f"{f.name}={value!r} has type {type(value).__name__}; expected {want}"))
    return problems


def field_errors(config: WizardConfig) -> list[tuple[str, str]]:
    """(field, message) for each rule the config breaks; types are assumed right."""
    c = config
    checks: list[tuple[str, Optional[str]]] = [
        ("task", _choice("task", c.task, TASKS)),
        ("dataset_source", _choice("dataset_source", c.dataset_source, DATASET_SOURCES)),
        ("tokenizer_strategy", _choice("tokenizer_strategy", c.tokenizer_strategy, TOKENIZER_STRATEGIES)),
        ("model_source", _choice("model_source", c.model_source, MODEL_SOURCES)),
        ("model_size", _choice("model_size", c.model_size, MODEL_SIZES)),
        ("precision", _choice("precision", c.precision, PRECISIONS)),
        ("wandb_mode", _choice("wandb_mode", c.wandb_mode, WANDB_MODES)),
    ]
    if c.dataset_source == "embedded" and c.dataset_name not in EMBEDDED_DATASETS:
        checks.append(("dataset_name", f"dataset_name={c.dataset_name!r} is not an embedded dataset; "
                                       f"choose one of {', '.join(map(repr, EMBEDDED_DATASETS))}"))
    if c.dataset_source == "embedded" and c.task != "lm":
        checks.append(("dataset_source", "the embedded dataset is plain text for task='lm'; "
                                         "classification needs a CSV/JSONL file or a Hugging Face dataset"))
    if c.dataset_source in ("file", "upload") and not c.dataset_path.strip():
        checks.append(("dataset_path", f"dataset_path is empty; dataset_source={c.dataset_source!r} "
                                       "needs the path of a .txt, .csv or .jsonl file"))
    suffix = Path(c.dataset_path.strip()).suffix.lower()
    if c.dataset_source in ("file", "upload") and c.dataset_path.strip() and suffix not in DATA_FILE_SUFFIXES:
        checks.append(("dataset_path", f"dataset_path={c.dataset_path!r} has the extension {suffix or '(none)'!r}; "
                                       "use a .txt, .csv or .jsonl file (rename or convert it)"))
    elif c.dataset_source in ("file", "upload") and suffix == ".txt" and c.task == "classification":
        checks.append(("dataset_path", f"dataset_path={c.dataset_path!r} is plain text without labels; "
                                       "task='classification' needs a .csv or .jsonl file with text and label columns"))
    if c.dataset_source == "huggingface" and not c.dataset_name.strip():
        checks.append(("dataset_name", "dataset_name is empty; give a Hugging Face dataset name such as 'imdb'"))
    if c.tokenizer_strategy == "pretrained" and not c.tokenizer_path.strip():
        checks.append(("tokenizer_path", "tokenizer_path is empty; tokenizer_strategy='pretrained' needs a "
                                         "tokenizer folder (or a name on Colab)"))
    if not 0 < c.val_split < 1:
        checks.append(("val_split", f"val_split={c.val_split!r} must be between 0 and 1 (exclusive), e.g. 0.1"))
    if not 260 <= c.vocab_size <= 1_000_000:
        checks.append(("vocab_size", f"vocab_size={c.vocab_size!r} must be between 260 and 1000000 "
                                     "(byte-level BPE needs the 256 bytes plus special tokens)"))
    if c.model_source == "template":
        from templates import TEMPLATES  # local import: templates/ imports nothing from utils

        if c.model_template not in TEMPLATES:
            checks.append(("model_template", f"model_template={c.model_template!r} is unknown; "
                                             f"choose one of {', '.join(map(repr, TEMPLATES))}"))
        elif TEMPLATES[c.model_template].task != c.task:
            checks.append(("model_template", f"model_template={c.model_template!r} is for task="
                                             f"{TEMPLATES[c.model_template].task!r}, not task={c.task!r}"))
    if c.model_source == "file" and not c.model_path.strip():
        checks.append(("model_path", "model_path is empty; model_source='file' needs the path of your model .py file"))
    if c.model_source == "gist" and not c.gist_id.strip():
        checks.append(("gist_id", "gist_id is empty; model_source='gist' needs a Gist id or URL"))
    elif c.model_source == "gist":
        from utils.user_models import parse_gist_ref  # local import: loads torch

        try:
            parse_gist_ref(c.gist_id)
        except ValueError as e:
            checks.append(("gist_id", str(e)))
    checks += [
        ("max_seq_len", _at_least("max_seq_len", c.max_seq_len, 2, "a sequence needs an input and a target token")),
        ("dropout", None if 0 <= c.dropout < 1 else f"dropout={c.dropout!r} must be in [0, 1)"),
        ("batch_size", _at_least("batch_size", c.batch_size, 1)),
        ("learning_rate", None if math.isfinite(c.learning_rate) and 0 < c.learning_rate <= 1
         else f"learning_rate={c.learning_rate!r} must be > 0 and <= 1 (typical: 1e-4 to 1e-3)"),
        ("weight_decay", None if math.isfinite(c.weight_decay) and c.weight_decay >= 0
         else f"weight_decay={c.weight_decay!r} must be >= 0"),
        ("warmup_ratio", None if 0 <= c.warmup_ratio < 1 else f"warmup_ratio={c.warmup_ratio!r} must be in [0, 1)"),
        ("max_epochs", _at_least("max_epochs", c.max_epochs, 1)),
        ("max_steps", None if c.max_steps is None else _at_least("max_steps", c.max_steps, 1, "or null for no limit")),
        ("gradient_accumulation_steps", _at_least("gradient_accumulation_steps", c.gradient_accumulation_steps, 1)),
        ("gradient_clip_val", None if math.isfinite(c.gradient_clip_val) and c.gradient_clip_val >= 0
         else f"gradient_clip_val={c.gradient_clip_val!r} must be >= 0 (0 turns clipping off)"),
        ("early_stopping_patience", _at_least("early_stopping_patience", c.early_stopping_patience, 0, "0 turns it off")),
        ("val_check_interval", None if 0 < c.val_check_interval <= 1
         else f"val_check_interval={c.val_check_interval!r} must be in (0, 1] (a fraction of an epoch)"),
        ("seed", _at_least("seed", c.seed, 0)),
        ("output_dir", None if c.output_dir.strip() else "output_dir is empty; give a folder for checkpoints"),
        ("checkpoint_every_minutes", None if math.isfinite(c.checkpoint_every_minutes) and c.checkpoint_every_minutes >= 0
         else f"checkpoint_every_minutes={c.checkpoint_every_minutes!r} must be >= 0 (0 saves after every step)"),
        ("checkpoint_every_n_epochs", _at_least("checkpoint_every_n_epochs", c.checkpoint_every_n_epochs, 1)),
        ("save_top_k", _at_least("save_top_k", c.save_top_k, 1)),
        ("log_every_n_steps", _at_least("log_every_n_steps", c.log_every_n_steps, 1)),
        ("wandb_project", None if c.wandb_project and c.wandb_project == c.wandb_project.lower()
         and " " not in c.wandb_project and "_" not in c.wandb_project
         else f"wandb_project={c.wandb_project!r} must be lowercase words joined by hyphens, "
              f"e.g. {_hyphenate(c.wandb_project)!r}"),
    ]
    if c.precision in ("16-mixed", "bf16-mixed") and not c.use_mixed_precision:
        checks.append(("precision", f"precision={c.precision!r} contradicts use_mixed_precision=False; "
                                    "set use_mixed_precision=True, or precision='auto' or '32-true'"))
    return [(name, msg) for name, msg in checks if msg]


def _at_least(name: str, value: int, low: int, hint: str = "") -> Optional[str]:
    if value >= low:
        return None
    return f"{name}={value!r} must be >= {low}" + (f" ({hint})" if hint else "")


def _hyphenate(name: str) -> str:
    return "-".join(name.lower().replace("_", " ").split()) or "my-project"


def apply_overrides(config: WizardConfig, assignments: list[str]) -> WizardConfig:
    """Apply `key=value` strings (the CLI's --set), parsing values as JSON where they parse."""
    hints = typing.get_type_hints(WizardConfig)
    changes: dict[str, Any] = {}
    for item in assignments:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError([f"--set {item!r} is not key=value (e.g. --set batch_size=32)"])
        if hints.get(key) is str:
            changes[key] = raw  # text fields take the text as written: dataset_path=123 is a path
            continue
        if hints.get(key) is bool and raw.strip().lower() in ("true", "false"):
            changes[key] = raw.strip().lower() == "true"  # Python spelling too: True/False
            continue
        try:
            changes[key] = json.loads(raw)
        except json.JSONDecodeError:
            changes[key] = raw  # not JSON: validation names the field and the type it expected
    return config.replace(**changes)
