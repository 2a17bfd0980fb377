"""The model a config asks for: a template (templates/), the user's model file or Gist (user_models) or a
pretrained Hugging Face model (pretrained), checked against the task and the tokenizer before training."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from templates import build_template
from utils.config import WizardConfig
from utils.errors import DataError
from utils.models.adapters import apply_adapters, enable_checkpointing, load_options, uses_adapters
from utils.models.pretrained import load_pretrained_model
from utils.models.tasks import TASKS
from utils.models.user_models import (UserModelFiles, check_embedding_fits, check_model, keep_model_copy,
                                      load_user_model, resolve_user_model_files)


def model_config(config: WizardConfig, vocab_size: int, num_classes: int = 0, pad_id: int = 0) -> dict:
    """The plain dict a template's build(config) or a user's build_model(config) receives."""
    kit = {"vocab_size": vocab_size, "max_seq_len": config.max_seq_len, "size": config.model_size,
           "dropout": config.dropout}
    if config.task == "classification":
        kit.update(num_classes=num_classes, pad_id=pad_id)
    return kit


def build_model(config: WizardConfig, vocab_size: int, num_classes: int = 0, pad_id: int = 0,
                user_files: Optional[UserModelFiles] = None, label_names: Optional[list[str]] = None,
                decision=None, device: Optional[torch.device] = None) -> nn.Module:
    """The config's template, the user's model file or Gist, or a pretrained model, checked against the task
    and tokenizer.

    num_classes and pad_id come from the data (PreparedData) for task="classification", and label_names
    (a pretrained classifier's id2label; "0", "1", ... when not given). user_files overrides where a user
    model's code is read from (load_exported passes the export's copy). decision: the run's PrecisionDecision,
    which sets what a LoRA/QLoRA base is stored in (None: fp32, for inference). device: where the model is
    placed before it is checked, the device its training runs on (None: the CPU); a QLoRA base is quantised
    there as it loads.
    """
    if config.task == "classification" and num_classes < 2:
        raise DataError(f"task='classification' needs at least 2 classes, but the data has {num_classes} "
                         "label names; check label_column and the labels in the data.")
    kit = model_config(config, vocab_size, num_classes, pad_id)
    if config.model_source == "pretrained":
        names = label_names or [str(i) for i in range(num_classes)]
        model = load_pretrained_model(config.pretrained_model, config.task, names, pad_id,
                                      **load_options(config, decision, device))
        if uses_adapters(config):  # before the check: its backward then makes gradients for the adapters only
            model = apply_adapters(model, config)
        if config.gradient_checkpointing == "true":
            enable_checkpointing(model)
        model = place_model(model, device)
        check_model(model, build_task(config), vocab_size, config.max_seq_len, num_classes,
                    source=f"the pretrained model {config.pretrained_model!r}")
        return model
    if config.model_source == "template":
        model = place_model(build_template(config.model_template, kit), device)
        check_embedding_fits(model, vocab_size)
        return model
    if user_files is None:  # the training core resolves and copies the files itself, after its resume checks
        user_files = resolve_user_model_files(config.model_source, config.model_path, config.gist_id,
                                              config.output_dir)
        keep_model_copy(user_files, config.output_dir)
    files = user_files
    model = place_model(load_user_model(files, kit), device)
    check_model(model, build_task(config), vocab_size, config.max_seq_len, num_classes, source=files.source)
    return model


def place_model(model: nn.Module, device: Optional[torch.device]) -> nn.Module:
    """The model on device (None: left where it is). A QLoRA base already sits where it was quantised, and
    moving a 4-bit model is refused by transformers: a model wholly on device is left as it is."""
    if device is None or all(p.device == device for p in model.parameters()):
        return model
    return model.to(device)


def build_task(config: WizardConfig):
    """What differs between language modelling and classification (see utils.models.tasks)."""
    return TASKS[config.task]
