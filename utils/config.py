"""WizardConfig: the single source of truth for a training run.

Each field carries its words and rules in one place, a `Setting` in the field's metadata: the
on-screen label, a one-line help, the allowed choices with a label each, and bounds. Validation
is a loop over those plus a few rules that join fields; the wizard, `python -m utils.training
--help` and the error messages all read the same metadata. The wizard edits one of these, the
command line builds one from `--config FILE.json` and `--set key=value`, and the training core
reads nothing else. Validating needs neither torch nor Lightning, so a typo is reported at once.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import operator
import os
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from templates import TEMPLATES  # the registry only: no model file (and no torch) is imported
from utils.errors import KitError, MissingFileError
from utils.files import atomic_write_text
from utils.gist_ref import parse_gist_ref

DATA_FILE_SUFFIXES = (".txt", ".csv", ".jsonl")  # plain text (lm only), CSV with a header row, JSON lines
TASK_WORDS = {"lm": "language model", "classification": "text classifier"}  # a model for each task, in a sentence
EMBEDDED_DATASETS = {"python_reference": "Python Language Reference (465 KB of English technical prose)"}
EMBEDDED_CORPUS_WORDS = ("Built-in corpus", "a text shipped with the kit: nothing to upload or download")  # label, help

CONFIG_FILENAME = "config.json"


class ConfigError(KitError, ValueError):
    """A config with one or more bad fields; the message lists each one."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("Invalid WizardConfig:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass(frozen=True)
class Setting:
    """A field's words and rules, kept in its metadata: what the wizard shows, --help prints and validation checks."""

    label: str  # the name on screen, e.g. "Batch size"
    help: str  # one line: what the setting does
    group: str  # its section in --help, in dataclass order
    choices: Mapping[str, str] = dataclasses.field(default_factory=dict)  # allowed value -> its label; {}: any
    ge: Optional[float] = None  # bounds: value >= ge, value > gt, value <= le, value < lt
    gt: Optional[float] = None
    le: Optional[float] = None
    lt: Optional[float] = None
    hint: str = ""  # said in parentheses after a bound is broken
    required: str = ""  # when set, a blank value is an error and this says what to give
    # Whether the field matters for a config (e.g. the file path only for a file source); None: always.
    # An irrelevant field is hidden in the wizard, not validated and not saved.
    when: Optional[Callable[[Any], bool]] = None
    used_when: str = ""  # why a field `when` rules out is not used, for the note a value given there gets
    also_accepted: tuple = ()  # values accepted besides the choices (an older spelling), listed in the message
    aliases: Mapping[str, str] = dataclasses.field(default_factory=dict)  # a common other name -> the value meant

    def relevant(self, config: Any) -> bool:
        return self.when is None or bool(self.when(config))

    def bounds_text(self) -> str:
        """The bounds in words, e.g. '> 0 and <= 1'; '' when there are none."""
        return " and ".join(f"{sign} {bound}" for sign, bound, _ in self._bounds())

    def check(self, name: str, value: Any) -> Optional[str]:
        """The message for a value of the right type that breaks this setting's rules, or None."""
        if value is None:  # an Optional field's "no limit" (type_errors refuses None elsewhere)
            return None
        where = f"{self.label} ({name})"
        if self.choices and value not in self.choices and value not in self.also_accepted:
            meant = self.aliases.get(value.lower() if isinstance(value, str) else value)
            return (f"{where} cannot be {value!r}; choose one of {', '.join(map(repr, [*self.choices, *self.also_accepted]))}"
                    + (f" ({value!r} is spelled {meant!r} here)" if meant else ""))
        if self.required and not value.strip():
            return f"{where} is empty; {self.required}"
        finite = not isinstance(value, float) or math.isfinite(value)
        if not (finite and all(holds(value, bound) for _, bound, holds in self._bounds())):
            return f"{where} must be {self.bounds_text()}, not {value!r}" + (f" ({self.hint})" if self.hint else "")
        return None

    def _bounds(self) -> list[tuple[str, float, Any]]:
        pairs = ((">=", self.ge, operator.ge), (">", self.gt, operator.gt), ("<=", self.le, operator.le),
                 ("<", self.lt, operator.lt))
        return [(sign, bound, holds) for sign, bound, holds in pairs if bound is not None]


