"""Using a trained model: sample text from a language model, label texts with a classifier.

A `Predictor` holds a model, its tokenizer and the task facts (task, max_seq_len, label names, pad
id). `TrainingResult` (a run just trained) and `ExportedModel` (an export loaded back) are both
Predictors, so the same model answers the same way whichever of the two it came from.

    predictor.generate("def ", max_new_tokens=100, seed=0)   # task "lm": a seed makes it repeatable
    predictor.predict(["great film", "dull"])                 # task "classification": label names
    predictor.predict_proba(["great film"])                   # [{label name: probability}]

The training core and utils.export import this module; it imports neither, nor Lightning.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from utils.config import WizardConfig
from utils.errors import KitError
from utils.data.tokenizers import chat_tokenizer
from utils.models.calling import encode_for_inference, model_logits, texts_to_logits


class InferenceError(KitError, ValueError):
    """A generate/predict call this model cannot answer (wrong task, no texts, a bad temperature)."""


class Predictor:
    """generate() for a language model, predict() and predict_proba() for a classifier.

    A base for classes that hold these attributes; config supplies task and max_seq_len.
    """

    model: nn.Module
    tokenizer: Any
    config: WizardConfig
    label_names: list[str]  # classification: index = class id
    pad_id: int  # classification: the id that pads sequences

    def generate(self, prompt: str = "\n", max_new_tokens: int = 200, temperature: float = 0.8,
                 top_k: Optional[int] = 40, seed: Optional[int] = None) -> str:
        """Text sampled after prompt (task "lm"), prompt included; a seed makes it repeatable."""
        self._require("lm", "generate()")
        return sample_text(self.model, self.tokenizer, prompt, max_new_tokens, self.config.max_seq_len,
                           temperature, top_k, seed)

    @property
    def is_chat_model(self) -> bool:
        """A language model whose own tokenizer has a chat template (an -Instruct or chat model)."""
        hf = getattr(self.tokenizer, "hf", None)
        return self.config.task == "lm" and bool(getattr(hf, "chat_template", None))

    def chat(self, message: str, max_new_tokens: int = 200, temperature: float = 0.8, top_k: Optional[int] = 40,
             seed: Optional[int] = None, stream: Optional[Callable[[str], Any]] = None) -> str:
        """The model's answer to one user message, formatted with its tokenizer's chat template (task "lm" on a
        pretrained chat model); it stops at the end-of-turn token. stream(piece) gets each new piece of text
        as it is sampled (the notebook prints them), e.g. stream=print_piece."""
        self._require("lm", "chat()")
        hf = chat_tokenizer(self.tokenizer, self.config)
        return chat_reply(self.model, hf, message, max_new_tokens, self.config.max_seq_len, temperature, top_k,
                          seed, stream)

    def predict(self, texts: str | list[str]) -> list[str]:
        """The most likely label name for each text (task "classification")."""
        probs = self._probabilities(texts)
        return [self.label_names[i] for i in probs.argmax(dim=-1).tolist()]

    def predict_proba(self, texts: str | list[str]) -> list[dict[str, float]]:
        """{label name: probability} for each text (task "classification")."""
        probs = self._probabilities(texts)
        return [dict(zip(self.label_names, row)) for row in probs.tolist()]

    def evaluate(self, data: str | Path, batch_size: int = 32, figure: Optional[str | Path] = None):
        """Score the model on a .txt/.csv/.jsonl file it never saw (utils.evaluate): an Evaluation with loss and
        perplexity (task "lm") or accuracy, macro-F1, per-class scores and the confusion matrix; figure: a PNG
        path for the confusion matrix."""
        from utils.evaluate import evaluate_predictor  # torchmetrics loads only when evaluating

        return evaluate_predictor(self, data, batch_size, figure)

    def _probabilities(self, texts: str | list[str]) -> torch.Tensor:
        self._require("classification", "predict()")
        return classify_texts(self.model, self.tokenizer, texts, self.config.max_seq_len, self.pad_id)

    def _require(self, task: str, what: str) -> None:
        if self.config.task != task:
            raise InferenceError(f"{what} needs task={task!r}; this model was trained for task={self.config.task!r}")


def sample_text(model: nn.Module, tokenizer, prompt: str, max_new_tokens: int, max_seq_len: int,
                temperature: float = 0.8, top_k: Optional[int] = 40, seed: Optional[int] = None) -> str:
    """prompt and max_new_tokens sampled after it, decoded; seed fixes the draws."""
    ids = encode_for_inference(tokenizer, prompt) or [0]
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    was_training = model.training
    model.eval()
    out = generate(model, torch.tensor([ids], device=device), max_new_tokens, max_seq_len, temperature, top_k, gen)
    model.train(was_training)
    return tokenizer.decode(out[0].tolist())


def print_piece(piece: str) -> None:
    """A chat answer's stream target: each piece on the same line, shown at once."""
    print(piece, end="", flush=True)


