"""Take a fine-tuned model home: one .gguf file that llama.cpp, Ollama and LM Studio run, and an Ollama Modelfile.

    python -m utils.training export runs/default --gguf --quant q8_0     # runs/default/gguf/model-q8_0.gguf
    check = export_gguf(result, quant="q8_0"); print(check.describe()); print(check.next_steps())

For a fine-tuned pretrained language model (model_source "pretrained", task "lm") of the Llama family (Llama,
SmolLM2, Mistral; Llama 3.1/3.2's "llama3" RoPE scaling as llama.cpp's rope_freqs tensor), Qwen2/Qwen3 or GPT-2,
with a byte-level BPE tokenizer or a SentencePiece-style one (Llama 2, Mistral v0.1-0.3). A LoRA/QLoRA run is
merged into its base first (utils.models.merge.save_merged). The file carries the hyper-parameters, the tokenizer
(vocabulary, merges or scores, token types, BOS/EOS/PAD and the end-of-turn token; utils.gguf_tokenizer) and the
chat template. Weights are written with the gguf package's own numpy quantisers: f16, bf16, q8_0, q4_0, q5_1
(1-D tensors stay f32; with q4_0/q5_1 the embedding and output layers are q8_0). K-quants need llama.cpp's
llama-quantize. The file is written beside its target under a temporary name, read back with an independent reader
(transformers' GGUF loader, which dequantises with the gguf package) and compared with the model in memory before
it replaces anything.
Nothing in training, data, models or inspection imports this module; gguf is an optional package.
"""

from __future__ import annotations

import copy
import gc
import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from utils.env import available_host_bytes
from utils.files import atomic_write_text, temp_path_for
from utils.formatting import format_bytes
from utils.gguf_modelfile import modelfile_text, render_chat
from utils.gguf_tokenizer import GgufExportError, add_tokenizer, pre_tokenizer_name

__all__ = ["GgufCheck", "GgufExportError", "QUANTS", "check_quant", "export_gguf"]

