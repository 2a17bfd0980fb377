"""The GPU path, run on the CPU: train() with a T4 or an A100 injected places the model where training runs before
anything runs it, every forward outside the Trainer works on a 16-bit base, and a QLoRA base is quantised on the
process's own GPU with the heads left unquantised.

What cannot run here is intercepted, and only that: a CPU-only torch cannot put a tensor on a GPU, so
`cuda_moves` records each move to a CUDA device and keeps the tensor on the CPU. The same paths run for real on a
GPU in tests/test_gpu.py.
"""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from torch import nn

from tests.test_adapters import TINY_RUN, _config, llama_folder  # noqa: F401  (a module-scoped fixture used below)
from tests.test_pretrained import distilbert_folder, _reviews_csv  # noqa: F401
from utils.env import DeviceInfo
from utils.precision import resolve_precision

T4 = DeviceInfo("cuda", "Tesla T4", (7, 5), 15 << 30)
A100 = DeviceInfo("cuda", "NVIDIA A100-SXM4-40GB", (8, 0), 40 << 30)
needs_peft = pytest.mark.skipif(importlib.util.find_spec("peft") is None, reason="peft is not installed")
needs_bitsandbytes = pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None,
                                        reason="bitsandbytes is not installed: QLoRA's 4-bit base needs it")


def _to_cpu(value, moves: list, what: str):
    if isinstance(value, (str, torch.device)) and torch.device(value).type == "cuda":
        moves.append((what, str(torch.device(value))))
        return torch.device("cpu")
    return value


@pytest.fixture
def cuda_moves(monkeypatch) -> list:
    """Moves to a CUDA device, recorded as (what moved, device) and kept on the CPU (mocked: no GPU here)."""
    moves: list = []
    module_to, tensor_to = nn.Module.to, torch.Tensor.to

    def module(self, *args, **kwargs):
        args = tuple(_to_cpu(a, moves, type(self).__name__) for a in args)
        return module_to(self, *args, **{k: _to_cpu(v, moves, type(self).__name__) for k, v in kwargs.items()})

    def tensor(self, *args, **kwargs):
        args = tuple(_to_cpu(a, moves, "tensor") for a in args)
        return tensor_to(self, *args, **{k: _to_cpu(v, moves, "tensor") for k, v in kwargs.items()})

    monkeypatch.setattr(nn.Module, "to", module)
    monkeypatch.setattr(torch.Tensor, "to", tensor)
    return moves


def test_train_with_a_t4_places_the_model_on_its_gpu_before_the_preflight_checks_it(tmp_path, small_text, cuda_moves,
                                                                                   capsys):
    """Before, the pre-flight built its batch on the model's device (still the CPU) and probed on the decision's
    (CUDA): on a CPU-only torch every check failed with "Torch not compiled with CUDA enabled", reported as the
    user's model failing (ModelInspectionError)."""
    from utils.config import WizardConfig
    from utils.inspection import ModelInspectionError
    from utils.training import train

    config = WizardConfig(dataset_source="file", dataset_path=str(small_text), max_seq_len=32, batch_size=4,
                          max_steps=2, output_dir=str(tmp_path / "run"))
    with pytest.raises(BaseException) as raised:  # past the checks, the first real CUDA call fails on this torch
        train(config, device=T4)
    assert not isinstance(raised.value, ModelInspectionError), raised.value
    out = capsys.readouterr().out
    assert "Inspection: shapes, causality, gradient_flow passed" in out
    assert cuda_moves[0] == ("GPT", "cuda:0")  # the model went to the GPU first, before any batch did


def test_each_process_of_a_multi_gpu_run_places_its_model_on_its_own_gpu(monkeypatch):
    """Lightning's launcher starts the other processes with LOCAL_RANK set; it sets their device only when fit
    starts, so a placement by torch.cuda.current_device() put every copy on GPU 0."""
    from utils.training.distributed import plan_launch

    monkeypatch.setenv("LOCAL_RANK", "1")
    launch = plan_launch(2, "cuda")
    assert launch.local_rank == 1 and not launch.is_zero
    decision = resolve_precision(True, "auto", T4)
    assert decision.torch_device(launch.local_rank) == torch.device("cuda", 1)
    assert resolve_precision(True, "auto", DeviceInfo("cpu", "CPU")).torch_device(1) == torch.device("cpu")


