"""LoRA and QLoRA: fine-tune a pretrained model by training small adapters on its frozen base (peft).

finetune_method "lora" keeps the base in the precision decision's base_dtype (fp16 on a T4, bf16 on
Ampere and newer, fp32 on a CPU) and adds a low-rank update (rank lora_rank, scale lora_alpha / rank)
to each targeted linear layer; "qlora" stores the base in 4 bits (nf4, double quantisation, with
bitsandbytes) besides. Only the adapters (and a classifier's new head) train, in fp32, so gradients and
AdamW state exist for them alone, and a checkpoint holds them alone (see TransformerModule).

    model = load_pretrained_model(name, "lm", **load_options(config, decision))
    model = apply_adapters(model, config)        # a peft PeftModel
    print(describe_trainable(model))             # "Trainable: 1,081,344 of 495,114,112 parameters (0.22%)"

Gradient checkpointing (enable_checkpointing) recomputes each block's activations in the backward pass;
it uses non-reentrant checkpointing, which needs no input that requires grad, and turns the model's KV
cache off, which training never reads.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

from torch import Tensor, nn

from utils.errors import KitError

ADAPTER_METHODS = ("lora", "qlora")
HEADS = ("lm_head", "score", "classifier")  # output layers: not among all-linear's targets, never quantised
METHOD_SENTENCES = {  # the wizard's one plain sentence per method
    "full": "Full: every weight of the model trains. Best results, but weights, gradients and optimizer state "
            "need about 16 bytes a parameter (a 1B model does not fit a T4).",
    "lora": "LoRA: the model stays frozen in 16 bits and small adapter matrices train; about 2 bytes a "
            "parameter, close to full fine-tuning in quality.",
    "qlora": "QLoRA: as LoRA, with the frozen model stored in 4 bits; about half a byte a parameter, so 7B "
             "models fit a free T4, a little slower.",
}


# Open, ungated chat models the wizard suggests, with their published parameter counts.
CHAT_MODELS = {
    "HuggingFaceTB/SmolLM2-360M-Instruct": 0.36e9, "Qwen/Qwen2.5-0.5B-Instruct": 0.49e9, "Qwen/Qwen3-0.6B": 0.60e9,
    "Qwen/Qwen2.5-1.5B-Instruct": 1.54e9, "HuggingFaceTB/SmolLM2-1.7B-Instruct": 1.71e9, "Qwen/Qwen3-1.7B": 2.03e9,
    "Qwen/Qwen2.5-3B-Instruct": 3.09e9, "Qwen/Qwen2.5-7B-Instruct": 7.62e9,
}
ROOM_FOR_ACTIVATIONS = 4 * 2**30  # a batch of 4 x 512 tokens with checkpointing, logits included (fit_plan)
FULL_UP_TO = 300e6  # below this many parameters full fine-tuning is recommended where it fits (GPT-2 small)
CPU_UP_TO = 0.6e9  # a CPU trains at most these for a test run


def recommend_method(parameters: float, capacity: "float | None") -> str:
    """The method the wizard and `estimate` suggest: full for a small model whose 16 bytes a parameter fit; LoRA
    where the 16-bit base fits with room for activations; else QLoRA. capacity None: unknown, LoRA."""
    if capacity is None:
        return "lora"
    usable = 0.9 * capacity - ROOM_FOR_ACTIVATIONS
    if parameters < FULL_UP_TO and 16 * parameters <= usable:
        return "full"
    return "lora" if 2 * parameters <= usable else "qlora"


def suggested_models(capacity: "float | None", device_kind: str) -> list[str]:
    """The chat models that QLoRA fine-tunes on this device (at about 0.6 bytes a parameter plus activations);
    on a CPU only the smallest."""
    if device_kind != "cuda":
        return [name for name, n in CHAT_MODELS.items() if n <= CPU_UP_TO]
    return [name for name, n in CHAT_MODELS.items() if capacity is None
            or 0.6 * n + ROOM_FOR_ACTIVATIONS <= 0.9 * capacity]


class AdapterError(KitError, ValueError):
    """LoRA/QLoRA settings that cannot be applied to this model or machine; the message says what to do."""


def uses_adapters(config) -> bool:
    return config.model_source == "pretrained" and config.finetune_method in ADAPTER_METHODS


def require_bitsandbytes():
    """The bitsandbytes module, or one line saying how to get it."""
    try:
        import bitsandbytes
    except ImportError:
        raise AdapterError("finetune_method='qlora' stores the model in 4 bits with the bitsandbytes library, which "
                           "is not installed here: pip install bitsandbytes (the Colab setup cell installs it when "
                           "QLoRA is chosen), or choose finetune_method='lora'") from None
    return bitsandbytes


def load_options(config, decision=None, device=None) -> dict[str, Any]:
    """What load_pretrained_model passes to from_pretrained for this method: the base's dtype, and for QLoRA the
    4-bit quantisation and the device it is quantised on (bitsandbytes quantises as the weights land there).
    decision: the run's PrecisionDecision; None: inference, a LoRA base in its stored dtype (a 7B bf16 base in 15 GB,
    not 30 in fp32), a QLoRA base in 4 bits computing in fp32. device: the torch device this
    process trains on (each process of a multi-GPU run its own; Lightning sets it only when fit starts, so
    torch.cuda.current_device() would put every process's copy on GPU 0)."""
    if not uses_adapters(config):
        return {}
    import torch

    base_dtype = decision.base_dtype if decision is not None else torch.float32
    if decision is None and config.finetune_method == "lora":  # inference: the base as stored, where it runs
        return stored_dtype_on(device or "cpu")
    options: dict[str, Any] = {"dtype": base_dtype}
    if config.finetune_method == "qlora":
        require_bitsandbytes()
        from transformers import BitsAndBytesConfig

        # The output layers stay unquantised: a classifier's head trains (modules_to_save), and a 4-bit head with
        # a bias (BERT's) is what bitsandbytes cannot train.
        options["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=base_dtype, llm_int8_skip_modules=list(HEADS))
        on_gpu = device is not None and torch.device(device).type == "cuda"
        options["device_map"] = {"": torch.device(device).index or 0} if on_gpu else "cpu"
    return options


def describe_storage(config, decision) -> str:
    """Where the base and the adapters live and why: said with the precision decision."""
    if not uses_adapters(config):
        return ""
    base = "4-bit nf4 (double quantised)" if config.finetune_method == "qlora" else _dtype_name(decision.base_dtype)
    why = ("the autocast dtype: it gets no gradients, so nothing is lost" if decision.device.kind == "cuda"
           and decision.precision != "32-true" else "fp32, as this run computes in fp32")
    if config.finetune_method == "qlora":
        why = f"computing in {_dtype_name(decision.base_dtype)}, to fit the most model in memory"
    return f"Weights: frozen base in {base} ({why}); adapters and their optimizer state in fp32."


def check_adapters(config) -> None:
    """Before anything is loaded or written: QLoRA's library is here, and each named LoRA target names a module of
    the model (read from its config.json alone, built on the meta device: no weights are loaded)."""
    if not uses_adapters(config):
        return
    if config.finetune_method == "qlora":
        require_bitsandbytes()
    if config.lora_target.strip() != "all-linear":
        lora_targets(meta_model(config.pretrained_model, config.task), config.lora_target)


def meta_model(name: str, task: str = "lm") -> nn.Module:
    """The pretrained model's modules and parameter shapes from its config alone, without memory or weights."""
    import torch

    from utils.models.pretrained import PretrainedError, require_transformers, resolve_source

    transformers = require_transformers()
    try:
        config = transformers.AutoConfig.from_pretrained(resolve_source(name))
    except (OSError, ValueError) as e:
        raise PretrainedError(f"Could not read the config of pretrained_model={name!r} ({str(e).strip()[:200]})") \
            from None
    auto = transformers.AutoModelForCausalLM if task == "lm" else transformers.AutoModelForSequenceClassification
    with torch.device("meta"):
        return auto.from_config(config)


def lora_targets(model: nn.Module, target: str) -> Any:
    """peft's target_modules for the lora_target setting: "all-linear", or the listed names, each of which must
    name at least one module (peft matches a name against the end of each module's dotted path)."""
    if target.strip() == "all-linear":
        return "all-linear"
    wanted = [name.strip() for name in target.split(",") if name.strip()]
    names = [name for name, _ in model.named_modules()]
    missing = [w for w in wanted if not any(n == w or n.endswith("." + w) for n in names)]
    if missing or not wanted:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if _is_linear(m)} - set(HEADS))
        raise AdapterError(f"LoRA target modules (lora_target) {', '.join(map(repr, missing)) or repr(target)} "
                           f"match no module of {type(model).__name__}; use 'all-linear' or names among "
                           f"{', '.join(linear)}")
    return wanted


