"""A LoRA run's merged export (utils.models.merge) and loading exports back (utils.export.load_exported).

The merge reads the base's own safetensors shard by shard: it never loads a second copy of the model, keeps the
base's stored dtype (a bf16 model stays bf16 whether the export runs in the session or from the run folder), and
matches peft's merge_and_unload bit for bit. Nothing is downloaded: the bases are the tiny config-built Llama of
tests/test_adapters.py, saved in fp32 there and in bf16 here. There is no GPU here: where an export would load onto
one, transformers' from_pretrained is intercepted to see where it was asked to put the weights.
"""

from __future__ import annotations

import copy
import importlib.util
import json

import pytest
import torch
from safetensors import safe_open

from tests.test_adapters import CPU, _config, _tokenizer, llama_folder  # noqa: F401 (a fixture)
from utils.export import export_result

pytestmark = pytest.mark.skipif(importlib.util.find_spec("peft") is None, reason="peft is not installed "
                                "(requirements-test.txt): LoRA is built with it")


@pytest.fixture(scope="module")
def bf16_folder(tmp_path_factory):
    """The tiny Llama saved in bf16, as Qwen and Llama 3 publish their weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("llama-bf16")
    tokenizer = _tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=64, eos_token_id=0, bos_token_id=0, pad_token_id=0))
    model.to(torch.bfloat16).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def bf16_run(tmp_path_factory, bf16_folder):
    """A LoRA run on the bf16 base, trained on the CPU (its base computes in fp32 there)."""
    from utils.training import train

    tmp = tmp_path_factory.mktemp("bf16-run")
    return train(_config(tmp, bf16_folder, max_steps=3, val_split=0.2), device=CPU)


def _tensors(folder) -> dict[str, torch.Tensor]:
    files = sorted(folder.glob("*.safetensors"))
    out = {}
    for file in files:
        with safe_open(str(file), "pt") as f:
            out.update({key: f.get_tensor(key) for key in f.keys()})
    return out


def _peft_merged(bf16_folder, run) -> dict[str, torch.Tensor]:
    """What peft's own merge_and_unload gives for the run's adapter on the base loaded in its stored dtype."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    from utils.models.adapters import apply_adapters

    fresh = apply_adapters(AutoModelForCausalLM.from_pretrained(bf16_folder, dtype=torch.bfloat16), run.config)
    set_peft_model_state_dict(fresh, get_peft_model_state_dict(run.model))
    return fresh.merge_and_unload().state_dict()


def test_a_bf16_base_is_exported_bf16_in_the_session_and_from_the_run_folder_and_says_so(tmp_path, bf16_folder,
                                                                                          bf16_run, capsys):
    """Issue 28.7: the in-session base computed in fp32 (CPU) and the CLI's loaded run in fp32 too; neither may
    decide the export's dtype, and a bf16 model must never become fp16."""
    from utils.cli import main

    capsys.readouterr()
    session = export_result(bf16_run, tmp_path / "session", merged=True)
    said = capsys.readouterr().out
    assert ("Merged: the adapter added into 14 layers of the base, read from its stored bf16 weights, on cpu, one "
            "shard at a time; the export is a bf16 model (the base's own dtype), one file.") in said
    assert main(["export", str(bf16_run.output_dir), "--merged", "--checkpoint", "last", "--to",
                 str(tmp_path / "cli")]) == 0
    assert "the export is a bf16 model (the base's own dtype)" in capsys.readouterr().out

    expected = _peft_merged(bf16_folder, bf16_run)
    for folder in (session, tmp_path / "cli"):
        weights = _tensors(folder)
        assert {t.dtype for t in weights.values()} == {torch.bfloat16}
        assert json.loads((folder / "config.json").read_text())["dtype"] == "bfloat16"
        assert set(weights) == set(expected)
        for key, tensor in weights.items():  # bit for bit what peft's own merge writes
            assert torch.equal(tensor, expected[key]), key


