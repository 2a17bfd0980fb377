"""Fine-tuning a pretrained Hugging Face model: model_source="pretrained", pretrained_model="gpt2".

The model and its own tokenizer come from a Hub name (downloaded on Colab) or a local folder saved
with `save_pretrained`; the kit's tokenizer settings do not apply. task "lm" loads
AutoModelForCausalLM, task "classification" AutoModelForSequenceClassification with a head sized
and named by the data's labels. From there it is trained like any other model: the same precision
decision, checkpoints, resume and export (the builder, module and coordinator do not know the
difference beyond where the model and tokenizer come from).

An export of such a model is a folder `transformers` reads as it is
    AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
holding the kit's own files beside (kit_config.json, tokenizer/, labels.json, the export marker), so
utils.export.load_exported reads it back too.

transformers is optional for the kit (Colab has it); this path alone needs it.
"""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Optional, Sequence

from safetensors import SafetensorError
from torch import nn

from utils.errors import KitError, MissingFileError
from utils.hub_offline import cached_only

KIT_CONFIG_FILENAME = "kit_config.json"  # in an export: config.json is the model's own (transformers reads it)
_WHAT = {"lm": "causal language model head (AutoModelForCausalLM)",
         "classification": "sequence classification head (AutoModelForSequenceClassification)"}


class PretrainedError(KitError, ValueError):
    """A pretrained model or its tokenizer that cannot be loaded as configured; the message says what to do."""


# Lines from libraries that a user cannot act on. `import peft` imports bitsandbytes, which on a CPU with AVX-512
# BF16 asks the `kernels` package for a Hub kernel for 4-bit matmuls on the CPU (the kit's QLoRA runs on the GPU),
# and logs both steps of that failing offline; peft reads transformers' deprecated is_gradient_checkpointing on
# every PeftModel it makes. Exactly these messages go, nothing else of those loggers or of FutureWarning.
_UNACTIONABLE_LOGS = {"kernels._internals.hf_hub": "Skipping publisher trust check",
                      "bitsandbytes.backends.cpu.ops": "Failed to load CPU gemm_4bit_forward"}


class _DropStartingWith(logging.Filter):
    def __init__(self, start: str):
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.start)


def quiet_library_noise() -> None:
    """Drop the unactionable library lines above; safe to call again (the filter is added once per logger)."""
    for name, start in _UNACTIONABLE_LOGS.items():
        log = logging.getLogger(name)
        if not any(isinstance(f, _DropStartingWith) for f in log.filters):
            log.addFilter(_DropStartingWith(start))
    warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)


quiet_library_noise()  # at import: utils.data.tokenizers and utils.models.build import this module before peft


def require_transformers():
    """The transformers module, or one line saying how to get it."""
    try:
        import transformers
    except ImportError:
        raise PretrainedError("model_source='pretrained' needs the transformers library, which is not installed "
                              "here: pip install transformers (Colab has it), or choose another model_source") from None
    return transformers


def resolve_source(name: str) -> str:
    """A local folder (returned as a path) or a Hub name (returned as is); a missing folder is an error here,
    before transformers would try it as a Hub name and answer with a network error."""
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    if path.is_file():
        raise PretrainedError(f"pretrained_model={name!r} is a file; give the folder save_pretrained wrote it into")
    # Hub ids are "name" or "owner/name"; anything else with a slash, a dot or a tilde first is a path.
    if name.startswith((".", "/", "~")) or name.rstrip("/").count("/") > 1 or name.endswith("/"):
        raise MissingFileError(f"No pretrained model folder at {path}: pretrained_model needs a folder saved with "
                               "save_pretrained (on Colab, mount Google Drive first for /content/drive/... paths), or "
                               "a Hugging Face model name such as 'gpt2'.")
    return name


