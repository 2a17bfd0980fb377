"""Evaluate a trained model on a file it never saw: loss and perplexity, or accuracy, F1 and a confusion matrix.

The file is read as training reads its data (a .txt, .csv or .jsonl file; the run's text_column and
label_column) and encoded with the model's own tokenizer. A language model is scored on the file's
non-overlapping windows of max_seq_len tokens, as its validation split was cut; a classifier on each
row, truncated to max_seq_len. The metrics come from torchmetrics.

Chat and instruction rows for a pretrained model (messages, prompt/completion, instruction/output: see
utils.data.chat) are formatted with the run's chat template and encoded by the one encoding training uses,
so the loss counts the tokens training counts (train_on: the answers only, or everything). With
exact_match, each conversation's last answer is also generated greedily (transformers' generate, with the
model's cache) after the turns before it and compared with the file's answer.

    python -m utils.training evaluate runs/default --data held_out.txt [--checkpoint last] [--json m.json]
    python -m utils.training evaluate runs/chat --data held_out.jsonl --exact-match
    load_predictor("runs/reviews").evaluate("test.csv")     # an Evaluation; .describe() prints it
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from utils.data import DataSpec, open_source
from utils.data.chat import IGNORE_INDEX, SHAPE_WORDS, TRAIN_ON_WORDS, ChatExamples, ChatSource, encode_chat
from utils.data.sources import DataError
from utils.data.text import TokenWindows, encode_blocks
from utils.files import atomic_write_text
from utils.models.calling import encode_for_inference, ids_to_logits, model_logits


@dataclass
class Evaluation:
    """The numbers of one evaluation; to_json() writes them, describe() prints them."""

    task: str
    data: str  # the file evaluated
    model: str  # the folder and checkpoint (or export) evaluated
    loss: float  # mean cross-entropy (per token for a language model, per text for a classifier)
    examples: int  # windows (lm) or texts (classification)
    tokens: int  # tokens scored (lm: targets; classification: the texts' tokens after truncation)
    perplexity: Optional[float] = None  # lm: exp(loss)
    accuracy: Optional[float] = None
    macro_f1: Optional[float] = None
    label_names: list[str] = field(default_factory=list)
    per_class: dict = field(default_factory=dict)  # label -> {"precision", "recall", "f1", "support"}
    confusion: list = field(default_factory=list)  # confusion[true][predicted], counts
    figure: Optional[str] = None  # the confusion matrix PNG, when one was written
    chat: str = ""  # chat data: its shape and what the loss counts, e.g. "chat messages, loss on the responses only"
    exact_match: Optional[float] = None  # chat data, when asked: share of greedy last answers equal to the file's
    answered: int = 0  # conversations whose last answer was generated for exact_match

    def to_dict(self) -> dict:
        return asdict(self)

    def save_json(self, path: str | Path) -> Path:
        path = Path(path).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    def describe(self) -> str:
        head = [f"Evaluated {self.model} on {self.data}"]
        if self.task == "lm" and self.chat:
            lines = [f"conversations: {self.examples:,} ({self.chat}; {self.tokens:,} tokens scored)",
                     f"loss:        {self.loss:.4f}", f"perplexity:  {self.perplexity:.4f}"]
            if self.exact_match is not None:
                lines.append(f"exact match: {self.exact_match:.4f} ({round(self.exact_match * self.answered)} of "
                             f"{self.answered} greedy answers equal the file's)")
            return "\n".join(head + lines)
        if self.task == "lm":
            return "\n".join(head + [f"windows:     {self.examples:,} of {self.tokens // max(self.examples, 1)} tokens "
                                     f"({self.tokens:,} tokens scored)",
                                     f"loss:        {self.loss:.4f}", f"perplexity:  {self.perplexity:.4f}"])
        lines = head + [f"texts:       {self.examples:,} ({self.tokens:,} tokens)", f"loss:        {self.loss:.4f}",
                        f"accuracy:    {self.accuracy:.4f}", f"macro F1:    {self.macro_f1:.4f}", ""]
        return "\n".join(lines + per_class_table(self) + [""] + confusion_table(self))


def per_class_table(ev: Evaluation) -> list[str]:
    width = max(8, *(len(n) for n in ev.label_names))
    rows = [f"{'class':<{width}}  precision  recall      f1  support"]
    for name in ev.label_names:
        c = ev.per_class[name]
        rows.append(f"{name:<{width}}  {c['precision']:9.4f}  {c['recall']:6.4f}  {c['f1']:6.4f}  {c['support']:7d}")
    return rows


CORNER = "true \\ predicted"


def confusion_table(ev: Evaluation) -> list[str]:
    """Rows: the file's labels; columns: what the model predicted."""
    first = max(len(CORNER), *(len(n) for n in ev.label_names))
    cell = 2 + max(*(len(n) for n in ev.label_names), *(len(str(v)) for row in ev.confusion for v in row))
    header = f"{CORNER:<{first}}" + "".join(f"{n:>{cell}}" for n in ev.label_names)
    rows = [f"{name:<{first}}" + "".join(f"{v:>{cell}}" for v in row)
            for name, row in zip(ev.label_names, ev.confusion)]
    return ["Confusion matrix (rows: true label, columns: predicted)", header, *rows]


