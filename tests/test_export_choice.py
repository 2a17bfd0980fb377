"""The notebook Export cell's choice (utils.export_choice): refusals come back as one line with nothing written. The
formats' exports themselves run in tests/test_train_notebook.py (safetensors and GGUF, through the cell) and in
the export, ONNX and GGUF tests."""

from __future__ import annotations

import importlib.util
import types

import pytest

from tests.test_adapters import llama_folder  # noqa: F401  (a fixture)
from utils.config import WizardConfig
from utils.export_choice import FORMATS, export_as


def _run(tmp_path, **settings):
    """A run's shape for the choice: its config, and an export that must not be reached."""
    def export(**_):
        raise AssertionError("a refused choice must not export")

    return types.SimpleNamespace(config=WizardConfig(output_dir=str(tmp_path / "run"), **settings), export=export)


def test_adapter_only_for_a_run_without_adapters_is_one_line_naming_the_choice_to_make(tmp_path):
    outcome = export_as(_run(tmp_path), "adapter only")
    assert outcome.describe() == ("Not exported: EXPORT_FORMAT='adapter only' writes a LoRA/QLoRA run's adapter; this "
                                  "run trained all its weights: choose 'safetensors'")
    assert outcome.folder is None and not (tmp_path / "run").exists()


def test_an_unknown_format_names_the_formats(tmp_path):
    outcome = export_as(_run(tmp_path), "pickle")
    assert outcome.describe() == f"Not exported: EXPORT_FORMAT='pickle'; choose one of {', '.join(map(repr, FORMATS))}"


def test_a_k_quant_is_refused_with_the_llama_quantize_command_before_anything_loads(tmp_path):
    outcome = export_as(_run(tmp_path, model_source="pretrained", pretrained_model=str(tmp_path / "none")), "GGUF",
                        "q4_k_m")
    assert outcome.describe().startswith("Not exported: q4_k_m is a k-quant") and "\n" not in outcome.describe()
    assert "llama-quantize model-f16.gguf model-Q4_K_M.gguf Q4_K_M" in outcome.describe()
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(importlib.util.find_spec("peft") is None, reason="peft is not installed (requirements-test.txt)")
def test_adapter_only_writes_the_lora_adapter_and_safetensors_the_merged_model(tmp_path, llama_folder):
    from tests.test_adapters import CPU, _config
    from utils.training import train

    result = train(_config(tmp_path, llama_folder, max_steps=2), device=CPU)
    adapter = export_as(result, "adapter only")
    assert adapter.folder == tmp_path / "run" / "export" and (adapter.folder / "adapter_config.json").is_file()
    assert not (adapter.folder / "model.safetensors").exists()
    assert adapter.describe().startswith(f"Exported to {adapter.folder}: ")
    assert "adapter_model.safetensors, " in adapter.describe()
    merged = export_as(result, "safetensors")
    assert (merged.folder / "model.safetensors").is_file() and (merged.folder / "adapter").is_dir()