@needs_bitsandbytes
def test_qlora_is_quantised_on_the_process_gpu_with_the_output_layers_left_out(tmp_path):
    from transformers import BitsAndBytesConfig

    from utils.models.adapters import HEADS, load_options

    config = _config(tmp_path, tmp_path, method="qlora")
    options = load_options(config, resolve_precision(True, "auto", T4), torch.device("cuda", 1))
    assert options["device_map"] == {"": 1} and options["dtype"] is torch.float16
    quantisation = options["quantization_config"]
    assert isinstance(quantisation, BitsAndBytesConfig) and set(HEADS) <= set(quantisation.llm_int8_skip_modules)
    assert load_options(config, resolve_precision(True, "auto", T4))["device_map"] == "cpu"  # no device: the CPU


@needs_peft
def test_the_model_check_runs_after_the_adapters_so_the_frozen_base_gets_no_gradients(tmp_path, llama_folder,
                                                                                       monkeypatch):
    """A backward through the pretrained base before peft froze it allocated a gradient for every base weight:
    host RAM doubled (3B LoRA on a T4: 12.4 GB of Colab's 12.7). The real check runs; the spy records what
    required a gradient when it ran."""
    import utils.models.build as build

    trainable_when_checked = []
    real_check = build.check_model

    def spy(model, *args, **kwargs):
        trainable_when_checked.append(sum(p.numel() for p in model.parameters() if p.requires_grad))
        return real_check(model, *args, **kwargs)

    monkeypatch.setattr(build, "check_model", spy)
    model = build.build_model(_config(tmp_path, llama_folder), vocab_size=320)
    trainable, total = model.get_nb_trainable_parameters()
    assert trainable_when_checked == [trainable] and trainable < total / 10
    assert all(p.grad is None for p in model.parameters())


def _classifier_config(tmp_path, folder, method="lora", **changes):
    from utils.config import WizardConfig

    return WizardConfig(task="classification", model_source="pretrained", pretrained_model=str(folder),
                        finetune_method=method, lora_rank=4, dataset_source="file",
                        dataset_path=_reviews_csv(tmp_path), text_column="review", label_column="sentiment",
                        output_dir=str(tmp_path / "run"), **{**TINY_RUN, "val_split": 0.25, **changes})


def _bf16_lora_classifier(tmp_path, folder):
    """A LoRA classifier built as train() builds it for an A100 (a bf16 base) - on the CPU, where it stays."""
    from utils.data import prepare_data
    from utils.models.build import build_model
    from utils.data.spec import build_data_spec

    config = _classifier_config(tmp_path, folder, precision="bf16-mixed")
    data = prepare_data(build_data_spec(config))
    model = build_model(config, data.tokenizer.vocab_size, data.num_classes, data.pad_id,
                        label_names=data.label_names, decision=resolve_precision(True, "auto", A100),
                        device=torch.device("cpu"))
    return config, data, model


@needs_peft
def test_a_lora_classifier_on_a_bf16_base_predicts_evaluates_and_passes_the_preflight(tmp_path, distilbert_folder):
    """peft's modules_to_save head stays fp32 while the base emits bf16 hidden states: before, every forward the
    kit runs outside autocast (the pre-flight's checks, predict, evaluate) raised a dtype mismatch."""
    from utils.inspection import preflight
    from utils.models.build import build_task
    from utils.models.calling import texts_to_logits

    config, data, model = _bf16_lora_classifier(tmp_path, distilbert_folder)
    head = [p for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n]
    assert head and all(p.dtype == torch.float32 for p in head)
    assert any(p.dtype == torch.bfloat16 for p in model.parameters())
    line = preflight(config, resolve_precision(True, "bf16-mixed", DeviceInfo("cpu", "CPU")), model,
                     build_task(config), data)
    assert line.startswith("Inspection: shapes, padding, gradient_flow passed")
    logits = texts_to_logits(model, data.tokenizer, ["quiet soft slow", "LOUD HARSH"], config.max_seq_len, data.pad_id)
    assert logits.shape == (2, data.num_classes) and torch.isfinite(logits).all()