def apply_adapters(model: nn.Module, config) -> nn.Module:
    """The model with LoRA adapters on its targeted layers and everything else frozen (peft's get_peft_model)."""
    from peft import LoraConfig, get_peft_model

    rank = config.lora_rank
    # A classifier's head trains whole (peft's modules_to_save), and so does any layer whose name ends like a
    # head's (DistilBERT's new pre_classifier): peft matches modules_to_save by that ending, and refuses a layer
    # that is both an adapter target and saved whole.
    heads = {"exclude_modules": rf".*(?:{'|'.join(HEADS)})"} if config.task == "classification" else {}
    lora = LoraConfig(r=rank, lora_alpha=config.lora_alpha or rank, lora_dropout=config.lora_dropout,
                      target_modules=lora_targets(model, config.lora_target),
                      task_type="CAUSAL_LM" if config.task == "lm" else "SEQ_CLS",
                      fan_in_fan_out=any(type(m).__name__ == "Conv1D" for m in model.modules()),  # GPT-2's layers
                      **heads)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*fan_in_fan_out.*")
        warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*", category=FutureWarning)
        peft_model = get_peft_model(model, lora)
    for p in peft_model.parameters():
        if p.requires_grad and p.is_floating_point():
            p.data = p.data.float()  # adapters (and a new classifier head) train in fp32 under any base dtype
    for m in peft_model.modules():
        if type(m).__name__ == "ModulesToSaveWrapper":  # a classifier's head: fp32 on a 16-bit base
            m.register_forward_pre_hook(_inputs_to_weight_dtype)
    for m in peft_model.modules():
        if hasattr(m, "support_avx512bf16_for_cpu"):
            # bitsandbytes repacks a CPU 4-bit weight in place for its first forward in eval mode (validation),
            # and its training path cannot read it back: keep the format that trains.
            m.support_avx512bf16_for_cpu = False
    return peft_model


