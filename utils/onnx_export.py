"""Deploy outside Python: the model as model.onnx, checked against PyTorch with onnxruntime.

    python -m utils.training export runs/default --onnx      # export/ gains model.onnx

Inputs are `input_ids` (batch, sequence) int64 and, for a classifier, `attention_mask` (batch,
sequence) bool, True on real tokens; the output is `logits`: (batch, sequence, vocab) for a language
model, (batch, classes) for a classifier. Batch and sequence are dynamic axes (the sequence up to
max_seq_len). The check runs a batch of real token ids through both and prints the largest
absolute difference of the logits and the time each takes. onnx and onnxruntime are optional
packages (requirements-test.txt installs them).
"""

from __future__ import annotations

import copy
import os
import re
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from utils.errors import KitError
from utils.models.calling import encode_for_inference, model_logits

ONNX_FILENAME = "model.onnx"
TOLERANCE = 1e-4  # largest absolute difference of fp32 logits accepted between onnxruntime and PyTorch
OPSET = 17
TIMED_RUNS = 10


class OnnxExportError(KitError, RuntimeError):
    """The model cannot be exported or does not match after export; the message names the operator or the gap."""


@dataclass
class OnnxCheck:
    path: Path
    max_abs_diff: float
    batch_shape: tuple  # (batch, sequence) of the checked batch
    onnx_ms: float  # per forward pass of that batch
    torch_ms: float

    def describe(self) -> str:
        b, t = self.batch_shape
        return (f"ONNX: {self.path}; on a batch of {b} x {t} tokens onnxruntime matches PyTorch within "
                f"{self.max_abs_diff:.2e} (tolerance {TOLERANCE:g}), {self.onnx_ms:.2f} ms against "
                f"{self.torch_ms:.2f} ms per forward pass on the CPU")


class _Logits(nn.Module):
    """The kit's call of the model (utils.models.calling.model_logits) as a graph with named tensor inputs."""

    def __init__(self, model: nn.Module, with_mask: bool):
        super().__init__()
        self.model, self.with_mask = model, with_mask

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return model_logits(self.model, input_ids, attention_mask if self.with_mask else None)


def require_onnx():
    try:
        import onnx  # noqa: F401
        import onnxruntime
    except ImportError as e:
        raise OnnxExportError(f"ONNX export needs the optional packages onnx and onnxruntime ({e.name} is missing): "
                              "pip install onnx onnxruntime") from None
    return onnxruntime


def export_onnx(predictor, folder: str | Path) -> OnnxCheck:
    """Write folder/model.onnx from a Predictor (a run, an export, a TrainingResult) and check it."""
    ort = require_onnx()
    classify = predictor.config.task == "classification"
    graph = _Logits(cpu_fp32_copy(predictor.model), classify).eval()  # fp32 on the CPU: what the check compares
    inputs = sample_batch(predictor, classify)
    names = ["input_ids", "attention_mask"][:len(inputs)]
    axes = {name: {0: "batch", 1: "sequence"} for name in names}
    axes["logits"] = {0: "batch", 1: "sequence"} if not classify else {0: "batch"}
    path = Path(folder) / ONNX_FILENAME
    with warnings.catch_warnings(), _captured_output():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes are not the user's to act on
        try:
            torch.onnx.export(graph, inputs, str(path), input_names=names, output_names=["logits"],
                              dynamic_axes=axes, opset_version=OPSET, dynamo=False)
        except (torch.onnx.errors.OnnxExporterError, RuntimeError, AssertionError) as e:
            # the exporter prints the whole TorchScript graph (megabytes) before some of these: kept off the screen
            path.unlink(missing_ok=True)
            raise OnnxExportError(_export_failure(e)) from None
    return check_onnx(ort, path, graph, inputs)


def cpu_fp32_copy(model: nn.Module) -> nn.Module:
    """A copy of model in fp32 on the CPU, each tensor moved to the CPU first and widened there: nothing is copied
    on the GPU, where a model that trained may have no room for a second copy (let alone an fp32 one). A
    transformers model computes its attention in plain operations in the copy ("eager"): the exporter cannot
    convert the fused kernel's grouped-query form (Llama 3, Qwen2, Mistral, SmolLM2 share key/value heads)."""
    memo = {}
    for tensor in [*model.parameters(), *model.buffers()]:
        moved = tensor.detach().to("cpu")
        moved = moved.float() if moved.is_floating_point() else moved
        memo[id(tensor)] = nn.Parameter(moved, requires_grad=False) if isinstance(tensor, nn.Parameter) else moved
    copied = copy.deepcopy(model, memo)
    base = copied.get_base_model() if hasattr(copied, "get_base_model") else copied
    if hasattr(base, "set_attn_implementation"):
        base.set_attn_implementation("eager")
    return copied.eval()


@contextmanager
def _captured_output():
    """Everything this process prints while inside, Python's (sys.stdout, sys.stderr, which a notebook replaces)
    and the C++ exporter's (file descriptors 1 and 2), into a temporary file that is then dropped."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile("w+") as sink, redirect_stdout(sink), redirect_stderr(sink):
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def sample_batch(predictor, classify: bool) -> tuple[torch.Tensor, ...]:
    """Two rows of real token ids (the tokenizer's own encoding of a text, then ids across its vocabulary),
    max_seq_len or 64 long, whichever is shorter; a classifier's second row is half padding."""
    T = min(predictor.config.max_seq_len, 64)
    vocab = predictor.tokenizer.vocab_size
    text = encode_for_inference(predictor.tokenizer, "The quick brown fox jumps over the lazy dog. " * 8)
    first = (text * (T // max(len(text), 1) + 1))[:T] if text else [0] * T
    second = torch.randint(0, vocab, (T,), generator=torch.Generator().manual_seed(0)).tolist()
    ids = torch.tensor([first, second], dtype=torch.long)  # (2, T)
    if not classify:
        return (ids,)
    mask = torch.ones(2, T, dtype=torch.bool)  # (2, T)
    mask[1, T // 2:] = False
    ids[1, T // 2:] = predictor.pad_id
    return ids, mask


def check_onnx(ort, path: Path, graph: nn.Module, inputs: tuple[torch.Tensor, ...]) -> OnnxCheck:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs)}
    with torch.no_grad():
        expected = graph(*inputs)
    got = torch.from_numpy(session.run(None, feed)[0])
    diff = float((got - expected).abs().max())
    if not diff <= TOLERANCE:  # also catches nan
        raise OnnxExportError(f"{path} was written but its logits differ from PyTorch's by up to {diff:.3g} "
                              f"(tolerance {TOLERANCE:g}); do not deploy it. An operator exported differently is "
                              "the likely cause: try another opset or report the model")
    onnx_ms = _time(lambda: session.run(None, feed))
    with torch.no_grad():
        torch_ms = _time(lambda: graph(*inputs))
    return OnnxCheck(path, diff, tuple(inputs[0].shape), onnx_ms, torch_ms)


def _time(call) -> float:
    call()  # warm-up: first-run allocations
    start = time.perf_counter()
    for _ in range(TIMED_RUNS):
        call()
    return (time.perf_counter() - start) / TIMED_RUNS * 1000


def _export_failure(error: Exception) -> str:
    text = str(error).strip()
    operator = re.search(r"operator '?([\w:.]+)'?", text)
    first = text.splitlines()[0] if text else type(error).__name__
    if operator:
        return (f"ONNX export failed at the operator {operator.group(1)} (opset {OPSET}): {first}. Keep that "
                "operation out of forward(), or replace it with one ONNX supports")
    return f"ONNX export failed ({type(error).__name__}: {first})"