QUANTS = ("f16", "bf16", "q8_0", "q4_0", "q5_1")
K_QUANTS = ("q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k")
LOSSY = ("q4_0", "q5_1")  # agreement is reported, parity is not claimed
ARCHITECTURES = {"llama": "LLAMA", "mistral": "LLAMA", "qwen2": "QWEN2", "qwen3": "QWEN3", "gpt2": "GPT2"}
SUPPORTED = "Llama, SmolLM2, Mistral, Qwen2, Qwen3 or GPT-2"
GREEDY_TOKENS = 8  # tokens continued greedily after each check prompt, then compared pick by pick
NEAR_TIE = 1.0  # logits: a greedy pick between two tokens this close (probabilities within a factor e) may flip
TOLERANCE = 0.02  # f16/bf16: largest |logit difference| accepted, as a fraction of the largest |logit|
# Host RAM the export takes beyond what is already resident, per parameter: the fp32 copy it writes from and checks
# against (4 B), the file's tensors held by the writer until written (FILE_BYTES), and ~1.6 B of transient buffers
# and the read-back's conversion (bench: SmolLM2-135M measured 7.36 B/param for f16, 6.62 for q8_0).
FP32_COPY_BYTES, TRANSIENT_BYTES = 4.0, 1.6
FILE_BYTES = {"f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32, "q5_1": 24 / 32}  # per value, as ggml packs
CHECK_MESSAGES = ("What is the capital of France?", "Write a short poem about the sea.", "Explain what a list is.")
CHECK_TEXTS = ("The quick brown fox jumps over the lazy dog.", "def add(a, b):\n    return", "Once upon a time")

@dataclass
class GgufCheck:
    """What the export wrote and what reading it back showed."""

    path: Path
    quant: str
    size_bytes: int
    prompts: int
    max_abs_diff: float  # largest |logit difference| over the check prompts
    max_abs_logit: float  # largest |logit| of the model in memory: the scale of the difference
    greedy_matching: int  # greedy continuation tokens equal to the model's, over all prompts
    greedy_total: int
    token_ids: int  # ids of the check prompts, which both tokenizers encoded identically
    chat_template: bool  # the model has a chat template, and the file carries it unchanged
    near_ties: int = 0  # differing greedy picks where the model's top two were within the logit difference
    modelfile: Optional[Path] = None
    ollama_name: str = "my-model"
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        what = "chat prompts" if self.chat_template else "prompts"
        if self.quant in LOSSY:
            logits = (f"{self.quant} is lossy, no parity claimed: logits differ by up to {self.max_abs_diff:.2e} "
                      f"(largest logit {self.max_abs_logit:.2f})")
        elif self.quant == "q8_0":
            logits = (f"logits differ by up to {self.max_abs_diff:.2e} (largest logit {self.max_abs_logit:.2f}; "
                      "q8_0 is checked on its greedy picks)")
        else:
            logits = (f"logits within {self.max_abs_diff:.2e} of the model's (largest logit {self.max_abs_logit:.2f},"
                      f" tolerance {TOLERANCE:g} of it)")
        differing = self.greedy_total - self.greedy_matching
        ties = f" ({self.near_ties} of the {differing} others where the model's own top two were within " \
               f"{NEAR_TIE:g} logit)" if differing else ""
        template = "the chat template embedded unchanged" if self.chat_template else "no chat template (base model)"
        return (f"GGUF: {self.path} ({self.quant}, {_size(self.size_bytes)}); read back by transformers on "
                f"{self.prompts} {what}: {logits}, greedy picks agree on {self.greedy_matching}/{self.greedy_total} "
                f"tokens{ties}; its tokenizer encodes them to the same {self.token_ids} ids; {template}")

    def next_steps(self) -> str:
        lines = [f"Ollama:    cd {self.path.parent} && ollama create {self.ollama_name} -f Modelfile && "
                 f"ollama run {self.ollama_name}",
                 f"llama.cpp: llama-cli -m {self.path} -cnv"]
        if self.quant in ("f16", "bf16"):
            lines.append(f"Smaller:   llama-quantize {self.path} {self.path.with_name('model-Q4_K_M.gguf')} Q4_K_M")
        return "\n".join(lines + self.notes)


def require_gguf():
    try:
        import gguf
    except ImportError:
        raise GgufExportError("GGUF export needs the optional package gguf (llama.cpp's GGUF writer): "
                              "pip install gguf") from None
    return gguf


def export_gguf(predictor, folder: str | Path | None = None, quant: str = "f16") -> GgufCheck:
    """Write folder/model-QUANT.gguf and folder/Modelfile from a Predictor (a run, a TrainingResult) and check the
    file against the model. folder defaults to the run's output_dir/gguf. Nothing is written when refused, and an
    earlier file of the same name is replaced only by a file that passed the check."""
    quant = check_quant(quant)
    config = predictor.config
    check_exportable(config)
    gguf = require_gguf()
    hf = _hf_tokenizer(predictor)
    source = predictor.model.get_base_model() if hasattr(predictor.model, "get_base_model") else predictor.model
    arch = check_architecture(source.config, config.pretrained_model)
    check_host_memory(predictor.model, quant)
    pre = pre_tokenizer_name(hf)
    folder = Path(folder) if folder is not None else Path(config.output_dir) / "gguf"
    target = folder / f"model-{quant}.gguf"

    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".merged-", dir=folder) as scratch:  # gone when read back
        model = _model_to_write(predictor, config, Path(scratch))
    reference = _reference_outputs(model, hf)
    tmp = temp_path_for(target)
    try:
        write_gguf(gguf, tmp, model, hf, arch, pre, quant, name=Path(config.pretrained_model).name)
        del model
        gc.collect()
        check = check_gguf(tmp, reference, hf, quant)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    check.path = target
    check.ollama_name = _slug(Path(config.pretrained_model).name) + "-finetuned"
    check.modelfile = folder / "Modelfile"
    text, notes = modelfile_text(target.name, hf)
    atomic_write_text(check.modelfile, text)
    check.notes = notes
    return check


# ---------------------------------------------------------------------------------------------- refusals

