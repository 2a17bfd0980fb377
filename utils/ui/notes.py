"""The notes beside the wizard's fields: what the fields on screen choose, in HTML for its HTML widgets.

Pure functions of the config and the facts the wizard holds (its device, a parameter count, a precision
decision, the last inspection): the SetupWizard decides when each note is shown.
"""

from __future__ import annotations

import dataclasses
import html
from pathlib import Path
from typing import Optional

from utils.config import SETTINGS, WizardConfig
from utils.env import DeviceInfo
from utils.errors import KitError
from utils.formatting import format_count
from utils.run_folder.checkpoints import describe_run_folder
from utils.models.adapters import CHAT_MODELS, METHOD_SENTENCES, planned_counts, recommend_method
from utils.precision import PrecisionError
from utils.ui.fields import ERROR_COLOR, WRAP
from utils.ui.review import changed_settings, describe_plan, plan_facts


def note(inner_html: str, color: str = "inherit") -> str:
    # The HTML widget's own line height is a form row's (28px); wrapped notes read better tighter.
    return f'<div style="line-height:1.4; margin:4px 0; color:{color}; {WRAP}">{inner_html}</div>'


def same_run(a: WizardConfig, b: WizardConfig) -> bool:
    """Equal but for where the run is saved: the Output folder changes neither the time nor the memory."""
    return dataclasses.replace(a, output_dir=b.output_dir) == b  # not config.replace: b may hold a bad value


def learning_rate_range(config: WizardConfig) -> str:
    """The usual learning rates for the chosen fine-tuning method: the range training's note uses."""
    from utils.training.builder import ADAPTER_LR_RANGE, FINE_TUNING_LR, short_rate

    if config.finetune_method in ("lora", "qlora"):
        low, high = ADAPTER_LR_RANGE
        return f"Adapters train at a learning rate of {short_rate(low)} to {short_rate(high)}."
    return f"Fine-tuning wants a small learning rate, 2e-5 to {short_rate(FINE_TUNING_LR)}."


def model_note(config: WizardConfig, vocab: int, parameters: Optional[int], device: DeviceInfo) -> str:
    """The Model step's note: a template's size (parameters: its count), or what training does with the user's
    or a pretrained model, with the fine-tuning method recommended on this device."""
    if config.model_source == "pretrained":
        return (f"Fine-tunes {html.escape(config.pretrained_model or 'the model named above')} with its own "
                "tokenizer: training loads it (from the Hugging Face Hub, or the folder) and checks it on a "
                f"dummy batch first. {learning_rate_range(config)}<br>"
                f"{html.escape(METHOD_SENTENCES[config.finetune_method])}{method_advice(config, device)}")
    if config.model_source != "template":
        where = config.model_path if config.model_source == "file" else config.gist_id
        return (f"Your model from {html.escape(where or 'the path above')}: training imports it and checks "
                "it on a dummy batch first, reporting any problem with your own traceback. The wizard "
                "counts and checks template models only.")
    return (f"<b>{format_count(parameters)} parameters</b> ({config.model_template} "
            f"{config.model_size}, vocabulary {vocab:,}, context {config.max_seq_len}). "
            "Check model runs a forward/backward pass and estimates the memory at your batch size.")


def method_advice(config: WizardConfig, device: DeviceInfo) -> str:
    """The method recommended for this model on this device, when its size is known without a download."""
    parameters = CHAT_MODELS.get(config.pretrained_model)
    if parameters is None and config.pretrained_model and Path(config.pretrained_model).is_dir():
        try:
            parameters = planned_counts(config.replace(finetune_method="full"))[1]
        except (KitError, OSError, ValueError):  # a folder without a readable config.json: no advice
            return ""
    if parameters is None:
        return ""
    memory = device.total_memory_bytes if device.kind == "cuda" else None
    method = recommend_method(parameters, memory)
    label = SETTINGS["finetune_method"].choices[method].split(" — ")[0]
    return (f"<br><b>Recommended here: {label}</b> for {parameters / 1e9:.2f}B parameters on "
            f"{html.escape(device.describe())}.")


def precision_text(decision, fp16_check=None) -> str:
    """The precision chosen and why (or why none can be: decision is then a PrecisionError), with what the last
    inspection's fp16 check found when it warned or failed."""
    if isinstance(decision, PrecisionError):
        return str(decision)
    found = (f"; the fp16 check found: {fp16_check.message}"
             if fp16_check and fp16_check.verdict in ("warn", "fail") else "")
    return f"{decision.precision}, {decision.reason}{found}"  # the reason has its own parentheses


def plan_html(errors: dict[str, str], candidate: WizardConfig, placed: WizardConfig, vocab: Optional[int],
              parameters: Optional[int], precision: str) -> str:
    """The review's plan and the settings that differ from the defaults; with errors, what still needs fixing."""
    if errors:
        return note(f"<b>{len(errors)} setting(s) still need fixing</b> before there is a plan to "
                    f"save: {html.escape('; '.join(errors.values()))}", ERROR_COLOR)
    plan = describe_plan(candidate, plan_facts(placed, vocab, parameters), precision, describe_run_folder(placed))
    changes = "<br>".join(map(html.escape, changed_settings(candidate))) or "none: every setting is at its default"
    return (note(f"<b>The plan.</b> {html.escape(plan)}") +
            note(f"<b>Settings that differ from the defaults</b><br>{changes}"))
