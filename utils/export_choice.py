"""The notebook's Export cell: one choice among the kit's exports, and the lines it prints.

    print(export_as(result, "GGUF", "q8_0").describe())

"safetensors": the folder utils.export.load_exported reads (a LoRA/QLoRA run: merged into its base, the adapter
beside); "safetensors + ONNX": the same with model.onnx, checked; "adapter only": a LoRA/QLoRA run's adapter in
peft's format; "GGUF": one .gguf file and an Ollama Modelfile for llama.cpp, Ollama and LM Studio
(utils.gguf_export, what `export RUN --gguf` writes). A refusal is one line, as on the command line, so Run all goes
on; nothing is written then.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from utils.errors import KitError

FORMATS = ("safetensors", "safetensors + ONNX", "adapter only", "GGUF")


@dataclass
class ExportOutcome:
    """What the Export cell did: the lines to print, and the folder load_exported reads (None: none written)."""

    lines: list[str]
    folder: Optional[Path] = None

    def describe(self) -> str:
        return "\n".join(self.lines)


def export_as(predictor, export_format: str, gguf_quant: str = "q8_0") -> ExportOutcome:
    """Export a run (a TrainingResult or a loaded run) in one of FORMATS; a KitError becomes one "Not exported" line."""
    try:
        if export_format == "GGUF":
            return _export_gguf(predictor, gguf_quant)
        if export_format not in FORMATS:
            raise KitError(f"EXPORT_FORMAT={export_format!r}; choose one of {', '.join(map(repr, FORMATS))}")
        return _export_folder(predictor, export_format)
    except KitError as e:
        return ExportOutcome([f"Not exported: {e}"])


def _export_gguf(predictor, quant: str) -> ExportOutcome:
    from utils.gguf_export import check_quant, export_gguf

    check = export_gguf(predictor, quant=check_quant(quant))
    return ExportOutcome([check.describe(), check.next_steps()])


def _export_folder(predictor, export_format: str) -> ExportOutcome:
    from utils.export import export_result
    from utils.models.adapters import uses_adapters

    adapters = uses_adapters(predictor.config)
    if export_format == "adapter only" and not adapters:
        raise KitError("EXPORT_FORMAT='adapter only' writes a LoRA/QLoRA run's adapter; this run trained all its "
                       "weights: choose 'safetensors'")
    # LoRA/QLoRA: "safetensors" merges the adapter into its base, a model transformers loads alone (adapter/ beside)
    folder = export_result(predictor, onnx=export_format == "safetensors + ONNX",
                           merged=adapters and export_format != "adapter only")
    names = ", ".join(sorted(p.name for p in folder.iterdir() if p.name[0] != "."))
    return ExportOutcome([f"Exported to {folder}: {names}"], folder)
