"""The wizard's review step: the run as a plan in one paragraph, then the settings that differ from the defaults.

    facts = plan_facts(config, vocab, parameters)   # plans local data (utils.plan.plan_data; tokens cached)
    print(describe_plan(config, facts, precision_text, run_folder))
    print(changed_settings(config))

Plain text, so the wizard, a headless notebook and tests read the same sentences.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections import OrderedDict
from dataclasses import dataclass, fields
from typing import Optional

from utils.config import EMBEDDED_DATASETS, SETTINGS, TASK_WORDS, WizardConfig
from utils.formatting import format_count

# Local data up to this size is prepared (tokenized, cached in the run folder) as soon as the review shows;
# larger files and Hub datasets wait for Estimate time or the start of training.
PREPARE_ON_REVIEW_BYTES = 20_000_000


@dataclass(frozen=True)
class DataFacts:
    """What prepare_data found: the sizes the plan states."""

    num_tokens: int
    train_items: int  # training sequences (lm windows) or examples (classification)
    val_items: int
    batches_per_epoch: int  # the training loader's length, as training will build it
    vocab_size: int
    label_names: tuple[str, ...] = ()
    chat: str = ""  # chat data: its shape in words (PreparedData.chat)


@dataclass(frozen=True)
class PlanFacts:
    parameters: Optional[int]  # None: a model of your own, counted when training builds it
    vocab_size: int  # the wizard's count (before the data is prepared)
    data: Optional[DataFacts]  # None: not prepared (a Hub dataset, a large file, or data not readable yet)
    data_note: str = ""  # why data is None, in words


def plan_facts(config: WizardConfig, vocab_size: int, parameters: Optional[int]) -> PlanFacts:
    """What the plan can state now: the data's sizes when it is prepared here (see prepares_on_review), from the
    data half of the run's plan (utils.plan.plan_data), as train() prepares it."""
    ok, why = prepares_on_review(config)
    if not ok:
        return PlanFacts(parameters, vocab_size, None, why)
    from utils.training.builder import build_dataloaders

    planned = _planned(config)
    if isinstance(planned, str):
        return PlanFacts(parameters, vocab_size, None, planned)
    data = planned.data
    train_loader, _ = build_dataloaders(config, data.train, data.val, pin_memory=False)  # as training builds it
    facts = DataFacts(data.num_tokens, len(data.train), len(data.val), len(train_loader), data.tokenizer.vocab_size,
                      tuple(data.label_names), data.chat)
    return PlanFacts(parameters, vocab_size, facts)


_PLANNED: OrderedDict = OrderedDict()  # (DataSpec, the file's mtime) -> DataPlan or why not; the last few
PLANNED_KEPT = 4


def _planned(config: WizardConfig):
    """The data half of the run's plan (tokens cached in the run folder's data_cache), or why it could not be
    made; kept for the last few data settings, so a change elsewhere in the wizard prepares nothing again."""
    from utils.data.spec import build_data_spec
    from utils.plan import plan_data

    key = (build_data_spec(config), _mtime(config.dataset_path))
    if key not in _PLANNED:
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # prepare_data's progress lines are for the training log
                _PLANNED[key] = plan_data(config)
        except (ValueError, RuntimeError, OSError) as e:  # the data's own complaint: the plan says it
            _PLANNED[key] = f"the data could not be prepared ({' '.join(str(e).split())})"
        while len(_PLANNED) > PLANNED_KEPT:
            _PLANNED.popitem(last=False)
    return _PLANNED[key]


def _mtime(path: str) -> float:
    try:
        return os.path.getmtime(path) if path else 0.0
    except OSError:
        return 0.0


def prepares_on_review(config: WizardConfig) -> tuple[bool, str]:
    """Whether the review prepares this data by itself, and if not, why (in words)."""
    if config.dataset_source == "huggingface":
        return False, "a Hugging Face dataset is downloaded and counted when you press Estimate time or train"
    if config.dataset_source == "embedded":
        return True, ""
    try:
        size = os.path.getsize(config.dataset_path)
    except OSError as e:
        return False, f"the file cannot be read yet ({e.strerror})"
    if size > PREPARE_ON_REVIEW_BYTES:
        return False, (f"{size / 1e6:.0f} MB of data is tokenized when you press Estimate time or train, "
                       "not on every change here")
    return True, ""


def describe_plan(config: WizardConfig, facts: PlanFacts, precision: str, run_folder: str) -> str:
    """One paragraph: what trains on what, with which tokenizer, how long, in which precision, and where."""
    sentences = [f"Trains {_model_words(config, facts)} on {_data_words(config, facts)}, "
                 f"with {_tokenizer_words(config, facts)}.",
                 _length_words(config, facts),
                 f"Precision: {precision}.",
                 run_folder]
    return " ".join(sentences)