def _inputs_to_weight_dtype(module: nn.Module, args: tuple) -> tuple:
    """A forward outside autocast (checks, predict, evaluate, export) hands the fp32 head the 16-bit base's hidden
    states; cast them to the head's dtype, as autocast would have chosen the matmul's dtype itself."""
    weight = next(module.modules_to_save.parameters(), None)  # the copies that train, not the frozen original
    if weight is None:
        return args
    return tuple(a.to(weight.dtype) if isinstance(a, Tensor) and a.is_floating_point() else a for a in args)


def enable_checkpointing(model: nn.Module) -> None:
    """Recompute activations in the backward pass (non-reentrant: frozen inputs need no requires_grad trick)."""
    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)  # transformers 5 renamed it; Colab's 4.x has this
        target.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    target.config.use_cache = False


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters as the model defines them: a 4-bit weight counts the values it stands for,
    not its packed storage (two to a byte), and a tied weight once."""
    params = {id(p): p for p in model.parameters()}.values()
    return (sum(parameter_count(p) for p in params if p.requires_grad),
            sum(parameter_count(p) for p in params))


def parameter_count(p: Tensor) -> int:
    """The values a parameter stands for: a bitsandbytes 4-bit weight keeps its shape in its quant_state."""
    state = getattr(p, "quant_state", None)
    shape = getattr(state, "shape", None)
    return math.prod(shape) if shape is not None else p.numel()


def describe_trainable(model: nn.Module) -> str:
    return "Trainable: " + trainable_words(*count_parameters(model))


def trainable_words(trainable: int, total: int) -> str:
    return f"{trainable:,} of {total:,} parameters ({100 * trainable / max(total, 1):.2f}%)"


_PLANNED: dict[tuple, tuple[int, int]] = {}


def planned_counts(config) -> tuple[int, int]:
    """(trainable, total) parameters of this config's model with its adapters, from the model's config.json alone
    (built on the meta device: nothing downloaded but that file, no memory). Remembered per setting."""
    key = (config.pretrained_model, config.task, config.finetune_method, config.lora_rank, config.lora_target)
    if key not in _PLANNED:
        model = meta_model(config.pretrained_model, config.task)
        _PLANNED[key] = count_parameters(apply_adapters(model, config) if uses_adapters(config) else model)
    return _PLANNED[key]


def trainable_keys(module: nn.Module) -> set[str]:
    """The state_dict keys of module's trainable parameters: what a checkpoint of an adapter run holds."""
    return {name for name, p in module.named_parameters() if p.requires_grad}


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ in ("Conv1D", "Linear4bit")


def _dtype_name(dtype) -> str:
    return {"torch.float16": "fp16", "torch.bfloat16": "bf16", "torch.float32": "fp32"}.get(str(dtype), str(dtype))


# ---------------------------------------------------------------------------------------------- export

ADAPTER_CONFIG_FILENAME = "adapter_config.json"  # peft's: a folder holding it is an adapter export
MERGED_ADAPTER_DIRNAME = "adapter"  # a merged export keeps the adapter here: at the top, transformers would load it


def is_adapter_folder(folder) -> bool:
    from pathlib import Path

    return (Path(folder) / ADAPTER_CONFIG_FILENAME).is_file()


def save_adapter(model: nn.Module, folder) -> None:
    """The adapter in peft's format: PeftModel.from_pretrained(base, folder) loads it onto the base."""
    model.save_pretrained(folder)


def load_adapter_export(folder, config, label_names=(), pad_id=None, device="cpu") -> nn.Module:
    """The base named by config.pretrained_model, in the dtype its weights are stored in and loaded straight onto
    device (a 7B base: 15 GB in bf16, not 30 GB in fp32), with the adapter saved in folder, for inference."""
    from peft import PeftModel

    from utils.models.pretrained import load_pretrained_model

    base = load_pretrained_model(config.pretrained_model, config.task, label_names, pad_id, **stored_dtype_on(device))
    with warnings.catch_warnings():  # peft reads transformers 5's renamed is_gradient_checkpointing: not the user's
        warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*", category=FutureWarning)
        return PeftModel.from_pretrained(base, str(folder)).eval()


def stored_dtype_on(device) -> dict[str, Any]:
    """from_pretrained's options for inference: the weights in the dtype they are stored in, each placed on device
    as it is read (never the whole model in host memory first when device is a GPU)."""
    return {"dtype": "auto", "device_map": {"": str(device)}}