def setting(default: Any, label: str, help: str, group: str, **rules: Any) -> Any:
    """A WizardConfig field: its default, and a Setting (label, help, choices, bounds) in its metadata."""
    return dataclasses.field(default=default, metadata={"setting": Setting(label, help, group, **rules)})


def _group(title: str):
    return functools.partial(setting, group=title)


_data, _tokenizer, _model, _optim, _precision, _devices, _output, _logging = map(_group, (
    "Task and data", "Tokenizer", "Model", "Optimisation", "Precision", "Devices", "Output and checkpoints",
    "Logging"))


def _uses_adapters(c) -> bool:
    return c.model_source == "pretrained" and c.finetune_method in ("lora", "qlora")


@dataclass
class WizardConfig:
    # --- task and data
    task: str = _data("lm", "Task", "what the model learns from your text", choices={
        "lm": "Language model — learns to continue text",
        "classification": "Text classification — text → label"})
    dataset_source: str = _data("embedded", "Data source", "where the training text comes from", choices={
        "embedded": "Built-in corpus — no upload or download",
        "file": "A file — a local or Google Drive path",
        "upload": "Upload — a file from your computer",
        "huggingface": "Hugging Face — a dataset from the Hub"})
    dataset_name: str = _data("python_reference", "Dataset name",
                              "the built-in corpus's name, or a Hugging Face dataset name such as 'imdb'",
                              when=lambda c: c.dataset_source in ("embedded", "huggingface"),
                              used_when="only the built-in and Hugging Face data sources have a name")
    dataset_config: str = _data("", "Dataset config", "Hugging Face dataset config (subset) name, empty for none",
                                when=lambda c: c.dataset_source == "huggingface",
                                used_when="only Hugging Face data has configs")
    dataset_path: str = _data("", "File path", "a .txt, .csv or .jsonl file, for the file and upload sources",
                              when=lambda c: c.dataset_source in ("file", "upload"),
                              used_when="read only with Data source (dataset_source) 'file' or 'upload'")
    text_column: str = _data("text", "Text column", "the column holding the text in CSV, JSONL and Hugging Face data",
                             when=lambda c: c.dataset_source != "embedded",
                             used_when="the built-in corpus is plain text without columns")
    train_on: str = _data("responses", "Train on", "chat/instruction data: the loss on the answers only, or on the "
                          "whole text (plain text: always all of it)", choices={
                              "responses": "Responses — the loss on the assistant's answers only",
                              "all": "All — the loss on the whole conversation, prompts included"},
                          when=lambda c: c.task == "lm" and c.model_source == "pretrained"
                          and c.dataset_source != "embedded",  # chat data is read only for a pretrained model
                          used_when="only a pretrained language model reads chat data")
    pack_sequences: str = _data("auto", "Pack sequences", "chat data: several conversations share a row, attention "
                                "kept within each; the same loss, less padding", choices={
                                    "auto": "Auto — on where the model keeps attention within each conversation",
                                    "true": "On — an error where the model cannot",
                                    "false": "Off — each conversation its own padded row"},
                                when=lambda c: c.task == "lm" and c.model_source == "pretrained"
                                and c.dataset_source != "embedded",
                                used_when="only a pretrained language model reads chat data")
    label_column: str = _data("label", "Label column", "the column holding the class label (classification only)",
                              when=lambda c: c.task == "classification" and c.dataset_source != "embedded",
                              used_when="only a classifier reads labels, from file, upload or Hugging Face data")
    val_split: float = _data(0.1, "Validation split", "fraction of the data held out to measure validation loss",
                             gt=0, lt=1, hint="e.g. 0.1")
    # --- tokenizer
    tokenizer_strategy: str = _tokenizer("char", "Tokenizer", "how text becomes token ids", choices={
        "char": "Characters — one id per distinct character",
        "byte": "Bytes — 256 ids, reads any text",
        "bpe": "BPE — subwords trained on your data",
        "pretrained": "Pretrained — an existing tokenizer"}, when=lambda c: c.model_source != "pretrained",
        used_when="a pretrained model brings its own tokenizer")
    tokenizer_path: str = _tokenizer("", "Tokenizer path", "pretrained tokenizer folder (or its name on Colab)",
                                     when=lambda c: c.tokenizer_strategy == "pretrained"
                                     and c.model_source != "pretrained",
                                     used_when="read only with Tokenizer (tokenizer_strategy) 'pretrained' and a model that is not pretrained")
    vocab_size: int = _tokenizer(4096, "Vocabulary size", "target vocabulary of the BPE trained on your data (bpe "
                                 "only: char, byte and pretrained bring their own)", ge=260, le=1_000_000,
                                 hint="byte-level BPE needs the 256 bytes plus special tokens",
                                 when=lambda c: c.tokenizer_strategy == "bpe" and c.model_source != "pretrained",
                                 used_when="only the bpe tokenizer is trained to a size; char, byte and pretrained ones "
                                 "bring their own")
    # --- model
    model_source: str = _model("template", "Model from", "where the model code comes from", choices={
        "template": "Template — a model from templates/",
        "file": "Your file — a .py with build_model or Model",
        "gist": "A GitHub Gist — holding model.py",
        "pretrained": "Pretrained — fine-tune a Hugging Face model"})
    model_template: str = _model("gpt", "Template", "which model from templates/ (short nn.Module files to read "
                                 "and copy)", when=lambda c: c.model_source == "template",
                                 used_when="read only with Model from (model_source) 'template'")
    model_size: str = _model("tiny", "Model size", "size of the template model", choices={
        "tiny": "Tiny — about 0.8M parameters, minutes on a CPU",
        "small": "Small — about 11M parameters, for a GPU",
        "base": "Base — GPT-2 small shape, about 85M parameters"}, when=lambda c: c.model_source == "template",
        used_when="read only with Model from (model_source) 'template'")
    model_path: str = _model("", "Model file", "your model .py file (model source 'file')",
                             when=lambda c: c.model_source == "file",
                             used_when="read only with Model from (model_source) 'file'")
    gist_id: str = _model("", "Gist id or URL", "Gist id or URL holding model.py (+ config.json) (model source 'gist')",
                          when=lambda c: c.model_source == "gist",
                          used_when="read only with Model from (model_source) 'gist'")
    pretrained_model: str = _model("", "Pretrained model", "Hub name ('gpt2', 'distilbert-base-uncased') or "
                                   "save_pretrained folder; uses its own tokenizer, not the Tokenizer step",
                                   when=lambda c: c.model_source == "pretrained",
                                   used_when="read only with Model from (model_source) 'pretrained'")
    finetune_method: str = _model("full", "Fine-tuning method", "how a pretrained model's weights are trained",
                                  choices={"full": "Full — every weight trains; needs the most memory",
                                           "lora": "LoRA — small adapters train on a frozen 16-bit base",
                                           "qlora": "QLoRA — adapters on a 4-bit base; the least memory"},
                                  # shown for a pretrained model; set on another it is an error, not ignored
                                  when=lambda c: c.model_source == "pretrained" or c.finetune_method != "full",
                                  used_when="read only with Model from (model_source) 'pretrained'")
    lora_rank: int = _model(16, "LoRA rank", "width of each adapter's low-rank update (more: more to learn, "
                            "more memory)", ge=1, le=4096, hint="8 to 64 is usual", when=_uses_adapters,
                            used_when="read only with Fine-tuning method (finetune_method) 'lora' or 'qlora' on a pretrained model")
    lora_alpha: float = _model(0.0, "LoRA alpha", "scale of the adapters' update is alpha / rank; 0 means alpha = "
                               "rank", ge=0, hint="0 means the rank", when=_uses_adapters,
                               used_when="read only with Fine-tuning method (finetune_method) 'lora' or 'qlora' on a pretrained model")
    lora_dropout: float = _model(0.0, "LoRA dropout", "dropout on the adapters' input while training", ge=0, lt=1,
                                 when=_uses_adapters, used_when="read only with Fine-tuning method (finetune_method) 'lora' or 'qlora' on a pretrained model")
    lora_target: str = _model("all-linear", "LoRA target modules", "'all-linear' (every linear layer of the "
                              "transformer blocks, not the output head) or module names, e.g. 'q_proj,v_proj'",
                              required="give 'all-linear' or module names", when=_uses_adapters,
                              used_when="read only with Fine-tuning method (finetune_method) 'lora' or 'qlora' on a pretrained model")
    gradient_checkpointing: str = _model("auto", "Gradient checkpointing", "recompute activations in the backward "
                                         "pass: less memory, about a third more time", choices={
                                             "auto": "Auto — on when the batch does not fit without it",
                                             "true": "On — always", "false": "Off — never"},
                                         when=lambda c: c.model_source == "pretrained"
                                         or c.gradient_checkpointing != "auto",
                                         used_when="read only with Model from (model_source) 'pretrained'")
    max_seq_len: int = _model(128, "Sequence length", "tokens per training sequence (the context length)",
                              ge=2, hint="a sequence needs an input and a target token")
    dropout: float = _model(0.0, "Dropout", "dropout probability in the template models", ge=0, lt=1,
                            when=lambda c: c.model_source == "template",
                            used_when="only the template models have a dropout setting; your own or a pretrained "
                                      "model keeps its own")
    inspect: bool = _model(True, "Inspect before training", "check shapes, causality, padding and gradient flow "
                           "before training, and stop when one fails")
    # --- optimisation
    batch_size: int = _optim(16, "Batch size", "sequences per optimizer micro-batch", ge=1)
    learning_rate: float = _optim(1e-3, "Learning rate", "peak AdamW learning rate", gt=0, le=1,
                                  hint="typical: 1e-4 to 1e-3")
    weight_decay: float = _optim(0.1, "Weight decay", "AdamW weight decay (never on norms, biases, embeddings)", ge=0)
    warmup_ratio: float = _optim(0.05, "Warmup ratio", "fraction of optimizer steps spent warming up the learning "
                                 "rate", ge=0, lt=1)
    max_epochs: int = _optim(5, "Epochs", "passes over the training data", ge=1)
    max_steps: Optional[int] = _optim(None, "Max steps", "stop after this many optimizer steps (null: the epochs "
                                      "decide)", ge=1, hint="or null for no limit")
    gradient_accumulation_steps: int = _optim(1, "Accumulation steps", "micro-batches per optimizer step", ge=1)
    gradient_clip_val: float = _optim(1.0, "Gradient clipping", "max gradient norm (after unscaling); 0 turns "
                                      "clipping off", ge=0, hint="0 turns clipping off")
    early_stopping_patience: int = _optim(0, "Early stopping patience", "validations without improvement before "
                                          "stopping; 0 turns it off", ge=0, hint="0 turns it off")
    val_check_interval: float = _optim(1.0, "Validation interval", "validate this often within an epoch (a "
                                       "fraction of an epoch)", gt=0, le=1, hint="a fraction of an epoch")
    seed: int = _optim(42, "Seed", "seeds model init, data split and shuffling", ge=0)
    # --- precision
    use_mixed_precision: bool = _precision(True, "Mixed precision", "autocast where the hardware gains from it "
                                           "(T4 fp16, A100 bf16); off means fp32")
    precision: str = _precision("auto", "Mixed precision kind", "which mixed precision, while Mixed precision is on; "
                                "auto picks it from the GPU ('32-true' means Mixed precision off)",
                                choices={"auto": "Auto — fp16 on a T4 or V100, bf16 on Ampere and newer, fp32 on a CPU",
                                         "16-mixed": "fp16 mixed — T4, V100 and other pre-Ampere GPUs",
                                         "bf16-mixed": "bf16 mixed — A100, L4, H100 (Ampere or newer)"},
                                also_accepted=("32-true",),  # = Mixed precision off (see __post_init__)
                                aliases={"fp16": "16-mixed", "16": "16-mixed", "float16": "16-mixed",
                                         "bf16": "bf16-mixed", "bfloat16": "bf16-mixed", "fp32": "32-true",
                                         "32": "32-true", "float32": "32-true"},
                                when=lambda c: c.use_mixed_precision,
                                used_when="Mixed precision (use_mixed_precision) is off")
    compile: bool = _precision(False, "Compile the model", "torch.compile the model: pays off in long runs on "
                               "Ampere or newer GPUs (A100, L4, H100); not on a CPU or a T4")
    # --- devices: one training process per device, launched by Lightning (or torchrun / SLURM)
    devices: int = _devices(0, "Devices per machine", "training processes per machine, one per GPU; 0: every "
                            "visible GPU (1 on a CPU)", ge=0, hint="0 uses every visible GPU")
    num_nodes: int = _devices(1, "Machines", "machines training together, each running `devices` processes "
                              "(torchrun or SLURM starts them)", ge=1)
    strategy: str = _devices("auto", "Multi-device strategy", "how several devices share the work", choices={
        "auto": "Auto — as is on one device, DDP on several",
        "ddp": "DDP — a whole model per device, gradients averaged",
        "fsdp": "FSDP — parameters and optimizer state sharded, for models one GPU cannot hold"})
    # --- output and checkpoints
    output_dir: str = _output("runs/default", "Output folder", "checkpoints, config.json, logs and the export go "
                              "here", required="give a folder for checkpoints")
    checkpoint_every_minutes: float = _output(5.0, "Checkpoint every (min)", "write last.ckpt at least this often "
                                              "while training (0: every step)", ge=0, hint="0 saves after every step")
    checkpoint_every_n_epochs: int = _output(1, "Best checkpoint every", "consider a best-by-validation checkpoint "
                                             "every N epochs", ge=1)
    save_top_k: int = _output(1, "Best checkpoints kept", "keep the best K checkpoints by validation loss (plus "
                              "last.ckpt)", ge=1)
    resume: bool = _output(True, "Resume", "continue from output_dir's last.ckpt when it holds one of this config")
    # --- logging
    log_every_n_steps: int = _logging(10, "Log every (steps)", "how often step metrics are logged", ge=1)
    wandb_mode: str = _logging("disabled", "Weights & Biases", "whether the run is logged to W&B", choices={
        "disabled": "Off — no W&B", "auto": "Auto — online with an API key, else offline",
        "online": "Online — sync to wandb.ai as it trains", "offline": "Offline — log here, sync later"})
    wandb_project: str = _logging("colab-transformer-kit", "W&B project", "W&B project name (lowercase, hyphens)",
                                  when=lambda c: c.wandb_mode != "disabled",
                                  used_when="Weights & Biases (wandb_mode) is 'disabled'")
    wandb_run_name: str = _logging("", "W&B run name", "W&B run name, empty for {model}_{YYYYMMDD_HHMMSS}",
                                   when=lambda c: c.wandb_mode != "disabled",
                                  used_when="Weights & Biases (wandb_mode) is 'disabled'")

    def __post_init__(self) -> None:
        if self.precision == "32-true":  # the older spelling of "fp32": the same as switching mixed precision off
            self.use_mixed_precision, self.precision = False, "auto"

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
        config.__post_init__()
        problems += config.problems()
        if problems:
            raise ConfigError(problems)
        return config

    def save(self, path: str | os.PathLike) -> Path:
        """Write the fields that matter for these choices as JSON, atomically (temp file + rename).

        Fields the choices make irrelevant (a Gist id under a template model) are left out: loading
        gives them their defaults, so an abandoned choice never travels with the saved file.
        """
        self.validate()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        relevant = self.relevant_names()
        data = {name: value for name, value in self.to_dict().items() if name in relevant}
        text = json.dumps(data, indent=2, sort_keys=True) + "\n"
        atomic_write_text(path, text)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "WizardConfig":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise MissingFileError(f"No config file at {path}") from None
        except IsADirectoryError:
            raise ConfigError([f"{path} is a folder, not a config file; give the JSON file, e.g. "
                               f"{path / CONFIG_FILENAME}"]) from None
        except UnicodeDecodeError as e:
            raise ConfigError([f"{path} is not UTF-8 text (byte {e.object[e.start]:#04x} at position {e.start}); "
                               "save the config as UTF-8 JSON"]) from None
        except json.JSONDecodeError as e:
            raise ConfigError([f"{path} is not valid JSON ({e})"]) from None
        except OSError as e:
            raise ConfigError([f"cannot read the config file {path} ({e.strerror})"]) from None
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> "WizardConfig":
        """A validated copy with some fields changed."""
        return WizardConfig.from_dict({**self.to_dict(), **changes})

    def relevant_names(self) -> list[str]:
        """The fields that matter for this config's choices, in field order (each field's Setting.when)."""
        return [name for name, rules in SETTINGS.items() if rules.relevant(self)]

    def relevant(self) -> "WizardConfig":
        """A copy with every field that does not matter for these choices back at its default (not validated)."""
        keep = set(self.relevant_names())
        defaults = WizardConfig()
        return dataclasses.replace(self, **{name: getattr(defaults, name) for name in SETTINGS if name not in keep})

    # ------------------------------------------------------------------ validation
    def validate(self) -> "WizardConfig":
        problems = self.problems()
        if problems:
            raise ConfigError(problems)
        return self

    def errors(self) -> list[tuple[str, str]]:
        """(field, message) for every problem in a relevant field, in field order; range checks wait until the
        types are right. A field these choices make irrelevant is not checked: it is not used or saved."""
        relevant = set(self.relevant_names())
        found = [error for error in type_errors(self) if error[0] in relevant]
        return found or [error for error in field_errors(self.relevant()) if error[0] in relevant]

    def problems(self) -> list[str]:
        """Every problem with this config, one message per bad field."""
        return [message for _, message in self.errors()]