def changed_settings(config: WizardConfig) -> list[str]:
    """'Label: value (default: value)' for every relevant setting that differs from its default."""
    defaults = WizardConfig()
    relevant = config.relevant_names()
    return [f"{SETTINGS[f.name].label}: {value_words(f.name, getattr(config, f.name))} "
            f"(default: {value_words(f.name, getattr(defaults, f.name))})"
            for f in fields(WizardConfig) if f.name in relevant and getattr(config, f.name) != getattr(defaults, f.name)]


def value_words(name: str, value) -> str:
    choices = SETTINGS[name].choices
    if value in choices:
        return choices[value].split(" — ")[0]
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    return repr(value) if isinstance(value, str) else f"{value:,}" if isinstance(value, int) else f"{value:g}"


def _model_words(config: WizardConfig, facts: PlanFacts) -> str:
    kind = TASK_WORDS[config.task]
    if config.model_source == "template":
        size = SETTINGS["model_size"].choices[config.model_size].split(" — ")[0].lower()
        count = f" ({format_count(facts.parameters)} parameters)" if facts.parameters is not None else ""
        return f"the {size} '{config.model_template}' {kind} from templates/{count}"
    if config.model_source == "pretrained":
        return f"the pretrained {kind} '{config.pretrained_model}' ({_fine_tuning_words(config)})"
    where = config.model_path if config.model_source == "file" else f"Gist {config.gist_id}"
    return f"your own {kind} from {where} (checked on a dummy batch and counted when training starts)"


def _fine_tuning_words(config: WizardConfig) -> str:
    """How a pretrained model trains and how much of it: counted from its config.json where that can be read."""
    from utils.models.adapters import planned_counts, trainable_words
    from utils.errors import KitError

    method = SETTINGS["finetune_method"].choices[config.finetune_method].split(" — ")[0]
    how = "fine-tuned" if config.finetune_method == "full" else f"fine-tuned with {method}, rank {config.lora_rank}"
    try:
        counts = planned_counts(config)
    except (KitError, OSError, ValueError) as e:  # its config.json not readable here yet (offline, a typo)
        return f"{how}; counted when training loads it ({' '.join(str(e).split())[:120]})"
    return f"{how}: {trainable_words(*counts)} trainable"


def _data_words(config: WizardConfig, facts: PlanFacts) -> str:
    if config.dataset_source == "embedded":
        what = f"the built-in corpus {EMBEDDED_DATASETS[config.dataset_name]}"  # its own parentheses: no more
    elif config.dataset_source == "huggingface":
        subset = f" ({config.dataset_config})" if config.dataset_config else ""
        what = f"the Hugging Face dataset '{config.dataset_name}'{subset}"
    else:
        what = f"{os.path.basename(config.dataset_path)}"
    data = facts.data
    if data is None:  # the note can hold parentheses (an error's own): a dash, not another level
        return f"{what} — size not counted yet: {facts.data_note} —"
    if config.task == "classification":
        labels = ", ".join(data.label_names[:6]) + (", ..." if len(data.label_names) > 6 else "")
        return (f"{what}: {data.num_tokens:,} tokens in {data.train_items + data.val_items:,} texts, "
                f"{data.train_items:,} for training and {data.val_items:,} held out for validation, "
                f"{len(data.label_names)} labels ({labels}) from the column '{config.label_column}'")
    if data.chat:
        trained = "the answers" if config.train_on == "responses" else "the whole text"
        return (f"{what}: {data.train_items + data.val_items:,} conversations ({data.chat}, {data.num_tokens:,} "
                f"tokens), {data.train_items:,} for training and {data.val_items:,} held out for validation; "
                f"the loss is on {trained}")
    return (f"{what}: {data.num_tokens:,} tokens, cut into {data.train_items:,} training sequences of "
            f"{config.max_seq_len} tokens and {data.val_items:,} held out for validation")


def _tokenizer_words(config: WizardConfig, facts: PlanFacts) -> str:
    vocab = facts.data.vocab_size if facts.data else facts.vocab_size
    if config.model_source == "pretrained":
        return f"the model's own tokenizer ({vocab:,} token ids)"
    label = SETTINGS["tokenizer_strategy"].choices[config.tokenizer_strategy].split(" — ")[0].lower()
    return f"the {label} tokenizer ({vocab:,} token ids)"


def _length_words(config: WizardConfig, facts: PlanFacts) -> str:
    from utils.training.builder import total_steps  # torch-free arithmetic, imported late like the rest of training

    unit = "texts" if config.task == "classification" else "sequences"
    per_step = config.batch_size * config.gradient_accumulation_steps
    batch = (f"Each optimizer step sees {per_step:,} {unit} (batch {config.batch_size} x "
             f"{config.gradient_accumulation_steps} accumulation)")
    epochs = f"{config.max_epochs} epoch{'s' if config.max_epochs != 1 else ''}"
    limit = f", stopping at {config.max_steps:,} steps at most" if config.max_steps is not None else ""
    if facts.data is None:
        return f"{batch}; {epochs}{limit}."
    steps = total_steps(config, facts.data.batches_per_epoch)
    return f"{batch}; {epochs}{limit} = {steps:,} optimizer steps."
