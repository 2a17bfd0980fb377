"""A LoRA adapter merged into its base, written shard by shard, without a second copy of the model in memory.

The base's own safetensors files are read one tensor at a time, in the dtype they are stored in (a bf16-native
model stays bf16, an fp16 one fp16); each weight a LoRA layer adapts gets the adapter's update (B @ A x scale)
added on the device the adapters are on (the GPU when training ran there), and the result is written in shards of
at most MERGED_SHARD_BYTES. Host memory holds one shard, never the model: a 7B base (15 GB in 16 bits) merges on
a Colab host with 12.7 GB. A QLoRA adapter is merged into these 16-bit weights, not into the 4-bit copy it
trained on, which could not hold the sum. The folder then loads in transformers alone (from_pretrained).

    report = save_merged(peft_model, config.pretrained_model, folder)
    print(report.describe())   # "Merged: ... the export is a bf16 model ..."
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from utils.errors import KitError

MERGED_SHARD_BYTES = 2 * 2**30  # one shard in host memory at a time; transformers' own default is 5 GB
INDEX_FILENAME = "model.safetensors.index.json"
DTYPE_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


class MergeError(KitError, ValueError):
    """The adapter cannot be merged into the base's stored weights; the message says what to export instead."""


@dataclass
class MergeReport:
    dtype: torch.dtype  # the base's stored dtype, which the export keeps
    device: torch.device  # where the updates were added
    layers: int  # LoRA layers merged
    shards: int  # safetensors files written
    qlora: bool

    def describe(self) -> str:
        dtype = DTYPE_NAMES.get(self.dtype, str(self.dtype))
        into = f"its stored {dtype} weights" + (", not the 4-bit copy it trained on" if self.qlora else "")
        files = "one file" if self.shards == 1 else f"{self.shards} shards"
        return (f"Merged: the adapter added into {self.layers} layers of the base, read from {into}, on "
                f"{self.device.type}, one shard at a time; the export is a {dtype} model (the base's own dtype), "
                f"{files}.")


def save_merged(model: nn.Module, pretrained_model: str, folder: Path) -> MergeReport:
    """Write model (a peft LoRA model) with its adapter merged into the base stored at pretrained_model: weights,
    config.json (and generation_config.json), as transformers' from_pretrained reads them."""
    from peft.tuners.lora import LoraLayer
    from peft.utils import ModulesToSaveWrapper
    from safetensors import safe_open

    base = model.get_base_model()
    adapter = model.active_adapter
    modules = dict(base.named_modules())
    layers = {name: m for name, m in modules.items() if isinstance(m, LoraLayer)}
    wrappers = {name: m for name, m in modules.items() if isinstance(m, ModulesToSaveWrapper)}
    lookup = _Lookup(modules, base.base_model_prefix)
    device = next(p.device for n, p in model.named_parameters() if "lora_" in n)
    writer, merged, stored = ShardWriter(folder, MERGED_SHARD_BYTES), set(), Counter()
    for file in base_weight_files(pretrained_model):
        with safe_open(str(file), "pt", device="cpu") as f:
            for key in f.keys():
                path, _, param = key.rpartition(".")
                owner = lookup.find(path)
                if lookup.under(path, wrappers) or (owner is None and key.split(".")[0] in _HEADS):
                    continue  # a head the run replaced (a classifier's), or the LM head a classifier lacks
                tensor = f.get_tensor(key)
                if tensor.is_floating_point():
                    stored[tensor.dtype] += tensor.numel()
                if owner in layers and param == "weight":
                    tensor = _merge_weight(tensor, layers[owner], adapter)
                    merged.add(owner)
                writer.add(key, tensor)
    if set(layers) - merged:
        raise MergeError(f"the LoRA layers {', '.join(sorted(set(layers) - merged)[:4])} have no weight in the stored "
                         f"files of {pretrained_model!r}, so they cannot be merged; export the adapter instead "
                         "(without merged=True / --merged)")
    dtype = stored.most_common(1)[0][0] if stored else torch.float32
    for name, wrapper in wrappers.items():  # a classifier's trained head: in the export's dtype
        for param, tensor in wrapper.modules_to_save[adapter].state_dict().items():
            writer.add(f"{name}.{param}", tensor.detach().to("cpu").to(dtype))
    shards = writer.close()
    _save_config(base, folder, dtype)
    qlora = any(type(m).__name__ == "Linear4bit" for m in modules.values())
    return MergeReport(dtype, device, len(merged), shards, qlora)


