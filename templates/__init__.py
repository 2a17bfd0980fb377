"""Model templates: short nn.Module files to read, train and copy.

Each template module has a `build(config: dict) -> nn.Module` entry. `config` is a plain dict
(the same shape a visual builder's config.json has): vocab_size, max_seq_len, size, dropout and,
for classifiers, num_classes and pad_id. The registry below is what the wizard lists; importing
this package loads no template file and no torch (the config validates model_template against it),
`build_template` imports the file it builds.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class TemplateInfo:
    module: str  # import path of the template file
    task: str  # "lm" or "classification"
    description: str  # one line for the wizard


TEMPLATES: dict[str, TemplateInfo] = {
    "gpt": TemplateInfo("templates.gpt", "lm", "Decoder-only GPT language model (causal attention, weight tying)"),
    "classifier": TemplateInfo("templates.classifier", "classification",
                               "Encoder text classifier (bidirectional attention, mean pooling, linear head)"),
}


def list_templates(task: str | None = None) -> list[str]:
    return [name for name, info in TEMPLATES.items() if task is None or info.task == task]


def build_template(name: str, config: dict) -> nn.Module:
    if name not in TEMPLATES:
        raise ValueError(f"Unknown model template {name!r}; choose one of {', '.join(map(repr, TEMPLATES))}")
    return importlib.import_module(TEMPLATES[name].module).build(config)