def evaluate_predictor(predictor, data: str | Path, batch_size: int = 32, figure: Optional[str | Path] = None,
                       description: str = "", exact_match: bool = False) -> Evaluation:
    """Score a Predictor (a run, an export, a TrainingResult) on a data file; see the module docstring.
    figure: where a classifier's confusion matrix PNG goes (None: no figure). exact_match: chat data only, also
    generate each conversation's last answer greedily and count those equal to the file's."""
    config = predictor.config
    source = open_source(_spec(config, data))
    model_name = description or str(getattr(predictor, "checkpoint", None) or getattr(predictor, "output_dir", "")
                                    or "the model")
    if isinstance(source, ChatSource):
        return evaluate_chat(predictor, source, batch_size, str(data), model_name, exact_match)
    if exact_match:
        raise DataError(f"exact match compares a chat model's answers with those of chat rows, and {data} holds "
                        "none: give rows with a 'messages' list (or prompt/completion, or instruction/output)")
    if config.task == "lm":
        windows = file_windows(predictor.tokenizer, source, config.max_seq_len, data)
        return evaluate_windows(predictor.model, windows, batch_size, str(data), model_name)
    ev = _evaluate_rows(predictor, source, batch_size, str(data), model_name)
    if figure is not None:
        ev.figure = str(save_confusion_figure(ev, figure))
    return ev


def _spec(config, data: str | Path) -> DataSpec:
    # "model": a pretrained model's own tokenizer, which is what lets open_source read chat rows as chat data
    return DataSpec(task=config.task, source="file", name="", subset="", path=str(data),
                    text_column=config.text_column, label_column=config.label_column, val_split=0.0, seed=0,
                    max_seq_len=config.max_seq_len, tokenizer="model" if config.model_source == "pretrained" else "",
                    tokenizer_path="", vocab_size=0, cache_dir=Path("."), train_on=config.train_on)


def file_windows(tokenizer, source, max_seq_len: int, data) -> TokenWindows:
    """Every non-overlapping window of max_seq_len tokens in the file (split_windows cuts the run's data so)."""
    tokens = encode_blocks(tokenizer, source.text_blocks(), source.size_bytes)
    n = (len(tokens) - 1) // max_seq_len
    if n < 1:
        raise DataError(f"{data} holds {len(tokens)} tokens, fewer than one window of max_seq_len={max_seq_len} "
                        "plus the token it predicts; evaluate on more text.")
    return TokenWindows(tokens, max_seq_len, torch.arange(n) * max_seq_len)


