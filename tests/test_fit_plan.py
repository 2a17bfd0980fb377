"""Does a model fit a T4? The memory model on paper (utils.training.fit_plan), from published configs alone.

tests/fixtures/hf_configs/ holds the config.json of Qwen2.5-0.5B, Llama-3.2-1B, Llama-3.2-3B and Qwen2.5-7B
as published on the Hugging Face Hub, and one shaped as Llama-2-7B (no weights, nothing downloaded): the models
are built on the meta device.
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
PUBLISHED = {"qwen2.5-0.5b": 0.494e9, "llama-3.2-1b": 1.236e9, "llama-3.2-3b": 3.213e9, "qwen2.5-7b": 7.616e9,
             "llama-2-7b": 6.738e9}


def _shape(name):
    from utils.models.adapters import meta_model
    from utils.training.fit_plan import shape_of

    return shape_of(meta_model(str(CONFIGS / name)))


@pytest.mark.parametrize("name", PUBLISHED)
def test_parameters_are_counted_from_the_config_alone(name):
    shape = _shape(name)
    assert shape.parameters == pytest.approx(PUBLISHED[name], rel=0.002)
    assert 0.5 < shape.block_linear_parameters / shape.parameters < 0.97  # the rest: embeddings (and a head)


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
    from utils.cli import main

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
    from utils.precision import resolve_precision

    config = WizardConfig(model_source="pretrained", pretrained_model="x", finetune_method="lora", max_seq_len=64)
    torch.manual_seed(0)
    base = LlamaForCausalLM(LlamaConfig(vocab_size=2048, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                                        num_attention_heads=8, num_key_value_heads=2))
    shape = shape_of(base)
    model = apply_adapters(base, config)
    memory = measure_memory(config, resolve_precision(True, "16-mixed", DeviceInfo("cpu", "CPU")), model,
                            build_task(config), 2048, 0)
    paper = plan(shape, "lora", 1, 64)
    per_sequence = paper.activation_bytes + paper.logit_bytes + paper.backward_bytes  # both count the loss's backward
    assert 0.5 < memory.per_sequence_bytes / per_sequence < 2.0


def _estimate_gpu(capsys, name, *settings):
    from utils.cli import main

    code = main(["estimate", "--gpu", "t4", "--set", "model_source=pretrained",
                 "--set", f"pretrained_model={CONFIGS / name}", *[a for s in settings for a in ("--set", s)]])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err.splitlines()


def _gb(text: str, label: str) -> float:
    import re

    return float(re.search(label + r" ([0-9.]+) GB", text).group(1))


def test_estimate_gpu_t4_says_a_1b_lora_fits_at_1024_tokens(capsys):
    code, out, err = _estimate_gpu(capsys, "llama-3.2-1b", "finetune_method=lora", "max_seq_len=1024", "batch_size=2")
    assert code == 0 and err == []
    assert out[0].startswith("Precision on Tesla T4 (compute capability 7.5): 16-mixed")
    assert out[1].startswith(f"Fits: {CONFIGS / 'llama-3.2-1b'} (lora, batch 2 x 1024 tokens) needs about ")
    assert out[1].endswith("within Tesla T4 (15.0 GB, 90% usable).")
    assert 2.2 < _gb(out[1], "weights") < 2.4  # 1.24B parameters at 2 bytes (2.3 GiB): a frozen base has no AdamW state


def test_estimate_gpu_t4_from_config_only_folders_a_7b_qlora_fits_and_a_full_fine_tune_does_not(capsys):
    code, out, err = _estimate_gpu(capsys, "llama-2-7b", "finetune_method=qlora", "max_seq_len=512", "batch_size=4",
                                   "gradient_checkpointing=true")
    assert code == 0 and err == []
    assert out[1].startswith(f"Fits: {CONFIGS / 'llama-2-7b'} (qlora, batch 4 x 512 tokens, gradient checkpointing)")
    weights, total = _gb(out[1], "weights"), _gb(out[1], "needs about")
    assert 3.3 < weights < 3.9 and total > weights + 1.0  # 4-bit block weights, 16-bit embeddings and head
    assert total < 0.9 * 15
    code, out, err = _estimate_gpu(capsys, "llama-2-7b", "finetune_method=full", "max_seq_len=512", "batch_size=4")
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"error: Does not fit: {CONFIGS / 'llama-2-7b'} (full, batch 4 x 512 tokens")
    assert err[0].endswith("finetune_method=qlora with gradient_checkpointing=true fits at batch_size=4 "
                           f"({total} GB).")


def test_estimate_gpu_names_the_batch_that_fits():
    from utils.training.estimate import BatchTooLargeError
    from utils.training.fit_plan import GPUS, gpu_verdict, plan
    from utils.precision import resolve_precision

    shape = _shape("llama-3.2-1b")
    config = WizardConfig(model_source="pretrained", pretrained_model="x", finetune_method="lora", max_seq_len=1024,
                          batch_size=16, gradient_accumulation_steps=2)
    with pytest.raises(BatchTooLargeError) as refused:
        gpu_verdict("1b", shape, config, resolve_precision(True, "auto", GPUS["t4"]))
    t4 = GPUS["t4"].total_memory_bytes
    fitting = max(b for b in range(1, 16) if plan(shape, "lora", b, 1024, checkpointing=True).fits(t4))
    assert str(refused.value).endswith(f"batch_size={fitting} with gradient_accumulation_steps={-(-32 // fitting)} "
                                       "keeps the effective batch and fits "
                                       f"({_bytes_of(plan(shape, 'lora', fitting, 1024, checkpointing=True))}).")


def _bytes_of(need) -> str:
    from utils.formatting import format_bytes

    return format_bytes(need.total_bytes)


def test_the_logits_cost_12_bytes_on_paper_too():
    """Llama-3.2-1B's 128,256-word vocabulary: at 4 x 512 tokens the logits alone are 3 GB, more than its weights'
    2.5 GB; the paper model used to count 10 bytes a logit and no gradient beside the saved log-probabilities."""
    from utils.training.fit_plan import plan

    need = plan(_shape("llama-3.2-1b"), "lora", 4, 512)
    logits = 4 * 512 * 128256
    assert need.logit_bytes + need.backward_bytes == 12 * logits