def test_the_merge_loads_no_second_copy_of_the_base_and_writes_shard_by_shard(tmp_path, llama_folder, monkeypatch,
                                                                                capsys):
    """Issue 28.5: a 7B base reloaded for the merge is 15 GB of host memory (Colab has 12.7). The merge reads the
    stored weights one tensor at a time and keeps at most one shard in memory."""
    import transformers
    from transformers import AutoModelForCausalLM

    from utils.models import merge
    from utils.training import train

    result = train(_config(tmp_path, llama_folder, max_steps=3), device=CPU)
    reference = copy.deepcopy(result.model).merge_and_unload().state_dict()

    def refuse(cls, *args, **kwargs):
        raise AssertionError("the merge loaded the base again: a second full copy in host memory")

    monkeypatch.setattr(transformers.PreTrainedModel, "from_pretrained", classmethod(refuse))
    monkeypatch.setattr(merge, "MERGED_SHARD_BYTES", 40_000)  # this base: 172 KB in fp32
    folder = export_result(result, tmp_path / "merged", merged=True)
    monkeypatch.undo()

    shards = sorted(p.name for p in folder.glob("*.safetensors"))
    assert len(shards) >= 4 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert f"{len(shards)} shards" in capsys.readouterr().out
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    assert all(p.stat().st_size <= 40_000 + 2_000 for p in folder.glob("*.safetensors"))  # one tensor may pass it
    plain = AutoModelForCausalLM.from_pretrained(folder)
    for key, tensor in plain.state_dict().items():  # peft's merge_and_unload, bit for bit
        assert torch.equal(tensor, reference[key]), key


def test_a_merged_export_loads_in_its_stored_dtype_on_the_best_device(tmp_path, bf16_run, monkeypatch):
    """Issue 28.5: a bf16 export loaded in fp32 on the CPU is 30 GB for 7B. It loads in bf16, onto the GPU when
    there is one (no GPU here: torch.cuda.is_available is answered True and transformers' from_pretrained is
    intercepted to see where the weights were asked to go, then loads them on the CPU)."""
    import transformers

    from utils.export import load_exported

    folder = export_result(bf16_run, tmp_path / "merged", merged=True)
    adapter = export_result(bf16_run, tmp_path / "adapter")
    loaded = load_exported(folder)
    assert next(loaded.model.parameters()).dtype == torch.bfloat16  # computes in bf16 on the CPU too
    assert next(load_exported(adapter).model.get_base_model().parameters()).dtype == torch.bfloat16
    assert loaded.generate("The ", max_new_tokens=5, seed=0) == load_exported(folder).generate("The ", 5, seed=0)

    asked = []

    class Asked(Exception):
        pass

    def record(cls, *args, **kwargs):  # where the weights would go; loading them there needs the GPU
        asked.append((kwargs.get("dtype"), kwargs.get("device_map")))
        raise Asked

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(transformers.PreTrainedModel, "from_pretrained", classmethod(record))
    for export in (folder, adapter):
        with pytest.raises(Asked):
            load_exported(export)
    assert asked == [("auto", {"": "cuda"})] * 2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu_the_merge_adds_there_and_the_export_loads_and_generates_there(tmp_path, bf16_run):
    """The run's model on the GPU (as training leaves it): the updates are added there, the export is the CPU
    merge's (bf16 rounding of the same fp32 sums), and load_exported puts it back on the GPU in bf16."""
    from utils.export import load_exported
    from utils.models.merge import save_merged

    cpu = tmp_path / "cpu"
    cpu.mkdir()
    save_merged(bf16_run.model, bf16_run.config.pretrained_model, cpu)
    gpu = tmp_path / "gpu"
    gpu.mkdir()
    on_gpu = copy.deepcopy(bf16_run.model).cuda()
    report = save_merged(on_gpu, bf16_run.config.pretrained_model, gpu)
    assert report.device.type == "cuda" and report.dtype == torch.bfloat16
    a, b = _tensors(cpu), _tensors(gpu)
    assert set(a) == set(b)
    for key in a:  # the same sums; a GPU matmul may round B @ A's last bit differently
        assert torch.allclose(a[key].float(), b[key].float(), rtol=1e-2, atol=1e-3), key

    folder = export_result(bf16_run, tmp_path / "merged", merged=True)
    loaded = load_exported(folder)
    parameter = next(loaded.model.parameters())
    assert parameter.device.type == "cuda" and parameter.dtype == torch.bfloat16
    assert loaded.generate("The ", max_new_tokens=8, seed=0) == loaded.generate("The ", max_new_tokens=8, seed=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu_the_onnx_export_allocates_nothing_there(tmp_path, bf16_folder):
    """Issue 28.9 for real: the fp32 copy for ONNX is made on the CPU, so the GPU's peak stays the model."""
    pytest.importorskip("onnxruntime")
    from tests.test_inference import pretrained_predictor
    from transformers import AutoModelForCausalLM

    from utils.onnx_export import export_onnx

    model = AutoModelForCausalLM.from_pretrained(bf16_folder, dtype=torch.bfloat16).cuda()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    export_onnx(pretrained_predictor(bf16_folder, model), tmp_path)
    assert torch.cuda.max_memory_allocated() == before