def check_quant(quant: str) -> str:
    quant = quant.lower()
    if quant in K_QUANTS:
        raise GgufExportError(f"{quant} is a k-quant, which only llama.cpp's own quantiser makes: export --quant f16, "
                              f"then run: llama-quantize model-f16.gguf model-{quant.upper()}.gguf {quant.upper()}")
    if quant not in QUANTS:
        raise GgufExportError(f"quant={quant!r} is not one this export writes; choose one of {', '.join(QUANTS)} "
                              f"(k-quants such as q4_k_m: export f16, then llama-quantize)")
    return quant


def check_host_memory(model, quant: str, available: Optional[int] = None) -> None:
    """Refuse, before anything is written, an export whose fp32 copy and check would not fit in the host RAM left
    (available: bytes; default: what the OS says, and no check where it says nothing)."""
    from utils.models.adapters import count_parameters

    available = available_host_bytes() if available is None else available
    parameters = count_parameters(model)[1]
    needed = int(parameters * (FP32_COPY_BYTES + FILE_BYTES[quant] + TRANSIENT_BYTES))
    if available is not None and needed > available:
        raise GgufExportError(
            f"GGUF export of this {parameters / 1e9:.1f}B-parameter model needs about {format_bytes(needed)} of host "
            f"RAM (an fp32 copy to write from and check against) and {format_bytes(available)} is available: export "
            "safetensors instead (python -m utils.training export RUN, with --merged for a LoRA/QLoRA run) and "
            "convert that folder with llama.cpp's convert_hf_to_gguf.py on a machine with more RAM")


def check_exportable(config) -> None:
    """A fine-tuned pretrained language model: llama.cpp has no graph for the kit's templates or a classifier."""
    if config.task != "lm":
        raise GgufExportError(f"GGUF export writes language models; this run is a {config.task} model (llama.cpp runs "
                              f"text generation only). Supported: a fine-tuned pretrained {SUPPORTED}")
    if config.model_source != "pretrained":
        raise GgufExportError(f"GGUF export needs a fine-tuned pretrained {SUPPORTED} (model_source='pretrained'); "
                              f"this run trained the kit's {config.model_template!r} template on the "
                              f"{config.tokenizer_strategy!r} tokenizer, which llama.cpp has no architecture for"
                              if config.model_source == "template" else
                              f"this run trained your own model code ({config.model_source}), which llama.cpp has "
                              "no architecture for")


