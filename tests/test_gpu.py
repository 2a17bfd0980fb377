"""Checks that need a real CUDA GPU. Skipped where there is none (CI and the development machines
have none); run `python -m pytest -m gpu` on a GPU machine (Colab, or a lent one)."""

import csv
import gc
import importlib.util
import json
import math
import subprocess
import sys

import pytest
import pytorch_lightning as pl
import torch

from tests.conftest import REPO_ROOT, corpus_start
from tests.test_adapters import llama_folder  # noqa: F401  (module-scoped fixtures: tiny config-built models)
from tests.test_pretrained import distilbert_folder  # noqa: F401
from utils.env import detect_device
from utils.export import export_result
from utils.training import train
from utils.training.amp_utils import loss_scale
from utils.precision import resolve_precision

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _expected_auto_precision() -> str:
    major = torch.cuda.get_device_capability()[0]
    return "bf16-mixed" if major >= 8 else "16-mixed" if major == 7 else "32-true"


def test_detected_device_drives_the_auto_precision():
    device = detect_device()
    assert device.kind == "cuda" and device.capability == torch.cuda.get_device_capability()
    assert device.name == torch.cuda.get_device_name() and device.total_memory_bytes > 0
    decision = resolve_precision(True, "auto")
    assert decision.precision == _expected_auto_precision()
    assert device.name in decision.reason


def test_mixed_precision_training_runs_on_the_gpu_and_learns(tiny_config):
    """The default run: a fused AdamW with clipping on, which Lightning's own clipping refuses under mixed
    precision (the module unscales and clips itself, see utils.training.module.clip_gradients)."""
    probe = StepProbe(head=False)
    result = train(tiny_config.replace(max_steps=30, log_every_n_steps=1), extra_callbacks=[probe])
    assert result.precision == _expected_auto_precision()
    assert probe.fused is True and tiny_config.gradient_clip_val > 0
    losses = [loss for _, loss in result.train_history]
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.3
    assert next(result.model.parameters()).device.type == "cuda"  # moved back after Lightning's teardown
    with open(result.output_dir / "logs" / "version_0" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    scales = [float(r["amp/loss_scale"]) for r in rows if r.get("amp/loss_scale")]
    if result.precision == "16-mixed":  # a live GradScaler on a T4/V100
        assert scales and scales[0] == 65536.0
    else:  # bf16 and fp32 train without loss scaling
        assert scales == []


def _metrics(output_dir) -> tuple[list[str], list[dict]]:
    with open(output_dir / "logs" / "version_0" / "metrics.csv", newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames), [row for row in reader if row.get("train/loss")]


class StepProbe(pl.Callback):
    """Observes a run without changing it: the scaler Lightning trains with, the dtype the model's
    head computes in under autocast, and the parameters after every optimizer step."""

    def __init__(self, head: bool = True):
        self.head = head  # watch the dtype of model.head's output (the tiny LM of conftest has one)
        self.fused = None  # the AdamW kernel Lightning steps with
        self.scale_at_start = "not started"
        self.head_dtypes = set()
        self.params_after_step = []  # one list of CPU copies per optimizer step

    def on_train_start(self, trainer, pl_module):
        self.scale_at_start = loss_scale(trainer)  # None: no GradScaler
        self.fused = trainer.optimizers[0].defaults.get("fused")
        if self.head:
            pl_module.model.head.register_forward_hook(lambda mod, args, out: self.head_dtypes.add(out.dtype))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.params_after_step.append([p.detach().cpu().clone() for p in pl_module.parameters()])


def _same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


def test_fp16_grad_scaler_on_cuda_skips_an_overflowed_step_and_halves_the_scale(tiny_config, tiny_lm):
    probe = StepProbe()
    config = tiny_config.replace(precision="16-mixed", max_steps=5)  # forced: any CUDA GPU runs fp16
    result = train(config, tiny_lm(inf_grad_calls={3}), extra_callbacks=[probe])
    assert result.precision == "16-mixed" and next(result.model.parameters()).device.type == "cuda"
    assert probe.fused is True  # the fused kernel skips the overflowed step itself, told by the GradScaler
    assert probe.scale_at_start == 65536.0 and probe.head_dtypes == {torch.float16}
    steps = probe.params_after_step
    assert len(steps) == 5
    assert not _same(steps[0], steps[1]) and not _same(steps[2], steps[3])  # healthy steps move the weights
    assert _same(steps[1], steps[2])  # step 3 overflowed: the GradScaler skipped optimizer.step()
    columns, rows = _metrics(result.output_dir)
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5]
    assert [float(r["amp/loss_scale"]) for r in rows] == [65536.0, 65536.0, 32768.0, 32768.0, 32768.0]
    assert [float(r["amp/skipped_steps"]) for r in rows] == [0, 0, 1, 1, 1]
    assert all(math.isfinite(float(r["train/loss"])) for r in rows)


@pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.get_device_capability()[0] < 8,
                    reason="bf16 needs an Ampere or newer GPU (compute capability >= 8.0)")
def test_bf16_on_ampere_trains_without_a_grad_scaler(tiny_config, tiny_lm):
    probe = StepProbe()
    result = train(tiny_config.replace(precision="bf16-mixed"), tiny_lm(), extra_callbacks=[probe])
    assert result.precision == "bf16-mixed" and next(result.model.parameters()).device.type == "cuda"
    assert probe.scale_at_start is None  # no GradScaler
    assert probe.head_dtypes == {torch.bfloat16}
    columns, rows = _metrics(result.output_dir)
    assert "amp/loss_scale" not in columns and "amp/skipped_steps" not in columns
    assert [int(r["step"]) for r in rows] == list(range(1, tiny_config.max_steps + 1))
    assert all(math.isfinite(float(r["train/loss"])) for r in rows)
    assert all(not _same(a, b) for a, b in zip(probe.params_after_step, probe.params_after_step[1:]))


def test_gpu_bench_smoke_run_measures_both_sides_on_this_gpu(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "bench/gpu.py", "--smoke", "--json", str(out)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    name = torch.cuda.get_device_name()
    assert f"device: {name}" in proc.stdout and "kit/loop" in proc.stdout
    report = json.loads(out.read_text())
    expected = ["32-true"] + ([] if _expected_auto_precision() == "32-true" else [_expected_auto_precision()])
    for template in ("gpt", "classifier"):
        rows = [r for r in report["rows"] if r["template"] == template]
        assert [r["precision"] for r in rows] == expected
        for r in rows:
            assert r["device"] == name and r["size"] == "tiny"
            assert r["tokens_per_sec_kit"] > 0 and r["tokens_per_sec_loop"] > 0
            assert r["peak_bytes_kit"] > 0 and r["peak_bytes_loop"] > 0
            assert r["mfu_kit"] is None or 0 < r["mfu_kit"] < 1
    assert len(report["speedups"]) == 2 * (len(expected) - 1)


def test_a_batch_too_large_for_the_gpu_is_answered_with_the_largest_that_fits(tiny_config, tmp_path):
    """The pre-flight estimate on the real GPU: a batch that would run out of memory is reported with the
    largest that fits and the accumulation that keeps the effective batch; train() refuses the batch with
    the same advice before allocating it, and training at the suggested batch runs."""
    from utils.training.estimate import BatchTooLargeError, estimate_config

    config = tiny_config.replace(dataset_source="embedded", dataset_path="", model_size="base", max_seq_len=512,
                                 batch_size=4096, max_steps=2)  # the embedded corpus: ~900 windows of 512
    decision = resolve_precision(True, "auto", detect_device())
    estimate = estimate_config(config, decision)
    assert not estimate.fits_memory and estimate.suggested_batch_size is not None
    suggested, accumulation = estimate.suggested_batch_size, estimate.suggested_accumulation
    assert suggested * accumulation == 4096 and suggested < 4096
    assert f"batch_size={suggested} with gradient_accumulation_steps={accumulation}" in estimate.describe()
    # Six copies of the corpus hold more than 4096 windows of 512, so the batch is refused for the memory alone.
    corpus = (REPO_ROOT / "utils/data/embedded/python_reference.txt").read_text(encoding="utf-8")
    (tmp_path / "corpus-x6.txt").write_text(corpus * 6, encoding="utf-8")
    with pytest.raises(BatchTooLargeError, match=f"gradient_accumulation_steps={accumulation} keeps the effective"):
        train(config.replace(dataset_source="file", dataset_path=str(tmp_path / "corpus-x6.txt"),
                             output_dir=str(tmp_path / "refused")))
    assert not (tmp_path / "refused" / "checkpoints").exists()
    probe = PeakProbe()
    result = train(config.replace(batch_size=suggested, gradient_accumulation_steps=accumulation, max_steps=1),
                   extra_callbacks=[probe])
    assert result.global_step == 1
    # The largest batch that fits uses the GPU: its peak is near what the memory model said for it, neither far
    # above (an OOM waiting for a longer sequence) nor far below (a batch much smaller than the GPU holds).
    predicted = result.estimate.memory.bytes_at(suggested)
    assert 0.5 * predicted <= probe.peak <= 1.5 * predicted, (probe.peak, predicted)


FSDP_RESULT_CHECK = """
import sys, torch
from torch.distributed.fsdp import FullyShardedDataParallel
from utils.config import WizardConfig
from utils.training import train

config = WizardConfig.load(sys.argv[1])
result = train(config)
model = result.model
assert not any(isinstance(m, FullyShardedDataParallel) for m in model.modules()), "result.model is still wrapped"
assert next(model.parameters()).device.type == "cuda", next(model.parameters()).device
ckpt = torch.load(result.last_checkpoint, map_location="cpu", weights_only=False)
saved = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
mine = {k: v.cpu() for k, v in model.state_dict().items()}
assert set(saved) == set(mine) and all(torch.equal(saved[k], mine[k]) for k in mine), "weights differ"
print("gathered", sum(v.numel() for v in mine.values()))
"""


def test_fsdp_gives_back_the_whole_trained_model_on_the_gpu(tiny_config, tmp_path):
    """In its own process: Lightning's FSDP starts a process group that outlives the test."""
    config_path = tmp_path / "config.json"
    tiny_config.replace(strategy="fsdp", devices=1, max_steps=3).save(config_path)
    proc = subprocess.run([sys.executable, "-c", FSDP_RESULT_CHECK, str(config_path)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "gathered" in proc.stdout


@pytest.fixture(scope="module")
def llama_medium_folder(tmp_path_factory):
    """A config-built LlamaForCausalLM (tests.test_adapters' tokenizer), sized so its weights and activations are
    hundreds of MB: a tiny one's few KB would be lost in the fixed costs the memory model does not count (the
    cuBLAS workspace, tens of MB on a recent GPU), and the comparison below would test those instead."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.test_adapters import _tokenizer

    folder = tmp_path_factory.mktemp("llama-medium")
    tokenizer = _tokenizer()
    torch.manual_seed(0)
    # ~45M parameters: 4 blocks of hidden 1024 with grouped-query attention and a SwiGLU of 2816.
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=1024, intermediate_size=2816,
                                 num_hidden_layers=4, num_attention_heads=16, num_key_value_heads=4,
                                 max_position_embeddings=512, eos_token_id=0, bos_token_id=0,
                                 pad_token_id=0)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


class PeakProbe(pl.Callback):
    """The CUDA allocator's peak over the training steps only: reset when training starts, so the pre-flight
    measurement and estimate (which run on the same GPU first) are not counted."""

    def __init__(self):
        self.peak = None

    def on_train_start(self, trainer, pl_module):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()

    def on_train_end(self, trainer, pl_module):
        torch.cuda.synchronize()
        self.peak = torch.cuda.max_memory_allocated()


_needs_peft = pytest.mark.skipif(importlib.util.find_spec("peft") is None,
                                 reason="peft is not installed (requirements-test.txt): LoRA is built with it")
_needs_bitsandbytes = pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None,
                                         reason="bitsandbytes is not installed: QLoRA's 4-bit base needs it")


@_needs_peft
@pytest.mark.parametrize("method", ["lora", pytest.param("qlora", marks=_needs_bitsandbytes)])
def test_adapter_training_peak_memory_is_within_2x_of_the_memory_model(method, llama_medium_folder, tmp_path):
    """The memory model train() checks the batch against (fixed_bytes + per_sequence_bytes * batch: a 16-bit or
    4-bit frozen base as stored, 16 B per trained adapter parameter, and what autograd saves for backward) is
    compared with torch.cuda.max_memory_allocated over a few real LoRA / QLoRA steps at that batch.

    Factor 2 either way, because the model counts what autograd keeps, not every byte the allocator hands out:
    above it, backward's transient activation gradients, the cuBLAS workspace, the 4-bit layers' dequantised
    weight (briefly, per layer) and the allocator's 512-byte rounding; below it, saved tensors that share a
    storage with one counted once, or freed early in backward. Beyond a factor 2 the refusal of a batch (or the
    advice on the batch that fits) would be wrong by more than a doubling or halving of batch_size: a real error.
    """
    from utils.config import WizardConfig

    config = WizardConfig(model_source="pretrained", pretrained_model=str(llama_medium_folder), finetune_method=method,
                          lora_rank=8, dataset_source="file",
                          dataset_path=str(corpus_start(tmp_path / "data", 120_000)),  # ~300 windows of 256
                          output_dir=str(tmp_path / "run"), max_seq_len=256, batch_size=8, max_epochs=1, max_steps=4,
                          learning_rate=1e-3, warmup_ratio=0.0, log_every_n_steps=1, val_split=0.05,
                          checkpoint_every_minutes=0, weight_decay=0.0)
    gc.collect()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()  # what earlier tests left on the GPU; not this run's
    probe = PeakProbe()
    result = train(config, extra_callbacks=[probe])
    assert result.global_step == 4 and all(math.isfinite(loss) for _, loss in result.train_history)
    assert next(p for p in result.model.parameters() if p.requires_grad).device.type == "cuda"
    if method == "qlora":
        import bitsandbytes as bnb

        assert any(isinstance(m, bnb.nn.Linear4bit) for m in result.model.modules())
    memory = result.estimate.memory  # the MemoryModel train() refused or accepted the batch with
    assert memory.shards == 1
    predicted = memory.bytes_at(config.batch_size)
    measured = probe.peak - before
    assert predicted > 64 * 2**20, predicted  # the model's own bytes dominate the fixed costs (see the fixture)
    assert 0.5 * predicted <= measured <= 2 * predicted, (
        f"{method}: measured peak {measured / 2**20:.1f} MiB, memory model {predicted / 2**20:.1f} MiB "
        f"(fixed {memory.fixed_bytes / 2**20:.1f} MiB + {memory.per_sequence_bytes / 2**20:.2f} MiB x "
        f"{config.batch_size})")


# ------------------------------------------------------------------ the fine-tuning paths, in each mixed precision
# Explicit precisions, so that the first GPU the project is lent runs the T4's fp16 + GradScaler path too (any CUDA
# GPU runs fp16 autocast); bf16 needs Ampere or newer.
_needs_ampere = pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.get_device_capability()[0] < 8,
                                   reason="bf16 needs an Ampere or newer GPU (compute capability >= 8.0)")
PRECISIONS = ["16-mixed", pytest.param("bf16-mixed", marks=_needs_ampere)]


def _tiny_llama_config(tmp_path, folder, precision, method="lora", **changes):
    from tests.test_adapters import _config

    return _config(tmp_path, folder, method, precision=precision, **changes)


@_needs_peft
@pytest.mark.parametrize("precision", PRECISIONS)
def test_lora_on_a_16bit_base_passes_the_preflight_trains_resumes_exactly_and_exports(precision, llama_folder,
                                                                                     tmp_path, capsys):
    from tests.test_pretrained import StopDuringStep
    from utils.training.callbacks.last_checkpoint import TrainingStopped

    config = _tiny_llama_config(tmp_path, llama_folder, precision, max_steps=6, lora_dropout=0.1)
    with pytest.raises(TrainingStopped, match=r"at step 3"):
        train(config, extra_callbacks=[StopDuringStep(3)])
    out = capsys.readouterr().out
    assert "Inspection: shapes, causality, gradient_flow passed" in out  # the default pre-flight, on the GPU
    dtype = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}[precision]
    resumed = train(config)
    base = [p for p in resumed.model.parameters() if not p.requires_grad]
    assert base and all(p.dtype == dtype and p.device.type == "cuda" for p in base)
    assert all(p.dtype == torch.float32 for p in resumed.model.parameters() if p.requires_grad)
    assert (resumed.global_step, resumed.steps_run) == (6, 3)
    straight = train(config.replace(output_dir=str(tmp_path / "straight")))
    assert resumed.train_history == straight.train_history
    assert all(math.isfinite(loss) for _, loss in straight.train_history)
    assert len(resumed.chat("What is a list?", max_new_tokens=4, seed=0)) > 0
    merged = export_result(resumed, tmp_path / "merged", merged=True)
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(merged)
    assert not any("lora" in n for n, _ in plain.named_parameters())


@_needs_peft
@pytest.mark.parametrize("precision", PRECISIONS)
def test_a_lora_classifier_trains_predicts_and_evaluates_on_the_gpu(precision, distilbert_folder, tmp_path):
    """The fp32 head (peft's modules_to_save) on a 16-bit base: predict and evaluate run outside autocast."""
    from tests.test_gpu_path import _classifier_config

    config = _classifier_config(tmp_path, distilbert_folder, precision=precision, max_steps=4)
    result = train(config)
    assert result.global_step == 4 and result.precision == precision
    probabilities = result.predict_proba(["quiet soft slow", "LOUD HARSH"])
    assert len(probabilities) == 2 and all(abs(sum(p.values()) - 1) < 1e-3 for p in probabilities)
    rows = tmp_path / "heldout.csv"
    rows.write_text("review,sentiment\nquiet soft slow,calm\nLOUD HARSH,loud\n", encoding="utf-8")
    evaluation = result.evaluate(rows)
    assert evaluation.examples == 2 and math.isfinite(evaluation.loss)


@_needs_peft
@_needs_bitsandbytes
@pytest.mark.parametrize("precision", PRECISIONS)
def test_qlora_with_gradient_checkpointing_trains_on_the_gpu(precision, llama_folder, tmp_path):
    import bitsandbytes as bnb

    config = _tiny_llama_config(tmp_path, llama_folder, precision, "qlora", gradient_checkpointing="true",
                                max_steps=4)
    result = train(config)
    layers = [m for m in result.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and all(m.weight.device.type == "cuda" for m in layers)
    assert any(getattr(m, "gradient_checkpointing", False) for m in result.model.modules())
    losses = [loss for _, loss in result.train_history]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