SETTINGS: dict[str, Setting] = {f.name: f.metadata["setting"] for f in fields(WizardConfig)}
TASKS = tuple(SETTINGS["task"].choices)
PRECISIONS = tuple(SETTINGS["precision"].choices)
STRATEGIES = tuple(SETTINGS["strategy"].choices)
FINETUNE_METHODS = tuple(SETTINGS["finetune_method"].choices)
WANDB_MODES = tuple(SETTINGS["wandb_mode"].choices)


# Lightning's precision strings as a sentence says them (the summary's plot title, the wizard's model check).
PRECISION_WORDS = {"32-true": "fp32", "16-mixed": "fp16 mixed precision", "bf16-mixed": "bf16 mixed precision"}

TYPE_WORDS = {int: "a whole number", float: "a number", bool: "true or false", str: "text"}


def where(name: str) -> str:
    """How a message names a field: its on-screen label first, then the config name, e.g. 'Batch size (batch_size)'."""
    return f"{SETTINGS[name].label} ({name})"


def shown_value(name: str, value: Any) -> str:
    """A value as the wizard shows it: a choice's label ('Characters', not 'char'), else the value itself."""
    choices = SETTINGS[name].choices
    if value in choices:
        return choices[value].split(" — ")[0]
    return "none" if value is None else repr(value) if isinstance(value, str) else str(value)


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
            want = TYPE_WORDS[base] + (" or null" if optional else "")
            problems.append((f.name, f"{where(f.name)} must be {want}, not {value!r}"))
    return problems