def load_pretrained_model(name: str, task: str, label_names: Sequence[str] = (),
                          pad_id: Optional[int] = None, **options) -> nn.Module:
    """AutoModelForCausalLM (task "lm") or AutoModelForSequenceClassification with a head for label_names,
    in fp32: the precision decision's autocast works on fp32 weights, whatever dtype the checkpoint has.
    options: from_pretrained's dtype and quantisation for a frozen base (utils.models.adapters.load_options)."""
    source = resolve_source(name)
    transformers = require_transformers()
    local_only = cached_only_source(source)
    quiet_library_noise()  # again: a notebook cell's warnings.catch_warnings may have reset the filters
    labels = {} if task == "lm" else dict(num_labels=len(label_names), id2label=dict(enumerate(label_names)),
                                          label2id={label: i for i, label in enumerate(label_names)})
    try:
        labels = _without_gguf_quantization(transformers, source, name, local_only, labels)
        if task == "lm":
            model = transformers.AutoModelForCausalLM.from_pretrained(source, local_files_only=local_only, **labels,
                                                                      **options)
        else:
            # A checkpoint that is already a classifier with other labels gets a new head of the right size.
            with _without_load_report():  # a new head is expected here: said in one line below, not a table
                model, info = transformers.AutoModelForSequenceClassification.from_pretrained(
                    source, ignore_mismatched_sizes=True, output_loading_info=True, local_files_only=local_only,
                    **labels, **options)
            new_head = sorted(set(info.get("missing_keys", ())) | {key for key, *_ in info.get("mismatched_keys", ())})
            if new_head:
                print(f"Classifier head: {', '.join(new_head)} not in {name!r} (or sized for other labels), so it "
                      f"starts untrained for your {len(label_names)} labels; fine-tuning trains it.")
    except SafetensorError as e:  # a weights file cut short (a copy to Drive that did not finish) or corrupted
        weights = Path(source) / "model.safetensors" if Path(source).is_dir() else f"the weights of {name!r}"
        raise PretrainedError(f"{weights} is damaged or incomplete ({first_line(e)}); copy the folder again or "
                              "save the model again with save_pretrained") from None
    except (OSError, ValueError) as e:
        if isinstance(e, ValueError) and "Unrecognized configuration class" in str(e):  # a model without this head
            raise PretrainedError(f"pretrained_model={name!r} has no {_WHAT[task]} in transformers "
                                  f"({first_line(e)}); pick a model made for task={task!r}") from None
        raise PretrainedError(f"Could not load pretrained_model={name!r} ({first_line(e)}). "
                              f"{where_hint(source, e)}") from None
    if model.config.pad_token_id is None and pad_id is not None:
        model.config.pad_token_id = pad_id  # a GPT-2 classifier finds each text's last token by it
    # from_pretrained returns the model in eval mode; Lightning keeps each module's mode, so without train()
    # the fine-tuning would run with dropout off.
    return (model if options else model.float()).train()


def _without_gguf_quantization(transformers, source: str, name: str, local_only: bool, labels: dict) -> dict:
    """from_pretrained's config arguments: labels as they are, or, for a model whose config.json keeps the GGUF
    quantization_config transformers writes when it converts a GGUF file, the config without it (labels set on
    it). Its weights are plain tensors once converted, but transformers would treat the model as quantized and
    refuse to train it ("`.float()` is not supported for quantized model")."""
    config = transformers.AutoConfig.from_pretrained(source, local_files_only=local_only)
    quantization = getattr(config, "quantization_config", None)
    method = quantization.get("quant_method") if isinstance(quantization, dict) else getattr(quantization,
                                                                                             "quant_method", None)
    if method != "gguf":
        return labels
    del config.quantization_config
    for key, value in labels.items():
        setattr(config, key, value)
    print(f"Model: {name!r} was converted from GGUF and its config.json still names GGUF quantization; its weights "
          "are plain tensors, so that entry is left out and the model trains as any other (exports leave it out too)")
    return {"config": config}


def cached_only_source(source: str) -> bool:
    """A folder loads as it is; a Hub name is checked first, so no network answers in seconds (utils.hub_offline)."""
    return False if Path(source).is_dir() else cached_only(source, "pretrained_model")


class _DropLoadReport(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in record.getMessage()


@contextmanager
def _without_load_report():
    """Hide transformers' LOAD REPORT table (a warning of transformers.modeling_utils) for one load, and only it."""
    log, drop = logging.getLogger("transformers.modeling_utils"), _DropLoadReport()
    log.addFilter(drop)
    try:
        yield
    finally:
        log.removeFilter(drop)


def save_for_transformers(model: nn.Module, tokenizer, folder: Path) -> None:
    """The model's config.json and weights and its tokenizer's files, as transformers' from_pretrained reads them."""
    hf = getattr(tokenizer, "hf", None)
    if hf is None:
        raise PretrainedError("this tokenizer was not loaded from the pretrained model (no transformers tokenizer "
                              "to save); a run folder trained before the kit kept it there exports from the result "
                              "of train() only: train again into a new output_dir, or export right after training")
    model.save_pretrained(folder)
    hf.save_pretrained(folder)


GATED_HINT = ("It is gated: accept its license on its huggingface.co page, then add your access token as a Colab "
              "secret named HF_TOKEN (key icon on the left, notebook access on) or set the HF_TOKEN environment "
              "variable; huggingface_hub reads either, and the kit never prints it.")


def where_hint(source: str, error: Optional[BaseException] = None) -> str:
    if error is not None and any(word in str(error).lower() for word in ("gated", "401", "restricted")):
        return GATED_HINT
    if Path(source).is_dir():
        return f"{source} should hold what save_pretrained writes (config.json, the weights and the tokenizer files)."
    return ("A Hub name needs internet (as on Colab) and the exact model id from huggingface.co; offline, give a "
            "folder saved with save_pretrained.")


def first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