def check_architecture(model_config, name: str) -> str:
    """The gguf MODEL_ARCH name for the model, or one line saying what is supported."""
    model_type = getattr(model_config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise GgufExportError(f"GGUF export writes {SUPPORTED} models; {name!r} is a {model_type!r} model. Use "
                              "llama.cpp's convert_hf_to_gguf.py on a merged export (export --merged) instead")
    rope = _rope_type(model_config)
    if rope not in ("default", "llama3") or (rope == "llama3" and ARCHITECTURES[model_type] != "LLAMA"):
        raise GgufExportError(f"{name!r} uses {rope!r} RoPE scaling, which this export does not write (it writes "
                              "Llama 3.1/3.2's 'llama3'); use llama.cpp's convert_hf_to_gguf.py on a merged export")
    return ARCHITECTURES[model_type]


def _rope_parameters(model_config) -> dict:
    return getattr(model_config, "rope_parameters", None) or getattr(model_config, "rope_scaling", None) or {}


def _rope_type(model_config) -> str:
    rope = _rope_parameters(model_config)
    return rope.get("rope_type", rope.get("type", "default"))


def rope_factors(model_config) -> torch.Tensor:
    """Llama 3.1/3.2's RoPE scaling ("llama3") as llama.cpp stores it: a rope_freqs tensor with one factor per
    rotary frequency, each frequency divided by its factor (LlamaModel.generate_extra_tensors in llama.cpp's
    convert_hf_to_gguf.py). llama.cpp reads original_max_position_embeddings from the top of config.json and
    defaults to 8192; transformers reads it from rope_scaling: the scaling's own value is used here, the one the
    model was trained with (8192 in every Llama 3.1/3.2)."""
    c, rope = model_config, _rope_parameters(model_config)
    base = rope.get("rope_theta", getattr(c, "rope_theta", 10000.0))
    dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    factor, low, high = rope.get("factor", 8.0), rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old_context = rope.get("original_max_position_embeddings", getattr(c, "original_max_position_embeddings", 8192))
    low_wavelen, high_wavelen = old_context / low, old_context / high
    factors = []
    for freq in freqs.tolist():
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(factor)
        else:
            smooth = (old_context / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return torch.tensor(factors, dtype=torch.float32)


def _hf_tokenizer(predictor):
    hf = getattr(predictor.tokenizer, "hf", None)
    if hf is None:
        from utils.data.tokenizers import load_model_tokenizer

        hf = load_model_tokenizer(predictor.config.pretrained_model, classify=False).hf
    return hf


def _model_to_write(predictor, config, scratch: Path):
    """The fine-tuned model as a plain transformers model on the CPU in fp32: a LoRA/QLoRA run merged into its base
    by the merged export's own merge (into the base's stored weights, written to scratch and read back), a full
    fine-tune copied (the run's own model is left as it is)."""
    from utils.models.adapters import uses_adapters

    if not uses_adapters(config):
        return copy.deepcopy(predictor.model).float().cpu().eval()
    from transformers import AutoModelForCausalLM

    from utils.models.merge import save_merged

    save_merged(predictor.model, config.pretrained_model, scratch)
    return AutoModelForCausalLM.from_pretrained(scratch, dtype=torch.float32).eval()


# ---------------------------------------------------------------------------------------------- writing

def write_gguf(gguf, path: Path, model, hf, arch: str, pre: str, quant: str, name: str) -> None:
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH[arch]])
    writer.add_name(name)
    writer.add_file_type(_file_type(gguf, quant))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _add_hyper_parameters(writer, model.config, arch)
    vocab_size = model.get_input_embeddings().weight.shape[0]
    add_tokenizer(gguf, writer, hf, pre, vocab_size)
    # Two passes, one tensor in memory at a time: the header lists every tensor's shape and type, then each is
    # converted and written (the writer's add_tensor would hold the whole converted model until the end).
    for gguf_name, data in _weights(gguf, model, arch):
        qtype = _tensor_type(gguf, gguf_name, data.shape, quant)
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        shape = tuple(data.shape)
        stored = shape if qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16) \
            else gguf.quant_shape_to_byte_shape(shape, qtype)
        writer.add_tensor_info(gguf_name, stored, _NUMPY.get(qtype.name, np.uint8), data.numel() // block * type_size,
                               raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for gguf_name, data in _weights(gguf, model, arch):
        writer.write_tensor_data(_converted(gguf, data.numpy(), _tensor_type(gguf, gguf_name, data.shape, quant)))
    writer.close()


_NUMPY = {"F32": np.float32, "F16": np.float16}


def _converted(gguf, array: np.ndarray, qtype) -> np.ndarray:
    if qtype == gguf.GGMLQuantizationType.F32:
        return array
    if qtype == gguf.GGMLQuantizationType.F16:
        return array.astype(np.float16)
    return gguf.quants.quantize(array, qtype)


def _file_type(gguf, quant: str):
    return getattr(gguf.LlamaFileType, "MOSTLY_" + quant.upper())


def _add_hyper_parameters(writer, c, arch: str) -> None:
    if arch == "GPT2":
        writer.add_context_length(c.n_positions)
        writer.add_embedding_length(c.n_embd)
        writer.add_block_count(c.n_layer)
        writer.add_feed_forward_length(c.n_inner or 4 * c.n_embd)
        writer.add_head_count(c.n_head)
        writer.add_layer_norm_eps(c.layer_norm_epsilon)
        return
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    rope = getattr(c, "rope_parameters", None) or {}
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_block_count(c.num_hidden_layers)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(c, "rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_vocab_size(c.vocab_size)
    if arch == "LLAMA":
        writer.add_rope_dimension_count(head_dim)
    if head_dim != c.hidden_size // c.num_attention_heads:  # Qwen3's explicit head_dim
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)


def _weights(gguf, model, arch: str):
    """(gguf name, fp32 CPU tensor) for each weight, in llama.cpp's layout: q/k projections of the Llama family
    permuted for its rotary embedding (llama.cpp's LlamaModel.permute; transformers' loader reverses it), GPT-2's
    Conv1D weights transposed to (out, in), a tied output layer not written twice, Llama 3.1/3.2's RoPE scaling as
    rope_freqs. One tensor widened at a time."""
    c = model.config
    blocks = c.n_layer if arch == "GPT2" else c.num_hidden_layers
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch], blocks)
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and c.tie_word_embeddings:
            continue
        if hf_name.endswith((".attn.bias", ".attn.masked_bias")):  # GPT-2's causal-mask buffers
            continue
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise GgufExportError(f"GGUF export has no llama.cpp name for the tensor {hf_name!r} of this "
                                  f"{c.model_type} model; it cannot be written without it")
        data = tensor.detach().to("cpu", torch.float32)
        if arch == "LLAMA" and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            data = _permute(data, c.num_attention_heads, c.num_attention_heads)
        elif arch == "LLAMA" and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            data = _permute(data, c.num_attention_heads, c.num_key_value_heads)
        elif arch == "GPT2" and hf_name.endswith((".c_attn.weight", ".c_proj.weight", ".c_fc.weight")):
            data = data.T
        yield gguf_name, data.contiguous()
    if arch == "LLAMA" and _rope_type(c) == "llama3":
        yield gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", rope_factors(c)


