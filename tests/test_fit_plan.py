"""Does a model fit a T4? The memory model on paper (utils.training.fit_plan), from published configs alone.

tests/fixtures/hf_configs/ holds the config.json of Qwen2.5-0.5B, Llama-3.2-1B, Llama-3.2-3B and Qwen2.5-7B
as published on the Hugging Face Hub (no weights, nothing downloaded): the models are built on the meta device.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from tests.conftest import REPO_ROOT
from utils.config import WizardConfig
from utils.env import DeviceInfo

pytestmark = pytest.mark.skipif(importlib.util.find_spec("transformers") is None,
                                reason="transformers is not installed: the configs are read with it")
CONFIGS = REPO_ROOT / "tests/fixtures/hf_configs"
PUBLISHED = {"qwen2.5-0.5b": 0.494e9, "llama-3.2-1b": 1.236e9, "llama-3.2-3b": 3.213e9, "qwen2.5-7b": 7.616e9}


def _shape(name):
    from utils.models.adapters import meta_model
    from utils.training.fit_plan import shape_of

    return shape_of(meta_model(str(CONFIGS / name)))


@pytest.mark.parametrize("name", PUBLISHED)
def test_parameters_are_counted_from_the_config_alone(name):
    shape = _shape(name)
    assert shape.parameters == pytest.approx(PUBLISHED[name], rel=0.002)
    assert 0.5 < shape.block_linear_parameters / shape.parameters < 0.95  # the rest: embeddings (and a head)


def test_the_answer_for_a_t4_at_batch_4_x_512():
    from utils.models.adapters import recommend_method
    from utils.training.fit_plan import GPU_MEMORY, fit_answer, plan

    t4 = GPU_MEMORY["T4"]
    answers = {name: {m: fit_answer(_shape(name), m, t4, 4, 512) for m in ("full", "lora", "qlora")}
               for name in PUBLISHED}
    assert answers["llama-3.2-1b"]["full"] == "does not fit"  # 16 bytes a parameter: about 20 GB before activations
    assert answers["llama-3.2-1b"]["lora"] == "fits"
    assert answers["qwen2.5-7b"]["lora"] == "does not fit"  # 15 GB of 16-bit weights alone
    assert answers["qwen2.5-7b"]["qlora"] in ("fits", "fits with checkpointing")
    assert recommend_method(_shape("qwen2.5-7b").parameters, t4) == "qlora"
    assert recommend_method(_shape("llama-3.2-1b").parameters, t4) == "lora"
    assert recommend_method(_shape("llama-3.2-3b").parameters, t4) == "lora"  # 6 GB of 16-bit weights fit
    seven = _shape("qwen2.5-7b")
    lora, qlora = plan(seven, "lora", 4, 512), plan(seven, "qlora", 4, 512)
    assert qlora.weight_bytes < 0.4 * lora.weight_bytes  # 4-bit block weights, 16-bit embeddings and head
    assert plan(seven, "qlora", 4, 512, checkpointing=True).activation_bytes < qlora.activation_bytes / 5


def test_estimate_prints_where_a_published_config_fits_without_weights(capsys):
    from utils.training.cli import main

    code = main(["estimate", "--set", "model_source=pretrained", "--set", f"pretrained_model={CONFIGS / 'qwen2.5-7b'}",
                 "--set", "batch_size=4", "--set", "max_seq_len=512", "--set", "finetune_method=qlora"])
    out = capsys.readouterr().out
    assert code == 0
    assert "qwen2.5-7b: 7.62B parameters (from its config alone), batch 4 x 512 tokens, LoRA rank 16:" in out
    assert "  T4 (15.0 GB): full does not fit" in out and "lora does not fit" in out
    assert "holds no weights, so the steps were not timed" in out


def test_the_paper_model_agrees_with_the_measured_one_within_a_factor_of_two(tmp_path):
    """A small Llama with a LoRA adapter, fp16 autocast on this CPU: the activation and logit bytes the kit measures
    (saved tensors at batch 1 and 2) against the paper model's, per sequence of 64 tokens."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from utils.models.adapters import apply_adapters
    from utils.models.build import build_task
    from utils.training.estimate import measure_memory
    from utils.training.fit_plan import plan, shape_of
    from utils.training.precision import resolve_precision

    config = WizardConfig(model_source="pretrained", pretrained_model="x", finetune_method="lora", max_seq_len=64)
    torch.manual_seed(0)
    base = LlamaForCausalLM(LlamaConfig(vocab_size=2048, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                                        num_attention_heads=8, num_key_value_heads=2))
    shape = shape_of(base)
    model = apply_adapters(base, config)
    memory = measure_memory(config, resolve_precision(True, "16-mixed", DeviceInfo("cpu", "CPU")), model,
                            build_task(config), 2048, 0)
    paper = plan(shape, "lora", 1, 64)
    assert 0.5 < memory.per_sequence_bytes / (paper.activation_bytes + paper.logit_bytes) < 2.0
