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


# What each preset is for, as the wizard's preset menu shows it.
PRESET_WORDS = {"tiny": "CPU-friendly: about 0.8M parameters, minutes on a laptop",
                "small": "for a GPU: about 11M parameters, longer context",
                "t4": "Colab's free T4 GPU: small model, bigger batch, fp16"}
GPU_PRESETS = ("small", "t4")  # sized for a GPU: on a CPU they train, but slowly


def preset_hint(name: str, device) -> str:
    """A line for a GPU preset applied where there is no GPU ("" otherwise). device: utils.env.DeviceInfo."""
    if name not in GPU_PRESETS or device.kind == "cuda":
        return ""
    return (f"Note: {name!r} is sized for a GPU, and this runtime has none ({device.describe()}): training will be "
            "slow. On Colab pick Runtime > Change runtime type > T4 GPU, or use the 'tiny' preset here.")


def apply_preset(config: WizardConfig, name: str) -> WizardConfig:
    """A validated copy of config with the preset's fields changed."""
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; choose one of {', '.join(map(repr, PRESETS))}")
    return config.replace(**PRESETS[name])