def _permute(weights: torch.Tensor, n_head: int, n_head_kv: int) -> torch.Tensor:
    """llama.cpp's LlamaModel.permute (convert_hf_to_gguf.py): each head's rotary halves interleaved."""
    if n_head != n_head_kv:
        n_head = n_head_kv
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def _tensor_type(gguf, name: str, shape, quant: str):
    """As llama.cpp writes them: 1-D tensors (norms, biases) and position embeddings in f32; with q4_0/q5_1 the
    embedding and output layers in q8_0 (llama-quantize keeps these wider too); a row whose length is not a
    multiple of the block size in f16."""
    types = gguf.GGMLQuantizationType
    if len(shape) <= 1 or name == "position_embd.weight":
        return types.F32
    qtype = types[quant.upper()]
    if quant in LOSSY and name in ("token_embd.weight", "output.weight"):
        qtype = types.Q8_0
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    return qtype if shape[-1] % block == 0 else types.F16


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "my-model"


# ---------------------------------------------------------------------------------------------- the check

def check_prompts(hf) -> list[str]:
    """Chat-formatted user messages for a chat model, plain texts for a base model."""
    if getattr(hf, "chat_template", None):
        return [render_chat(hf, [{"role": "user", "content": m}], True) for m in CHECK_MESSAGES]
    return [hf.bos_token + t if hf.bos_token and hf.bos_token != hf.eos_token else t for t in CHECK_TEXTS]


@torch.no_grad()
def _greedy(model, ids: list[int]) -> list[int]:
    """GREEDY_TOKENS tokens picked greedily after ids, end-of-text or not (generate's KV cache: about one forward
    pass of the prompt, not one per token)."""
    from transformers import GenerationConfig

    config = GenerationConfig(do_sample=False, max_new_tokens=GREEDY_TOKENS, min_new_tokens=GREEDY_TOKENS,
                              eos_token_id=None, pad_token_id=0)
    out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         generation_config=config)
    return out[0, len(ids):].tolist()


@torch.no_grad()
def _logits(model, ids: list[int]) -> torch.Tensor:
    return model(torch.tensor([ids])).logits[0].float()  # (T, V)


def _reference_outputs(model, hf) -> dict:
    """The model's greedy continuation of each check prompt, and its logits over prompt and continuation."""
    texts = check_prompts(hf)
    ids = [hf(t, add_special_tokens=False)["input_ids"] for t in texts]
    greedy = [_greedy(model, row) for row in ids]
    # transformers' GGUF reader maps GPT-2's context_length to n_ctx, not to n_positions (the position table's
    # size), and reads no head size for Qwen3 (attention.key_length, which llama.cpp reads): tell it the sizes the
    # file's own tensors have.
    c, options = model.config, {}
    if c.model_type == "gpt2":
        options = {"n_positions": c.n_positions}
    elif c.model_type == "qwen3":
        options = {"head_dim": c.head_dim}
    return {"texts": texts, "ids": ids, "greedy": greedy, "reader_options": options,
            "logits": [_logits(model, row + g) for row, g in zip(ids, greedy)]}