@torch.no_grad()
def chat_reply(model: nn.Module, hf_tokenizer, message: str, max_new_tokens: int, max_seq_len: int,
               temperature: float = 0.8, top_k: Optional[int] = 40, seed: Optional[int] = None,
               stream: Optional[Callable[[str], Any]] = None) -> str:
    """Sample an answer after the chat-formatted message, one token at a time, until an end-of-turn token."""
    text = hf_tokenizer.apply_chat_template([{"role": "user", "content": message}], tokenize=False,
                                            add_generation_prompt=True)
    ids = hf_tokenizer(text, add_special_tokens=False)["input_ids"]
    stop = _stop_ids(model, hf_tokenizer)
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    was_training = model.training
    model.eval()
    answer, shown = [], ""
    for new in sample_tokens(model, torch.tensor([ids], device=device), max_new_tokens, max_seq_len, temperature,
                             top_k, gen):  # (1, 1) each
        token = int(new[0, 0])
        if token in stop:
            break
        answer.append(token)
        decoded = hf_tokenizer.decode(answer, skip_special_tokens=True)
        if stream is not None and not decoded.endswith("\ufffd"):  # half a multi-byte character waits
            stream(decoded[len(shown):])
            shown = decoded
    model.train(was_training)
    reply = hf_tokenizer.decode(answer, skip_special_tokens=True)
    if stream is not None and reply != shown:
        stream(reply[len(shown):])
    return reply


def _stop_ids(model: nn.Module, hf_tokenizer) -> set[int]:
    """End-of-turn ids: the tokenizer's eos, the model's generation config's (chat models list several) and the
    special token the chat template closes an answer with (Qwen's <|im_end|>, Llama 3's <|eot_id|>)."""
    ids = {hf_tokenizer.eos_token_id, template_end_id(hf_tokenizer)}
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    ids.update(eos if isinstance(eos, (list, tuple)) else [eos])
    return {i for i in ids if i is not None}


def template_end_id(hf_tokenizer) -> Optional[int]:
    """The special token the chat template writes right after an assistant's answer, or None when it writes
    plain text there (or cannot format an answer alone)."""
    from jinja2 import TemplateError

    marker = "\u2063answer\u2063"  # text no template adds itself
    chat = [{"role": "user", "content": "?"}, {"role": "assistant", "content": marker}]
    try:
        text = hf_tokenizer.apply_chat_template(chat, tokenize=False)
    except (TemplateError, ValueError, TypeError):  # a template that insists on other turns
        return None
    after = text.split(marker, 1)[1] if marker in text else ""
    first = hf_tokenizer(after, add_special_tokens=False)["input_ids"][:1]
    special = set(hf_tokenizer.all_special_ids) | set(getattr(hf_tokenizer, "added_tokens_decoder", {}))
    return first[0] if first and first[0] in special else None


