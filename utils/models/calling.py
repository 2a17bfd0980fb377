"""How the kit feeds and calls a model: the one place that adapts to forward() signatures and outputs
(model_logits, classifier_logits, describe_call) and encodes a prompt or a text (encode_for_inference).
Training (utils.models.tasks, the LightningModule), inference, evaluation and ONNX export all call models
through it."""

from __future__ import annotations

import functools
import inspect
from typing import Mapping, Optional

import torch
from torch import nn

from utils.errors import TokenizerError


def encode_for_inference(tokenizer, text: str) -> list[int]:
    """Ids for a prompt or a text to classify. A char tokenizer knows only the training text's
    characters: others are dropped, with a note, rather than failing a Run all on a default prompt."""
    try:
        return tokenizer.encode(text)
    except TokenizerError:
        known = getattr(tokenizer, "stoi", None)
        if known is None:
            raise
        unknown = sorted({ch for ch in text if ch not in known})
        print(f"Note: dropped characters the training text never had: {''.join(unknown)!r}")
        return tokenizer.encode("".join(ch for ch in text if ch in known))


def classifier_logits(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """A classifier's logits (B, num_classes), the padding mask passed when its forward() has a parameter for it."""
    return model_logits(model, input_ids, attention_mask)


def model_logits(model: nn.Module, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None):
    """Call a model the way its forward() reads and return its logits.

    The one place that adapts to forward signatures and outputs, for training and inference alike:
    ids go by position (`forward(x)`, `forward(tokens)`), or as `input_ids=` when forward() names
    that parameter or takes only keywords (Hugging Face models). A mask, when given, goes by name
    only (`attention_mask` or `mask`, or `attention_mask` into **kwargs): a second positional
    parameter may mean something else (nanoGPT's `targets`). A Hugging Face output object (`.logits`)
    or a dict with "logits" is unwrapped; anything else comes back as it is, for the model check to name.
    """
    ids_name, mask_name = _forward_parameters(type(model))
    kwargs = {} if attention_mask is None or mask_name is None else {mask_name: attention_mask}
    output = model(**{ids_name: input_ids}, **kwargs) if ids_name else model(input_ids, **kwargs)
    return unwrap_logits(output)


def unwrap_logits(output):
    """The logits tensor of a model's output: the tensor itself, output.logits, or output["logits"]."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping) and isinstance(output.get("logits"), torch.Tensor):
        return output["logits"]  # a dict, or a Hugging Face ModelOutput (a dict too)
    logits = getattr(output, "logits", None)
    return logits if isinstance(logits, torch.Tensor) else output


def describe_call(model: nn.Module, with_mask: bool) -> str:
    """How model_logits calls this model, for messages: e.g. `model(input_ids=ids, attention_mask=mask)`."""
    ids_name, mask_name = _forward_parameters(type(model))
    args = [f"{ids_name}=input_ids" if ids_name else "input_ids"]
    if with_mask and mask_name:
        args.append(f"{mask_name}=attention_mask")
    return f"model({', '.join(args)})"


@functools.lru_cache(maxsize=None)
def _forward_parameters(model_type: type) -> tuple[Optional[str], Optional[str]]:
    """(keyword for the ids or None to pass them by position, keyword for the mask or None to leave it out)."""
    params = list(inspect.signature(model_type.forward).parameters.values())
    params = params[1:] if params and params[0].name == "self" else params
    positional = [p for p in params if p.kind in (inspect.Parameter.POSITIONAL_ONLY,
                                                  inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                  inspect.Parameter.VAR_POSITIONAL)]
    names = {p.name for p in params if p.kind is not inspect.Parameter.POSITIONAL_ONLY}
    var_keyword = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    ids_name = "input_ids" if "input_ids" in names or (not positional and var_keyword) else None
    mask_name = next((n for n in ("attention_mask", "mask") if n in names), "attention_mask" if var_keyword else None)
    return ids_name, mask_name


def texts_to_logits(model: nn.Module, tokenizer, texts: list[str], max_seq_len: int, pad_id: int,
                    batch_size: int = 64) -> torch.Tensor:
    """A classifier's logits (N, num_classes) on the CPU in fp32: each text encoded and cut to max_seq_len."""
    encoded = [encode_for_inference(tokenizer, t)[:max_seq_len] for t in texts]
    return ids_to_logits(model, encoded, pad_id, batch_size)


@torch.no_grad()
def ids_to_logits(model: nn.Module, encoded: list[list[int]], pad_id: int, batch_size: int = 64) -> torch.Tensor:
    """A classifier's logits (N, num_classes) on the CPU in fp32 for texts already encoded (and cut): right-padded
    with pad_id (masked out), batch_size texts at a time, the model in eval mode meanwhile."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(encoded), batch_size):
        batch = encoded[start:start + batch_size]
        T = max(1, *(len(ids) for ids in batch))  # an empty text is one all-padding row
        input_ids = torch.full((len(batch), T), pad_id, dtype=torch.long)  # (B, T)
        mask = torch.zeros(len(batch), T, dtype=torch.bool)  # (B, T), True = real token
        for row, ids in enumerate(batch):
            input_ids[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[row, :len(ids)] = True
        out.append(classifier_logits(model, input_ids.to(device), mask.to(device)).float().cpu())  # (B, K)
    model.train(was_training)
    return torch.cat(out)
