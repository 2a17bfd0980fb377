"""`export --onnx` of pretrained models (utils.onnx_export): grouped-query attention exports and matches PyTorch,
the exporter's own output stays off the screen, and the fp32 copy for the check is made on the CPU.

Nothing is downloaded: the model is the tiny config-built Llama of tests/test_adapters.py (4 query heads sharing
2 key/value heads, as Llama 3, Qwen2, Mistral and SmolLM2 do).
"""

from __future__ import annotations

import os

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tests.test_adapters import llama_folder  # noqa: F401 (a fixture)
from tests.test_inference import pretrained_predictor

NO_ORT = "onnxruntime is not installed (pip install -r requirements-test.txt)"


def test_a_grouped_query_attention_model_exports_matches_and_prints_one_line(tmp_path, llama_folder, capfd):
    """Issue 30.2: the TorchScript exporter cannot convert scaled_dot_product_attention with enable_gqa (an
    AssertionError after ~2,800 lines of graph on the terminal); the copy it exports computes attention eagerly."""
    pytest.importorskip("onnxruntime", reason=NO_ORT)
    from utils.onnx_export import TOLERANCE, export_onnx

    predictor = pretrained_predictor(llama_folder)
    assert predictor.model.config.num_key_value_heads < predictor.model.config.num_attention_heads
    capfd.readouterr()  # transformers' loading bar
    check = export_onnx(predictor, tmp_path)
    out, err = capfd.readouterr()
    assert out == err == ""  # nothing from the exporter; the caller prints check.describe()
    assert check.max_abs_diff <= TOLERANCE and (tmp_path / "model.onnx").is_file()
    assert predictor.model.config._attn_implementation == "sdpa"  # the model itself is left as it was


def test_a_failed_export_says_one_line_and_leaves_no_file(tmp_path, llama_folder, capfd, monkeypatch):
    """The exporter prints the graph before some failures: the user sees the kit's one line only."""
    pytest.importorskip("onnxruntime", reason=NO_ORT)
    from utils import onnx_export
    from utils.onnx_export import OnnxExportError, export_onnx

    def failing(*args, **kwargs):  # stands for the exporter meeting an operator it cannot convert
        print("graph(%input_ids : Long(2, 32)) ... " * 2000)  # Python's print
        os.write(2, b"Torch IR graph at exception: graph(...)\n" * 2000)  # the C++ exporter's log
        raise AssertionError("conversion of scaled_dot_product_attention not implemented if enable_gqa is True")

    monkeypatch.setattr(onnx_export.torch.onnx, "export", failing)
    predictor = pretrained_predictor(llama_folder)
    capfd.readouterr()  # transformers' loading bar
    with pytest.raises(OnnxExportError, match=r"^ONNX export failed \(AssertionError: conversion of "
                                              r"scaled_dot_product_attention not implemented if enable_gqa is True\)$"):
        export_onnx(predictor, tmp_path)
    assert capfd.readouterr() == ("", "") and not (tmp_path / "model.onnx").exists()


class CopiesIn16Bits(TorchDispatchMode):
    """Every operation that allocates a new 16-bit tensor (views such as detach() are not copies), and the device
    each widening of a bf16 tensor to fp32 read from."""

    def __init__(self):
        super().__init__()
        self.copies_16bit, self.widened_from = 0, set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        outs = [t for t in (out if isinstance(out, (tuple, list)) else [out]) if isinstance(t, torch.Tensor)]
        ins = [t for t in args if isinstance(t, torch.Tensor)]
        read = {t.untyped_storage().data_ptr() for t in ins}
        if any(t.dtype == torch.bfloat16 and t.untyped_storage().data_ptr() not in read for t in outs):
            self.copies_16bit += 1
        if ins and ins[0].dtype == torch.bfloat16 and any(t.dtype == torch.float32 for t in outs):
            self.widened_from.add(ins[0].device.type)
        return out


def test_the_fp32_copy_for_onnx_is_made_on_the_cpu_not_beside_the_model(tmp_path, llama_folder, monkeypatch):
    """Issue 28.9: deep-copying the trained model where it is, then widening it to fp32 there, puts a second copy
    (and then a 2x larger one) on a GPU that may have held only the first. Each tensor goes to the CPU first and
    is widened there: no copy of the model in its own 16-bit dtype is ever made (no GPU here; on one, that copy
    would be made on the GPU). Watched up to the exporter's call, which gets the fp32 CPU copy."""
    pytest.importorskip("onnxruntime", reason=NO_ORT)
    from transformers import AutoModelForCausalLM

    from utils import onnx_export

    class Exporting(Exception):
        pass

    given = []

    def exporter(graph, *args, **kwargs):
        given.extend((p.dtype, p.device.type) for p in graph.parameters())
        raise Exporting

    model = AutoModelForCausalLM.from_pretrained(llama_folder, dtype=torch.bfloat16)
    predictor = pretrained_predictor(llama_folder, model)
    monkeypatch.setattr(onnx_export.torch.onnx, "export", exporter)
    with CopiesIn16Bits() as seen, pytest.raises(Exporting):
        onnx_export.export_onnx(predictor, tmp_path)
    assert seen.copies_16bit == 0 and seen.widened_from == {"cpu"}
    assert set(given) == {(torch.float32, "cpu")}
    assert next(model.parameters()).dtype == torch.bfloat16  # the model itself is left as it was