def field_errors(config: WizardConfig) -> list[tuple[str, str]]:
    """(field, message) for each rule the config breaks, in field order; types are assumed right."""
    found = [(name, message) for name, rules in SETTINGS.items()
             if (message := rules.check(name, getattr(config, name)))]
    # The rules joining fields read these choices (a task's words, a source's files): with one outside its list
    # they would answer about a value that cannot be used (or fail); its own message says what to pick.
    if not any(name in ("task", "dataset_source", "tokenizer_strategy", "model_source") for name, _ in found):
        found += _data_errors(config) + _model_errors(config) + _logging_errors(config)
    order = list(SETTINGS)
    return sorted(found, key=lambda error: order.index(error[0]))  # stable: a field's messages keep their order


# The rules below join fields (a value is fine or not depending on another); one field's own rules
# are in its Setting.

def _data_errors(c: WizardConfig) -> list[tuple[str, str]]:
    errors = []
    if c.dataset_source == "embedded" and c.dataset_name not in EMBEDDED_DATASETS:
        errors.append(("dataset_name", f"{where('dataset_name')} {c.dataset_name!r} is not a built-in corpus; "
                                       f"choose one of {', '.join(map(repr, EMBEDDED_DATASETS))}"))
    if c.dataset_source == "embedded" and c.task != "lm":
        errors.append(("dataset_source", f"{where('dataset_source')}: the built-in corpus is plain text, for a "
                                         "language model; text classification needs a CSV/JSONL file with labels "
                                         "or a Hugging Face dataset"))
    path = c.dataset_path.strip()
    suffix = Path(path).suffix.lower()
    if c.dataset_source in ("file", "upload") and not path:
        errors.append(("dataset_path", f"{where('dataset_path')} is empty; give the path of a .txt, .csv or .jsonl "
                                       "file"))
    elif c.dataset_source in ("file", "upload") and suffix not in DATA_FILE_SUFFIXES:
        errors.append(("dataset_path", f"{where('dataset_path')} {c.dataset_path!r} has the extension "
                                       f"{suffix or '(none)'!r}; use a .txt, .csv or .jsonl file (rename or convert "
                                       "it)"))
    elif c.dataset_source in ("file", "upload") and suffix == ".txt" and c.task == "classification":
        errors.append(("dataset_path", f"{where('dataset_path')} {c.dataset_path!r} is plain text without labels; "
                                       "text classification needs a .csv or .jsonl file with text and label "
                                       "columns"))
    if c.dataset_source == "huggingface" and not c.dataset_name.strip():
        errors.append(("dataset_name", f"{where('dataset_name')} is empty; give a Hugging Face dataset name such as "
                                       "'imdb'"))
    if c.tokenizer_strategy == "pretrained" and not c.tokenizer_path.strip():
        errors.append(("tokenizer_path", f"{where('tokenizer_path')} is empty; a pretrained tokenizer needs its "
                                         "folder (or its name on Colab)"))
    return errors