@torch.no_grad()
def generate(model: nn.Module, idx: torch.Tensor, max_new_tokens: int, max_seq_len: int,
             temperature: float = 0.8, top_k: Optional[int] = 40,
             generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Sample max_new_tokens after idx (B, T) from any model mapping (B, T) ids to (B, T, V) logits."""
    new = list(sample_tokens(model, idx, max_new_tokens, max_seq_len, temperature, top_k, generator))
    return torch.cat([idx, *new], dim=1)  # (B, T + max_new_tokens)


def sample_tokens(model: nn.Module, idx: torch.Tensor, max_new_tokens: int, max_seq_len: int,
                  temperature: float = 0.8, top_k: Optional[int] = 40,
                  generator: Optional[torch.Generator] = None) -> Iterator[torch.Tensor]:
    """Each sampled token (B, 1) in turn, conditioned on at most max_seq_len tokens before it. A transformers
    language model keeps its KV cache (each step runs the new token alone); any other model reads its window."""
    if temperature <= 0:
        raise InferenceError(f"temperature={temperature} must be > 0")
    next_logits = KVCacheStep(model, max_seq_len) if uses_kv_cache(model) else WindowStep(model, max_seq_len)
    for _ in range(max_new_tokens):
        with torch.no_grad():  # per step: a no_grad held across the yield would leak into the caller's code
            logits = next_logits(idx).float() / temperature  # (B, V)
            if top_k is not None:
                kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]  # (B, 1)
                logits = logits.masked_fill(logits < kth, float("-inf"))
            token = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)  # (B, 1)
        idx = torch.cat([idx, token], dim=1)  # (B, T+1)
        yield token


def uses_kv_cache(model: nn.Module) -> bool:
    """A transformers model that generates (peft's wrapper looked through): its forward keeps a KV cache."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    can_generate = getattr(base, "can_generate", None)
    return callable(can_generate) and type(base).__module__.startswith("transformers.") and can_generate()


class WindowStep:
    """The next-token logits (B, V) from the whole window: the last max_seq_len tokens, run again each step."""

    def __init__(self, model: nn.Module, max_seq_len: int):
        self.model, self.max_seq_len = model, max_seq_len

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        return model_logits(self.model, idx[:, -self.max_seq_len:])[:, -1, :]


class KVCacheStep:
    """The next-token logits (B, V) from the tokens the cache has not seen yet. The cached context is
    idx[:, start:seen]; when it would pass max_seq_len, it starts again from the last max_seq_len // 2 tokens, so it
    never grows past what was trained and is rebuilt once per max_seq_len // 2 tokens, not every step."""

    def __init__(self, model: nn.Module, max_seq_len: int):
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        # transformers 5 calls the argument `cache`; 4.x (Colab's) `past_key_values`
        self.argument = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
        self.model, self.max_seq_len, self.cache, self.start, self.seen = model, max_seq_len, None, 0, 0

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        total = idx.size(1)
        if self.cache is None or total - self.start > self.max_seq_len:
            keep = self.max_seq_len if self.cache is None else max(1, self.max_seq_len // 2)
            self.cache, self.start = None, max(0, total - keep)
            self.seen = self.start
        out = self.model(input_ids=idx[:, self.seen:], use_cache=True, **{self.argument: self.cache})
        self.cache = out["cache"] if "cache" in out else out["past_key_values"]
        self.seen = total
        return out.logits[:, -1, :]


@torch.no_grad()
def classify_texts(model: nn.Module, tokenizer, texts: str | list[str], max_seq_len: int, pad_id: int,
                   batch_size: int = 64) -> torch.Tensor:
    """Class probabilities (N, num_classes) for texts: each encoded, cut to max_seq_len, right-padded."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts:
        raise InferenceError("no texts to classify; pass a string or a list of strings")
    return torch.softmax(texts_to_logits(model, tokenizer, texts, max_seq_len, pad_id, batch_size), dim=-1)