@torch.no_grad()
def evaluate_windows(model: torch.nn.Module, windows: Dataset, batch_size: int = 32, data: str = "",
                     model_name: str = "") -> Evaluation:
    """A language model's mean next-token loss over (x, y) items, per counted token: the validation's number.
    Targets of IGNORE_INDEX (a chat prompt, padding) are not counted, as training does not count them; chat
    examples (ChatExamples) are padded into batches by their own collate."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = torch.zeros((), dtype=torch.float64, device=device), 0
    for x, y in DataLoader(windows, batch_size=batch_size, collate_fn=getattr(windows, "collate", None)):
        logits = model_logits(model, x.to(device))  # (B, T, V)
        y = y.to(device).reshape(-1)
        total += F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y, reduction="sum",
                                 ignore_index=IGNORE_INDEX).double()
        count += int((y != IGNORE_INDEX).sum())
    model.train(was_training)
    loss = float(total) / count
    return Evaluation("lm", data, model_name, loss, len(windows), count, perplexity=math.exp(loss))


def evaluate_chat(predictor, source: ChatSource, batch_size: int, data: str, model_name: str,
                  exact_match: bool = False) -> Evaluation:
    """The loss over the tokens training counts (encode_chat marks them, with the run's train_on), and with
    exact_match the share of greedy last answers equal to the file's."""
    from utils.data.tokenizers import chat_tokenizer

    config = predictor.config
    tokenizer = _chat_encoder(predictor.tokenizer, chat_tokenizer(predictor.tokenizer, config))
    encoded, counts, _ = encode_chat(source, tokenizer, config.max_seq_len, config.train_on)
    kept = len(encoded.bounds) - 1
    if kept == 0:
        raise DataError(f"{data} has no conversation with an answer to score ({counts.rows:,} read); each needs "
                        "a message with role 'assistant'")
    examples = ChatExamples(encoded, torch.arange(kept), tokenizer.pad_id if tokenizer.pad_id is not None else 0)
    ev = evaluate_windows(predictor.model, examples, batch_size, data, model_name)
    ev.chat = f"{SHAPE_WORDS[source.shape]}, {TRAIN_ON_WORDS[config.train_on]}"
    if exact_match:
        hits, ev.answered = greedy_exact_match(predictor.model, tokenizer.hf, source)
        ev.exact_match = hits / ev.answered if ev.answered else 0.0
    return ev


def _chat_encoder(tokenizer, hf):
    """The run's tokenizer when it carries the transformers one encode_chat formats with, else that one wrapped."""
    if getattr(tokenizer, "hf", None) is hf:
        return tokenizer
    from utils.data.tokenizers import ModelTokenizer

    return ModelTokenizer(hf, classify=False)


@torch.no_grad()
def greedy_exact_match(model: torch.nn.Module, hf, source: ChatSource) -> tuple[int, int]:
    """(equal, answered): each conversation's last assistant message generated greedily after the messages before
    it (transformers' generate, which keeps the model's key/value cache), cut at the template's end of turn and
    compared, surrounding whitespace aside, with the file's. Conversations that open with their only answer are
    left out: there is no prompt to answer."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    end = end_of_turn(hf)
    stops = _stop_ids(model, hf, end)
    hits = answered = 0
    shown_at = time.monotonic()
    for _, messages in source.conversations():
        if time.monotonic() - shown_at >= PROGRESS_SECONDS:  # a long file: show it is moving
            print(f"Exact match: {answered:,} answers generated, {hits:,} equal so far", flush=True)
            shown_at = time.monotonic()
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=0)
        if last == 0:
            continue
        prompt = hf.apply_chat_template(messages[:last], tokenize=False, add_generation_prompt=True)
        ids = torch.tensor([hf(prompt, add_special_tokens=False)["input_ids"]], device=device)  # (1, T)
        reference = messages[last]["content"]
        budget = len(hf(reference + end, add_special_tokens=False)["input_ids"]) + 8  # room to differ, then stop
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=budget,
                             do_sample=False, eos_token_id=stops, pad_token_id=hf.pad_token_id)
        answer = _cut(hf.decode(out[0, ids.size(1):].tolist(), skip_special_tokens=False),
                      [end, hf.eos_token or "", hf.pad_token or ""])
        hits += answer.strip() == reference.strip()
        answered += 1
    model.train(was_training)
    return hits, answered


def _stop_ids(model: torch.nn.Module, hf, end: str) -> list[int]:
    """Where a greedy answer stops: the tokenizer's eos, the generation config's (chat models list several), and the
    template's end-of-turn text when it is one token."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = {hf.eos_token_id, *(eos if isinstance(eos, (list, tuple)) else [eos])}
    if end in hf.get_vocab():
        ids.add(hf.convert_tokens_to_ids(end))
    return sorted(i for i in ids if i is not None)


PROGRESS_SECONDS = 10.0  # exact match: a progress line at least this often
ANSWER_PROBE = "\u2042answer\u2042"  # a text no template writes itself, to find what follows an answer


def end_of_turn(hf) -> str:
    """The text the chat template writes after an assistant's answer (ChatML's "<|im_end|>", an eos token), or ""."""
    text = hf.apply_chat_template([{"role": "user", "content": "?"}, {"role": "assistant", "content": ANSWER_PROBE}],
                                  tokenize=False)
    at = text.find(ANSWER_PROBE)
    return text[at + len(ANSWER_PROBE):].strip() if at >= 0 else ""


def _cut(text: str, markers: list[str]) -> str:
    """text up to the first of the markers in it."""
    found = [text.find(m) for m in markers if m and m in text]
    return text[:min(found)] if found else text


def _evaluate_rows(predictor, source, batch_size: int, data: str, model_name: str) -> Evaluation:
    names = list(predictor.label_names)
    texts, labels = _labelled_rows(source, names, data)
    encoded = [encode_for_inference(predictor.tokenizer, t)[:predictor.config.max_seq_len] for t in texts]
    logits = ids_to_logits(predictor.model, encoded, predictor.pad_id, batch_size)  # (N, K)
    target = torch.tensor(labels)
    return classification_metrics(logits, target, names, data, model_name, sum(map(len, encoded)))


def _labelled_rows(source, names: list[str], data: str) -> tuple[list[str], list[int]]:
    index = {name: i for i, name in enumerate(names)}
    texts, labels, unseen = [], [], {}
    for row in source.rows():
        label = str(row.label)
        if label not in index:
            unseen.setdefault(label, row.where)
            continue
        texts.append(row.text)
        labels.append(index[label])
    if unseen:
        shown = ", ".join(f"{label!r} ({where})" for label, where in list(unseen.items())[:5])
        raise DataError(f"{data} has labels the model never saw: {shown}{' and more' if len(unseen) > 5 else ''}; "
                        f"it knows {', '.join(map(repr, names))}. Fix or remove those rows.")
    if not texts:
        raise DataError(f"{data} has no labelled rows to evaluate.")
    return texts, labels


def classification_metrics(logits: torch.Tensor, target: torch.Tensor, names: list[str], data: str = "",
                           model_name: str = "", tokens: int = 0) -> Evaluation:
    """Accuracy, macro-F1, per-class precision/recall/F1 and the confusion matrix, from torchmetrics."""
    from torchmetrics.functional.classification import (multiclass_accuracy, multiclass_confusion_matrix,
                                                        multiclass_f1_score, multiclass_precision,
                                                        multiclass_recall)

    k, preds = len(names), logits.argmax(dim=-1)
    kw = dict(num_classes=k, average="none", zero_division=0)
    precision, recall, f1 = (fn(preds, target, **kw).tolist()
                             for fn in (multiclass_precision, multiclass_recall, multiclass_f1_score))
    confusion = multiclass_confusion_matrix(preds, target, num_classes=k).tolist()
    per_class = {name: {"precision": precision[i], "recall": recall[i], "f1": f1[i], "support": sum(confusion[i])}
                 for i, name in enumerate(names)}
    return Evaluation(
        "classification", data, model_name, float(F.cross_entropy(logits, target)), len(target), tokens,
        accuracy=float(multiclass_accuracy(preds, target, num_classes=k, average="micro")),
        macro_f1=float(multiclass_f1_score(preds, target, num_classes=k, average="macro", zero_division=0)),
        label_names=list(names), per_class=per_class, confusion=confusion)


def save_confusion_figure(ev: Evaluation, path: str | Path) -> Path:
    """The confusion matrix as a PNG: counts in the cells, true labels down, predictions across."""
    from matplotlib.figure import Figure  # no pyplot: the notebook's backend is left alone

    k = len(ev.label_names)
    fig = Figure(figsize=(min(2.5 + 0.7 * k, 10), min(2 + 0.7 * k, 10)))
    ax = fig.subplots()
    counts = torch.tensor(ev.confusion, dtype=torch.float)
    ax.imshow(counts, cmap="Blues")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(ev.confusion[i][j]), ha="center", va="center",
                    color="white" if counts[i, j] > counts.max() / 2 else "black")
    ax.set(xticks=range(k), yticks=range(k), xticklabels=ev.label_names, yticklabels=ev.label_names,
           xlabel="predicted", ylabel="true label",
           title=f"accuracy {ev.accuracy:.3f}, macro F1 {ev.macro_f1:.3f}")
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