def _model_errors(c: WizardConfig) -> list[tuple[str, str]]:
    template = TEMPLATES.get(c.model_template)
    if c.model_source == "template" and template is None:
        return [("model_template", f"{where('model_template')} {c.model_template!r} is unknown; "
                                   f"choose one of {', '.join(map(repr, TEMPLATES))}")]
    if c.model_source == "template" and template.task != c.task:
        fitting = [name for name, info in TEMPLATES.items() if info.task == c.task]
        return [("model_template", f"{where('model_template')} {c.model_template!r} is a "
                                   f"{TASK_WORDS[template.task]} ({template.task!r}), not a {TASK_WORDS[c.task]} "
                                   f"({c.task!r}); choose {' or '.join(map(repr, fitting))}")]
    if c.model_source == "file" and not c.model_path.strip():
        return [("model_path", f"{where('model_path')} is empty; give the path of your model .py file")]
    if c.model_source == "gist" and not c.gist_id.strip():
        return [("gist_id", f"{where('gist_id')} is empty; give a Gist id or URL holding model.py")]
    if c.model_source == "pretrained" and not c.pretrained_model.strip():
        return [("pretrained_model", f"{where('pretrained_model')} is empty; give a Hugging Face model name such as "
                                     "'gpt2', or a folder saved with save_pretrained")]
    if c.model_source != "pretrained" and c.finetune_method != "full":
        return [("finetune_method", f"{where('finetune_method')} {c.finetune_method!r} fine-tunes a pretrained "
                                    f"model, but Model from is {c.model_source!r}; set model_source='pretrained' "
                                    "with a pretrained_model, or finetune_method='full'")]
    if c.model_source != "pretrained" and c.gradient_checkpointing != "auto":
        return [("gradient_checkpointing", f"{where('gradient_checkpointing')} {c.gradient_checkpointing!r} applies "
                                           "to pretrained (Hugging Face) models only; leave it at 'auto'")]
    if c.model_source == "pretrained" and c.finetune_method in ("lora", "qlora") and c.strategy == "fsdp":
        return [("finetune_method", f"{where('finetune_method')} {c.finetune_method!r} trains small adapters that "
                                    "one GPU holds; use strategy 'auto' or 'ddp' with it")]
    if c.model_source == "gist":
        try:
            parse_gist_ref(c.gist_id)
        except ValueError as e:
            return [("gist_id", f"{where('gist_id')}: {e}")]
    return []