_HEADS = ("lm_head", "score", "classifier")


def _merge_weight(weight: torch.Tensor, layer: nn.Module, adapter: str) -> torch.Tensor:
    """weight + the layer's update, added in fp32 on the adapters' device and stored back in weight's dtype (what
    peft's merge_and_unload computes)."""
    summed = layer.get_delta_weight(adapter).float()  # (out, in) in the weight's layout (GPT-2's Conv1D: transposed)
    summed += weight.to(summed.device)  # moved in its own dtype, widened in the sum: no fp32 copy of it
    return summed.to(weight.dtype).to("cpu")


class _Lookup:
    """Module paths of the model for checkpoint keys, which may leave out the base model prefix (GPT-2's hub
    files say "h.0.attn" for the model's "transformer.h.0.attn") or carry it where the model does not."""

    def __init__(self, modules: dict, prefix: str):
        self.modules, self.prefix = modules, prefix

    def candidates(self, path: str) -> list[str]:
        out = [path, f"{self.prefix}.{path}" if self.prefix else path]
        if self.prefix and path.startswith(self.prefix + "."):
            out.append(path[len(self.prefix) + 1:])
        return out

    def find(self, path: str):
        return next((p for p in self.candidates(path) if p in self.modules), None)

    def under(self, path: str, owners: dict) -> bool:
        return any(c == o or c.startswith(o + ".") for c in self.candidates(path) for o in owners)


def base_weight_files(name: str) -> list[Path]:
    """The safetensors files of the pretrained model (a folder, or a Hub model from the local cache, where
    training put it)."""
    from utils.models.pretrained import cached_only_source, resolve_source

    source = resolve_source(name)
    folder = Path(source)
    if not folder.is_dir():
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(source, allow_patterns=["*.safetensors", "*.json"],
                                        local_files_only=cached_only_source(source)))
    index = folder / INDEX_FILENAME
    if index.is_file():
        shards = json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()
        return [folder / shard for shard in sorted(set(shards))]
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    raise MergeError(f"{name!r} has no safetensors weights (model.safetensors), which the merge reads one tensor at a "
                     "time; save the model with save_pretrained (safetensors), train from that folder, or export the "
                     "adapter instead (without merged=True / --merged)")


class ShardWriter:
    """Tensors into safetensors files of at most limit bytes each (a tensor larger than that gets its own file),
    named and indexed as save_pretrained names them: model.safetensors, or model-0000i-of-0000n.safetensors and
    model.safetensors.index.json."""

    def __init__(self, folder: Path, limit: int):
        self.folder, self.limit = Path(folder), limit
        self.pending: dict[str, torch.Tensor] = {}
        self.size, self.total, self.files, self.weight_map = 0, 0, [], {}

    def add(self, key: str, tensor: torch.Tensor) -> None:
        nbytes = tensor.numel() * tensor.element_size()
        if self.pending and self.size + nbytes > self.limit:
            self._flush()
        self.pending[key] = tensor.contiguous()
        self.size += nbytes
        self.total += nbytes

    def _flush(self) -> None:
        from safetensors.torch import save_file

        name = f".part-{len(self.files) + 1:05d}.safetensors"
        save_file(self.pending, str(self.folder / name), metadata={"format": "pt"})
        self.files.append(name)
        self.weight_map.update(dict.fromkeys(self.pending, name))
        self.pending, self.size = {}, 0

    def close(self) -> int:
        """Write what is pending, give the files their final names; the number of files."""
        if self.pending or not self.files:
            self._flush()
        n = len(self.files)
        names = {old: "model.safetensors" if n == 1 else f"model-{i:05d}-of-{n:05d}.safetensors"
                 for i, old in enumerate(self.files, 1)}
        for old, new in names.items():
            (self.folder / old).rename(self.folder / new)
        if n > 1:
            index = {"metadata": {"total_size": self.total},
                     "weight_map": {k: names[v] for k, v in sorted(self.weight_map.items())}}
            (self.folder / INDEX_FILENAME).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
        return n


def _save_config(base: nn.Module, folder: Path, dtype: torch.dtype) -> None:
    """The trained model's config (its labels, pad id) as a plain model's: no 4-bit quantisation, the stored dtype,
    the KV cache on (gradient checkpointing turned it off for training)."""
    config = copy.deepcopy(base.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype, config.use_cache, config.architectures = dtype, True, [type(base).__name__]
    config.save_pretrained(folder)
    if base.can_generate():
        base.generation_config.save_pretrained(folder)
