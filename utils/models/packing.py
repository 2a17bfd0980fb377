"""The model side of sequence packing (utils.data.packing lays the conversations out): which models keep attention
within each packed conversation, and their forward on a packed batch (utils.data.packing.PackedBatch: x, y,
position_ids).

PACKABLE_MODEL_TYPES lists the architectures checked (tests/test_packing.py runs each, tiny, packed against
alone): attention-only decoders that build their mask with create_causal_mask and take position_ids. Hybrids with
state-space or linear-attention layers (Jamba, Qwen3-Next, Mamba) carry state from one conversation into the
next and are left out, as is a flash-attention implementation, which reads packed position ids only at batch
size 1.
"""

from __future__ import annotations

import sys

import torch

from utils.errors import DataError
from utils.models.calling import unwrap_logits

# model_type values whose causal LM keeps attention within each packed sequence, each checked by a test
PACKABLE_MODEL_TYPES = frozenset((
    "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi", "phi3", "olmo", "olmo2",
    "granite", "smollm3", "starcoder2", "gpt2", "gpt_neox", "stablelm", "cohere"))
MASKED_ATTENTION = ("eager", "sdpa", "flex_attention")  # implementations that use create_causal_mask's mask


def packing_refusal(hf_config) -> str:
    """Why a causal LM with this transformers config cannot be trained on packed rows; "" when it can."""
    model_type = getattr(hf_config, "model_type", "")
    if model_type not in PACKABLE_MODEL_TYPES:
        return (f"{model_type or 'this model'!r} is not among the architectures checked to keep attention within "
                "each packed conversation")
    implementation = getattr(hf_config, "_attn_implementation", None)
    if implementation is not None and implementation not in MASKED_ATTENTION:
        return (f"its attention implementation {implementation!r} reads packed rows only at batch size 1 "
                f"(packing needs one of {', '.join(MASKED_ATTENTION)})")
    return ""


def model_refusal(model) -> str:
    """Why this model (a transformers causal LM, possibly inside peft) cannot take packed rows; "" when it can."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    if config is None or "transformers" not in sys.modules or \
            not isinstance(base, sys.modules["transformers"].PreTrainedModel):
        return f"{type(base).__name__} is not a transformers model, whose masking reads packed position ids"
    return packing_refusal(config)


def packed_logits(model, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """(R, L, V) logits of a packed batch: no attention mask and no cache, so create_causal_mask finds the packed
    conversations in position_ids. use_cache=False matters: transformers fills it from config.use_cache (True
    for pretrained models), and with a cache it skips the packed-sequence detection and attends across rows."""
    refusal = model_refusal(model)
    if refusal:
        raise DataError(f"this batch is packed (pack_sequences), but {refusal}; set pack_sequences='false'")
    x, _, positions = batch
    return unwrap_logits(model(input_ids=x, position_ids=positions, use_cache=False))


def examples_in(batch) -> int:
    """Conversations in a packed batch: each starts at position 0."""
    return int((batch[2] == 0).sum())