@needs_peft
def test_a_lora_classifier_trained_under_bf16_autocast_predicts_and_evaluates_in_the_same_session(
        tmp_path, distilbert_folder):
    from utils.training import train

    config, data, model = _bf16_lora_classifier(tmp_path, distilbert_folder)
    result = train(config.replace(max_steps=3), model=model, device=DeviceInfo("cpu", "CPU"))
    assert result.precision == "bf16-mixed" and result.global_step == 3
    probabilities = result.predict_proba(["quiet soft slow", "LOUD HARSH"])
    assert len(probabilities) == 2 and all(abs(sum(p.values()) - 1) < 1e-4 for p in probabilities)
    rows = tmp_path / "heldout.csv"
    rows.write_text("review,sentiment\nquiet soft slow,calm\nLOUD HARSH,loud\n", encoding="utf-8")
    evaluation = result.evaluate(rows)
    assert evaluation.examples == 2 and 0 <= evaluation.accuracy <= 1 and evaluation.loss > 0


@needs_bitsandbytes
def test_qlora_on_a_classifier_with_a_biased_head_leaves_the_head_unquantised_and_trains(tmp_path, distilbert_folder,
                                                                                        capsys):
    import bitsandbytes as bnb

    from utils.training import train

    config = _classifier_config(tmp_path, distilbert_folder, method="qlora", max_steps=3)
    result = train(config, device=DeviceInfo("cpu", "CPU"))
    assert result.global_step == 3
    quantised = {n for n, m in result.model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    assert quantised and not any("classifier" in n for n in quantised)
    # "Model: ... parameters" counts what the model defines, not the 4-bit weights' packed storage: as many as the
    # same model with LoRA on an unquantised base
    from utils.data import prepare_data
    from utils.models.build import build_model
    from utils.data.spec import build_data_spec

    lora = config.replace(finetune_method="lora")
    data = prepare_data(build_data_spec(lora))
    unquantised = build_model(lora, data.tokenizer.vocab_size, data.num_classes, data.pad_id, data.label_names)
    count = sum(p.numel() for p in unquantised.parameters())
    out = capsys.readouterr().out
    assert f"Model: PeftModelForSequenceClassification, {count / 1e6:.2f}M parameters" in out
    assert f"of {count:,} parameters" in out  # the Trainable: line counts the same model
    assert json.loads((tmp_path / "run" / "config.json").read_text())["finetune_method"] == "qlora"


@needs_peft
def test_a_lora_run_folder_loads_its_base_in_the_dtype_it_is_stored_in(tmp_path, llama_folder):
    """load_run (generate, predict, export of a run folder) built a LoRA run's base in fp32: 30 GB of host RAM for
    a 7B model stored in bf16. It loads as stored, on the GPU when there is one (here the CPU)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from utils.loading import load_run
    from utils.training import train

    stored = tmp_path / "bf16-base"
    AutoModelForCausalLM.from_pretrained(llama_folder).to(torch.bfloat16).save_pretrained(stored)
    AutoTokenizer.from_pretrained(llama_folder).save_pretrained(stored)
    result = train(_config(tmp_path, stored, max_steps=2), device=DeviceInfo("cpu", "CPU"))
    run = load_run(result.output_dir, checkpoint="last")
    named = dict(run.model.named_parameters())
    assert all(p.dtype == torch.bfloat16 for n, p in named.items() if "lora_" not in n)
    assert all(p.dtype == torch.float32 for n, p in named.items() if "lora_" in n)  # the trained adapters, as saved
    saved = torch.load(result.last_checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    assert all(torch.equal(named[k[len("model."):]], v) for k, v in saved.items())
    assert {p.device.type for p in named.values()} == {"cpu"}