def _compare(loaded, reference: dict) -> tuple[float, float, int, int, int]:
    """(largest |logit difference|, largest |logit|, greedy tokens the file's model picks alike, total, of the
    others how many were near-ties). The file's model reads the model's own continuation (teacher forcing), so one
    differing pick is counted once; a differing pick is a near-tie when the model itself was undecided between the
    two tokens: its logits within NEAR_TIE of each other."""
    diffs, scales, picks = [], [], []
    for row, greedy, expected in zip(reference["ids"], reference["greedy"], reference["logits"]):
        got = _logits(loaded, row + greedy)
        diffs.append(float((got - expected).abs().max()))
        scales.append(float(expected.abs().max()))
        steps = slice(len(row) - 1, len(row) - 1 + len(greedy))
        # the model's own picks from these logits (the same computation as the file's: no cache-path rounding)
        picks.append((expected[steps], got[steps].argmax(-1), expected[steps].argmax(-1)))
    diff = max(diffs)
    matching = near_ties = 0
    for expected, chosen, greedy in picks:
        matching += int((chosen == greedy).sum())
        gaps = expected.gather(1, greedy[:, None]) - expected.gather(1, chosen[:, None])  # (steps, 1)
        near_ties += int(((chosen != greedy) & (gaps[:, 0] <= NEAR_TIE)).sum())
    return diff, max(scales), matching, GREEDY_TOKENS * len(picks), near_ties


def check_gguf(path: Path, reference: dict, hf, quant: str) -> GgufCheck:
    """Read the file back with transformers' GGUF loader and compare logits, greedy picks, token ids and the chat
    template with the model's; a mismatch that f16/bf16/q8_0 must not have raises (the file is then not kept)."""
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32,
                                                  **reference["reader_options"]).eval()
    reader = GGUFReader(str(path))
    _apply_rope_freqs(loaded, reader)
    diff, scale, matching, total, near_ties = _compare(loaded, reference)
    del loaded
    read_tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    read_ids = [read_tokenizer(text, add_special_tokens=False)["input_ids"] for text in reference["texts"]]
    ids = reference["ids"]
    field_ = reader.get_field("tokenizer.chat_template")
    embedded = field_.contents() if field_ is not None else None
    template = getattr(hf, "chat_template", None)
    problems = []
    if quant in ("f16", "bf16") and not diff <= TOLERANCE * scale:  # also catches nan
        problems.append(f"logits differ by up to {diff:.3g} (tolerance {TOLERANCE * scale:.3g})")
    if quant not in LOSSY and matching + near_ties != total:
        problems.append(f"the greedy picks agree on only {matching}/{total} tokens, {total - matching - near_ties} "
                        f"of the others where the model was not undecided (its top two {NEAR_TIE:g}+ logit apart)")
    if read_ids != ids:
        problems.append("its tokenizer encodes the check prompts to other ids than the model's tokenizer")
    if embedded != template:
        problems.append("its embedded chat template differs from the model's")
    if problems:
        raise GgufExportError(f"The GGUF file read back does not match the model: {'; '.join(problems)}. It was not "
                              "kept; please report this model")
    return GgufCheck(path, quant, path.stat().st_size, len(ids), diff, scale, matching, total, sum(map(len, ids)),
                     bool(template), near_ties=near_ties)


def _apply_rope_freqs(loaded, reader) -> None:
    """transformers' GGUF reader skips the rope_freqs tensor (Llama 3.1/3.2's RoPE scaling) and builds a plain RoPE:
    divide its frequencies by the file's factors, as llama.cpp's ggml_rope_ext does with them, so the check sees the
    model llama.cpp runs. A reader that applied the scaling itself is left alone."""
    tensor = next((t for t in reader.tensors if t.name == "rope_freqs.weight"), None)
    if tensor is None or _rope_type(loaded.config) != "default":
        return
    rotary = loaded.model.rotary_emb
    scaled = rotary.inv_freq / torch.from_numpy(np.array(tensor.data, dtype=np.float32))
    rotary.inv_freq.copy_(scaled)
    rotary.original_inv_freq.copy_(scaled)