def _logging_errors(c: WizardConfig) -> list[tuple[str, str]]:
    errors = []
    if not c.wandb_project or c.wandb_project != c.wandb_project.lower() or " " in c.wandb_project \
            or "_" in c.wandb_project:
        errors.append(("wandb_project", f"{where('wandb_project')} {c.wandb_project!r} must be lowercase words "
                                        f"joined by hyphens, e.g. {_hyphenate(c.wandb_project)!r}"))
    return errors


def _hyphenate(name: str) -> str:
    return "-".join(name.lower().replace("_", " ").split()) or "my-project"


def unused_settings(config: WizardConfig) -> tuple[list[str], list[str]]:
    """(refusals, notes) for the settings these choices do not use (each field's Setting.when) that hold a value
    other than their default. A data file's path is refused: a path given means a file to train on, and training
    on the built-in corpus instead would ignore it. Every other such setting gets a note saying why it is unused."""
    defaults = WizardConfig()
    refusals, notes = [], []
    for name, rules in SETTINGS.items():
        value = getattr(config, name)
        if rules.relevant(config) or value == getattr(defaults, name):
            continue
        unused = f"{name}={value!r} is not used ({rules.used_when})"
        if name == "dataset_path" and value.strip():
            refusals.append(f"{unused}; to train on that file set dataset_source='file', or leave dataset_path empty")
        else:
            notes.append(f"Note: {unused}.")
    return refusals, notes


def report_unused_settings(config: WizardConfig) -> None:
    """Raise ConfigError for a refused unused setting (see unused_settings); print a note for each other one."""
    refusals, notes = unused_settings(config)
    if refusals:
        raise ConfigError(refusals)
    for note in notes:
        print(note)


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
