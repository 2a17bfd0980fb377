"""Presets: named sets of WizardConfig field changes (never a second set of defaults).

They size the model and the run, and leave the task and template alone, so they suit the GPT
language model and the classifier alike.
"""

from __future__ import annotations

from utils.config import WizardConfig

PRESETS: dict[str, dict] = {
    # CPU-friendly: the tiny size (~0.8M parameters as a GPT) trains on a laptop in minutes.
    "tiny": {"model_size": "tiny", "batch_size": 16, "max_seq_len": 128,
             "learning_rate": 1e-3, "max_epochs": 3},
    # A step up for a GPU: the small size (~11M parameters as a GPT) with longer context.
    "small": {"model_size": "small", "batch_size": 32, "max_seq_len": 256,
              "learning_rate": 6e-4, "max_epochs": 5},
    # Colab's free T4 (15 GB): the small size under fp16 autocast at a batch that keeps its tensor
    # cores busy while leaving most of the memory free (the wizard's model check estimates ~1.5 GB).
    "t4": {"model_size": "small", "batch_size": 64, "max_seq_len": 256,
           "learning_rate": 6e-4, "max_epochs": 5, "use_mixed_precision": True, "precision": "auto"},
}


def apply_preset(config: WizardConfig, name: str) -> WizardConfig:
    """A validated copy of config with the preset's fields changed."""
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; choose one of {', '.join(map(repr, PRESETS))}")
    return config.replace(**PRESETS[name])
