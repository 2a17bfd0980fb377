"""Chat and instruction data for fine-tuning a pretrained language model (model_source="pretrained", task "lm").

Rows of a JSONL or CSV file, or a Hugging Face dataset, in one of four shapes, told apart by the first
row's keys:

    messages            {"messages": [{"role": "user", "content": ...}, {"role": "assistant", ...}]}
    sharegpt            {"conversations": [{"from": "human", "value": ...}, {"from": "gpt", ...}]}
    alpaca              {"instruction": ..., "input": ... (optional), "output": ...}
    prompt_completion   {"prompt": ..., "completion": ...}

Every row becomes a list of messages (ShareGPT's human/gpt/system become user/assistant/system; Alpaca's
instruction, a blank line and its input are the user's message, its output the answer; a prompt is the
user's message, its completion the answer) and is written out by the tokenizer's own chat template, or
PLAIN_CHAT_TEMPLATE for a tokenizer without one.

Which tokens are trained on is decided on the characters of that one rendered text, then carried to the
tokens of one tokenization of it through the fast tokenizer's offsets: templating the prompt alone and
prompt + answer separately can tokenize their boundary differently (PITFALLS.md). With train_on="responses"
the trained characters are each assistant turn's answer and the template's end-of-turn text after it (so
the model learns to stop); the system and user turns and the template's headers are not.

Items are the kit's (x, y) for task "lm": y is the next token of each x, and -100 (F.cross_entropy's
ignore_index) where that next token is not trained on. A batch is padded to its longest example (x with
the pad id, y with -100), see ChatExamples.collate; or, for a model that keeps attention within each
conversation, its conversations are packed into fewer rows with position ids (utils.data.packing).

The encoded examples are cached in the run's data_cache/ (chat_cache_file names the data, the tokenizer,
its chat template, train_on and max_seq_len), so a rerun after a disconnect does not encode them again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from torch.utils.data import Dataset

from utils.data.packing import IGNORE_INDEX, PAD_MULTIPLE, collate_packed, packed_shapes, rounded  # noqa: F401
from utils.data.sources import DataError, RowSource
from utils.data.tokenizers import tokenizer_fingerprint
from utils.files import atomic_writer

CHAT_CACHE_VERSION = "1"  # part of every chat cache key: bump when what encode_chat returns changes
ENCODE_BATCH = 256  # conversations tokenized together (the fast tokenizer runs a batch in parallel)
SAMPLE_CHARS = 1500  # the printed sample of a formatted example is cut here
TRAINED_OPEN, TRAINED_CLOSE = "\u27e6", "\u27e7"  # ⟦ ⟧ around trained text in the printed sample

SHAPE_WORDS = {"messages": "chat messages", "sharegpt": "ShareGPT conversations",
               "alpaca": "Alpaca instructions", "prompt_completion": "prompt/completion pairs"}
SHAPE_KEYS = {"messages": ("messages",), "sharegpt": ("conversations",), "alpaca": ("instruction", "output"),
              "prompt_completion": ("prompt", "completion")}
SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system", "user": "user", "assistant": "assistant"}
TRAIN_ON_WORDS = {"responses": "loss on the responses only", "all": "loss on the whole text"}

# For a tokenizer without a chat template: each turn under a "### Role:" header, an answer closed by the
# end-of-text token (so the model learns to stop), a blank line between turns. For example
#   ### User:\nWhat is 2+2?\n\n### Assistant:\n4<|endoftext|>\n\n
PLAIN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '### ' + message['role'] | capitalize + ':\\n' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}"
    "{{ '\\n\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Assistant:\\n' }}{% endif %}"
)


def detect_shape(record: dict) -> Optional[str]:
    """The chat shape a row's keys name, or None for a row that is none of them."""
    for shape, keys in SHAPE_KEYS.items():
        if all(key in record for key in keys):
            return shape
    return None


def chat_template(hf) -> str:
    """The transformers tokenizer's own chat template; one without gets PLAIN_CHAT_TEMPLATE, set on it so that
    an export saves it and generation formats a chat the way training did."""
    if not getattr(hf, "chat_template", None):
        hf.chat_template = PLAIN_CHAT_TEMPLATE
        print("Tokenizer: it has no chat template; using the kit's plain one ('### User:' / '### Assistant:' "
              "headers, answers end with the end-of-text token), saved with the export")
    return hf.chat_template


class ChatSource:
    """Rows in a chat shape, read from a RowSource as lists of {"role", "content"} messages."""

    def __init__(self, rows: RowSource, shape: str):
        self.rows, self.shape = rows, shape
        self.description = rows.description
        self.size_bytes = rows.size_bytes

    @property
    def fingerprint(self) -> str:
        return self.rows.fingerprint

    @property
    def cache_name(self) -> str:
        return self.rows.cache_name

    def conversations(self) -> Iterator[tuple[str, list[dict]]]:
        """(where, messages) for every row, in order; a row that is not in the shape is an error naming it."""
        for where, record in self.rows.records():
            yield where, to_messages(record, self.shape, f"{self.description} {where}")

    def text_blocks(self) -> Iterator[str]:  # fitting a tokenizer: the kit's own never trains on chat data
        raise DataError(f"{self.description} holds {SHAPE_WORDS[self.shape]}, which only a pretrained model's own "
                        "tokenizer formats (model_source='pretrained')")


def open_chat(rows: RowSource, text_column: str, pretrained: bool) -> Optional[ChatSource]:
    """The rows as chat data when the first row is in a chat shape and a pretrained model's tokenizer can format
    them; None for other rows. Chat rows without text_column for any other model are an error saying what to pick."""
    first = next(rows.records(), None)
    shape = detect_shape(first[1]) if first is not None else None
    if shape is None:
        return None
    if not pretrained and text_column not in first[1]:
        raise DataError(f"{rows.description} holds {SHAPE_WORDS[shape]}, which a pretrained model's chat template "
                        "formats: choose model_source='pretrained' (a chat model such as "
                        f"Qwen/Qwen2.5-0.5B-Instruct), or give rows with a {text_column!r} column (text_column)")
    return ChatSource(rows, shape) if pretrained else None


# ---------------------------------------------------------------------------------------------- rows

def to_messages(record: dict, shape: str, where: str) -> list[dict]:
    """One row as a list of {"role", "content"} messages; where ("data.jsonl line 3") starts every error."""
    missing = [key for key in SHAPE_KEYS[shape] if key not in record]
    if missing:
        raise DataError(f"{where} has no {missing[0]!r} field, which rows of {SHAPE_WORDS[shape]} need "
                        f"({' and '.join(map(repr, SHAPE_KEYS[shape]))}, as the first row has); it has: "
                        f"{', '.join(map(str, record)) or '(none)'}")
    if shape in ("messages", "sharegpt"):
        key = SHAPE_KEYS[shape][0]
        return _turns(_listed(record[key], key, where), key, where)
    if shape == "alpaca":
        instruction = _text(record["instruction"], "instruction", where)
        extra = record.get("input")
        extra = "" if extra is None else _text(extra, "input", where)
        user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        return [{"role": "user", "content": user},
                {"role": "assistant", "content": _text(record["output"], "output", where)}]
    prompt, completion = record["prompt"], record["completion"]
    if isinstance(prompt, list) or isinstance(completion, list):  # TRL's conversational prompt/completion
        return (_turns(_listed(prompt, "prompt", where), "prompt", where)
                + _turns(_listed(completion, "completion", where), "completion", where))
    return [{"role": "user", "content": _text(prompt, "prompt", where)},
            {"role": "assistant", "content": _text(completion, "completion", where)}]


def _listed(value: Any, key: str, where: str) -> list:
    if isinstance(value, str) and value.lstrip().startswith("["):  # a CSV cell holds the list as JSON text
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: {key!r} is not a valid JSON list ({e.msg})") from None
    if not isinstance(value, list):
        raise DataError(f"{where}: {key!r} holds {type(value).__name__} {str(value)[:40]!r}, not a list of messages")
    if not value:
        raise DataError(f"{where}: {key!r} is an empty list; a conversation needs at least one message")
    return value


def _turns(items: list, key: str, where: str) -> list[dict]:
    """{"role", "content"} items as they are; ShareGPT's {"from", "value"} with its roles renamed."""
    messages = []
    for number, item in enumerate(items, start=1):
        at = f"{where}: message {number} of {key!r}"
        if not isinstance(item, dict):
            raise DataError(f"{at} is a {type(item).__name__}, not an object with 'role' and 'content'")
        if "from" in item or "value" in item:
            role, content = _sharegpt_role(item, at), item.get("value")
            if "value" not in item:
                raise DataError(f"{at} has no 'value' (ShareGPT messages need 'from' and 'value')")
        else:
            for field in ("role", "content"):
                if field not in item:
                    raise DataError(f"{at} has no {field!r} (each message needs 'role' and 'content'); it has: "
                                    f"{', '.join(map(str, item)) or '(none)'}")
            role, content = item["role"], item["content"]
        if not isinstance(role, str) or not role.strip():
            raise DataError(f"{at} has role {role!r}; a role is a word such as 'user' or 'assistant'")
        messages.append({"role": role, "content": _text(content, "content", at)})
    return messages


def _sharegpt_role(item: dict, at: str) -> str:
    if "from" not in item:
        raise DataError(f"{at} has no 'from' (ShareGPT messages need 'from' and 'value')")
    role = SHAREGPT_ROLES.get(item["from"])
    if role is None:
        raise DataError(f"{at} is from {item['from']!r}; ShareGPT roles are {', '.join(map(repr, SHAREGPT_ROLES))}")
    return role


def _text(value: Any, key: str, where: str) -> str:
    if not isinstance(value, str):
        raise DataError(f"{where}: {key!r} holds {'null' if value is None else type(value).__name__}, not text")
    return value


# ---------------------------------------------------------------------------------------------- formatting

def render(hf, messages: list[dict], template: str, train_on: str = "responses") -> tuple[str, list[tuple[int, int]]]:
    """The conversation as the chat template writes it, and the character spans trained on.

    Each assistant turn's span starts where the template's text for the conversation so far, ending in the
    generation prompt (the assistant header), stops, and ends at the end of the text up to and including
    that turn (trailing whitespace left out): the answer and the end-of-turn marker. A template that writes
    earlier turns differently once later ones follow (some drop reasoning from history) is handled by finding
    the answer's text in the whole conversation instead.
    """
    full = _apply(hf, messages, template, False)
    if train_on == "all":
        return full, [(0, len(full))]
    spans, cursor = [], 0
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        upto = _apply(hf, messages[: i + 1], template, False)
        if i:
            start = _common_prefix(_apply(hf, messages[:i], template, True), upto)
        else:  # the conversation opens with the answer: no prompt to render (templates refuse an empty one)
            start = max(0, upto.find(message["content"]))
        end = len(upto.rstrip())
        if full.startswith(upto) and start >= cursor:
            spans.append((start, end))
            cursor = end
            continue
        span = _find_answer(full, upto[start:end], message["content"], cursor, i)
        if span is not None:
            spans.append(span)
            cursor = span[1]
    return full, spans


def _find_answer(full: str, turn: str, content: str, cursor: int, i: int) -> Optional[tuple[int, int]]:
    """Where an answer the template writes differently in history sits in the whole text, after cursor: its content
    (or, as reasoning models' templates keep only that of earlier turns (Qwen3), the part after "</think>"), and
    the turn's end-of-turn text after it where that follows there too. None for an empty answer."""
    if not content:
        return None
    for candidate in dict.fromkeys((content, content.split("</think>")[-1].lstrip("\n"))):
        found = full.find(candidate, cursor) if candidate else -1
        if found >= 0:
            at = turn.rfind(candidate)
            tail = turn[at + len(candidate):] if at >= 0 else ""
            stop = found + len(candidate)
            return found, stop + (len(tail) if full.startswith(tail, stop) else 0)
    raise DataError(f"the chat template leaves out assistant message {i + 1} ({content[:40]!r}) when later messages "
                    "follow, so its answer cannot be trained on; use train_on='all' or another model's template")


def _apply(hf, messages: list[dict], template: str, generation_prompt: bool) -> str:
    return hf.apply_chat_template(messages, chat_template=template, tokenize=False,
                                  add_generation_prompt=generation_prompt)


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # the longest equal prefix, by halving
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if a[:mid] == b[:mid] else (lo, mid - 1)
    return lo


def trained_tokens(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> torch.Tensor:
    """(N,) bool: which tokens (by their character offsets) overlap a trained span (spans sorted, not overlapping)."""
    if not offsets or not spans:
        return torch.zeros(len(offsets), dtype=torch.bool)
    tokens = torch.tensor(offsets, dtype=torch.int64).view(-1, 2)  # (N, 2) start, end
    trained = torch.tensor(spans, dtype=torch.int64)  # (S, 2)
    j = torch.searchsorted(trained[:, 1].contiguous(), tokens[:, 0].contiguous(), right=True)  # first span ending
    # after each token's start; a zero-width token counts as one character wide
    reaches = torch.maximum(tokens[:, 1], tokens[:, 0] + 1) > trained[j.clamp(max=len(trained) - 1), 0]
    return (j < len(trained)) & reaches


def marked_text(text: str, offsets: list[tuple[int, int]], marks: torch.Tensor) -> str:
    """The text of these tokens with ⟦ ⟧ around each stretch of trained tokens."""
    pieces, inside, pos = [], False, 0
    for (s, e), trained in zip(offsets, marks.tolist()):
        if trained != inside:
            pieces.append(text[pos:s] + (TRAINED_OPEN if trained else TRAINED_CLOSE))
            pos, inside = s, trained
        pieces.append(text[pos:e])
        pos = max(pos, e)
    return "".join(pieces) + (TRAINED_CLOSE if inside else "")


# ---------------------------------------------------------------------------------------------- examples

@dataclass
class Encoded:
    """Every kept example's tokens end to end: example i is ids[bounds[i]:bounds[i + 1]]."""

    ids: torch.Tensor  # (N,) int32
    trained: torch.Tensor  # (N,) bool: the token is a target the loss counts
    bounds: torch.Tensor  # (E + 1,) int64


class ChatExamples(Dataset):
    """Some of the encoded examples (a train or val split); item i is (x (T,), y (T,)), T = its length - 1."""

    def __init__(self, encoded: Encoded, indices: torch.Tensor, pad_id: int, pack_to: Optional[int] = None,
                 packing_note: str = ""):
        self.encoded, self.indices, self.pad_id = encoded, indices, pad_id
        self.pack_to = pack_to  # batches packed into rows of up to this many tokens (utils.data.packing); None: padded
        self.packing_note = packing_note  # why a batch is not packed, for the run's packing line ("": it is)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        k = int(self.indices[i])
        s, e = int(self.encoded.bounds[k]), int(self.encoded.bounds[k + 1])
        ids = self.encoded.ids[s:e].long()  # (T + 1,)
        y = torch.where(self.encoded.trained[s + 1: e], ids[1:], IGNORE_INDEX)  # the one shift, as in TokenWindows
        return ids[:-1], y

    def lengths(self) -> torch.Tensor:
        """Each example's input length (its tokens less the last), from the bounds: no pass over the tokens."""
        picked = self.indices.long()
        return self.encoded.bounds[picked + 1] - self.encoded.bounds[picked] - 1

    def padded_length(self, batch_size: int, samples: int = 256) -> int:
        """The mean length collate pads a shuffled batch of batch_size examples to (seeded samples): the shape of
        the run's steps, which an estimate timed at max_seq_len would overstate several times over. Packed batches
        (pack_to) are fewer, longer rows: their mean tokens divided by batch_size, the length whose batch_size rows
        compute as many tokens."""
        lengths = self.lengths()
        if len(lengths) == 0:
            return PAD_MULTIPLE
        if self.pack_to:  # the tokens of a packed batch, spread over batch_size rows: the same work to time
            tokens = packed_shapes(lengths, batch_size, self.pack_to, samples)[:, 1]  # (samples,)
            return max(1, round(float(tokens.mean()) / batch_size))
        rows = torch.randint(len(lengths), (samples, batch_size), generator=torch.Generator().manual_seed(0))
        padded = rounded(lengths[rows].amax(dim=1))  # (samples,)
        return int(padded.double().mean().round())

    def longest_padded(self) -> int:
        """The longest batch collate can make: the longest example, rounded up as it pads. Packed too: a packed batch
        never computes more tokens than batch_size rows of its longest example (utils.data.packing.pack_rows)."""
        longest = int(self.lengths().max()) if len(self.indices) else 1
        return rounded(longest)

    def collate(self, items: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, ...]:
        """Right-padded to the longest (rounded up to PAD_MULTIPLE): x with the pad id, y with -100. A causal model
        never attends forward, so real tokens never see the padding after them and no attention mask is needed.
        With pack_to: packed rows and their position ids instead (utils.data.packing.collate_packed)."""
        if self.pack_to:
            return collate_packed(items, self.pad_id, self.pack_to)
        longest = max(len(x) for x, _ in items)
        T = rounded(longest)
        x = torch.full((len(items), T), self.pad_id, dtype=torch.long)  # (B, T)
        y = torch.full((len(items), T), IGNORE_INDEX, dtype=torch.long)  # (B, T)
        for row, (xi, yi) in enumerate(items):
            x[row, : len(xi)], y[row, : len(yi)] = xi, yi
        return x, y


@dataclass
class ChatData:
    train: ChatExamples
    val: ChatExamples
    num_tokens: int  # tokens of the kept examples, after cutting
    description: str  # for the data line: the source, its shape, what is trained on and the counts


@dataclass
class ChatCounts:
    """What happened to the rows, for the data line."""

    rows: int = 0
    with_answer: int = 0
    cut: int = 0
    lost_answer: int = 0  # cut before any trained token: nothing to learn, skipped
    no_answer: int = 0  # train_on="responses" and no assistant turn: skipped


def encode_chat(source: ChatSource, tokenizer, max_seq_len: int, train_on: str) -> tuple[Encoded, ChatCounts, str]:
    """Every conversation formatted, tokenized once and marked; examples longer than max_seq_len + 1 tokens cut.
    Returns the examples, the counts and the first example's text with its trained part marked."""
    from jinja2 import TemplateError  # transformers renders chat templates with jinja2

    hf = tokenizer.hf
    template = chat_template(hf)
    counts, chunks, sample = ChatCounts(), [], ""
    batch: list[tuple[str, list[tuple[int, int]]]] = []  # (rendered text, trained character spans)
    for where, messages in source.conversations():
        counts.rows += 1
        has_answer = any(m["role"] == "assistant" for m in messages)
        counts.with_answer += has_answer
        if train_on == "responses" and not has_answer:
            counts.no_answer += 1
            continue
        try:
            text, spans = render(hf, messages, template, train_on)
        except DataError as e:
            raise DataError(f"{source.description} {where}: {e}") from None
        except TemplateError as e:  # the template's own raise_exception, e.g. "roles must alternate user/assistant"
            raise DataError(f"{source.description} {where}: the chat template refuses this conversation "
                            f"({e})") from None
        batch.append((text, spans))
        if len(batch) == ENCODE_BATCH:
            marked = _encode_batch(hf, batch, max_seq_len, counts, chunks)
            sample, batch = sample or marked, []
    if batch:
        marked = _encode_batch(hf, batch, max_seq_len, counts, chunks)
        sample = sample or marked
    _check_counts(source, counts)
    ids = torch.cat([c[0] for c in chunks]) if chunks else torch.empty(0, dtype=torch.int32)
    trained = torch.cat([c[1] for c in chunks]) if chunks else torch.empty(0, dtype=torch.bool)
    lengths = torch.tensor([len(c[0]) for c in chunks], dtype=torch.int64)
    bounds = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    return Encoded(ids, trained, bounds), counts, sample


def _encode_batch(hf, batch: list, max_seq_len: int, counts: ChatCounts, chunks: list) -> str:
    """Tokenize a batch of rendered texts and keep each as an example; the first kept one's marked text."""
    # The fast backend itself, as the kit encodes everything (LibraryTokenizer): transformers' wrapper spends longer
    # converting its output to Python than the tokenizer takes to encode.
    encodings = hf.backend_tokenizer.encode_batch([text for text, _ in batch], add_special_tokens=False)
    sample = ""
    for (text, spans), encoding in zip(batch, encodings):
        ids, offsets = encoding.ids, encoding.offsets
        marks = trained_tokens(offsets, spans)
        if len(ids) > max_seq_len + 1:  # T inputs and T targets come from T + 1 tokens
            counts.cut += 1
            ids, offsets, marks = ids[: max_seq_len + 1], offsets[: max_seq_len + 1], marks[: max_seq_len + 1]
        if len(ids) < 2 or not bool(marks[1:].any()):  # no target to learn: its loss would be 0/0
            counts.lost_answer += 1
            continue
        chunks.append((torch.tensor(ids, dtype=torch.int32), marks))
        if not sample:
            sample = marked_text(text, offsets, marks)
            if offsets[-1][1] < len(text.rstrip()):
                sample += " [cut here at max_seq_len]"
    return sample


def _check_counts(source: ChatSource, counts: ChatCounts) -> None:
    if counts.rows and not counts.with_answer:
        raise DataError(f"{source.description} has no assistant turn in any of its {counts.rows:,} conversations "
                        f"({SHAPE_WORDS[source.shape]}): there is no answer to learn; each conversation needs a "
                        "message with role 'assistant' (ShareGPT: from 'gpt')")
    if counts.lost_answer and counts.lost_answer == counts.rows - counts.no_answer:
        raise DataError(f"every example of {source.description} is cut at max_seq_len before its answer starts, so "
                        "nothing is left to train on; raise max_seq_len")


def split_chat(encoded: Encoded, val_split: float, seed: int, pad_id: int, pack_to: Optional[int] = None,
               packing_note: str = "") -> tuple[ChatExamples, ChatExamples]:
    """Whole examples to train or val, by a seeded shuffle; pack_to: batches of both packed (ChatExamples)."""
    n = len(encoded.bounds) - 1
    n_val = round(n * val_split)
    if n < 2 or n_val < 1 or n - n_val < 1:
        raise DataError(f"The chat data has {n} usable example(s), too few for a train/val split at "
                        f"val_split={val_split}; add examples or raise val_split.")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return (ChatExamples(encoded, order[n_val:], pad_id, pack_to, packing_note),
            ChatExamples(encoded, order[:n_val], pad_id, pack_to, packing_note))


def chat_cache_file(cache_dir: Path, source: ChatSource, tokenizer, max_seq_len: int, train_on: str) -> Path:
    """Where the encoded examples of this data, tokenizer (as the token cache fingerprints it, plus its chat
    template), train_on and max_seq_len are cached: any of them changed, another name."""
    key = "\0".join((CHAT_CACHE_VERSION, chat_template(tokenizer.hf), train_on, str(max_seq_len)))
    return cache_dir / (f"{source.cache_name}.chat-{source.fingerprint}-{tokenizer_fingerprint(tokenizer)}-"
                        f"{hashlib.sha256(key.encode()).hexdigest()[:12]}.pt")


def encode_chat_cached(source: ChatSource, tokenizer, max_seq_len: int, train_on: str,
                       cache_file: Optional[Path]) -> tuple[Encoded, ChatCounts, str]:
    """encode_chat's answer, read from cache_file when an earlier run wrote it, else encoded and written there."""
    if cache_file is not None and cache_file.is_file():
        try:
            saved = torch.load(cache_file, map_location="cpu", weights_only=True)  # tensors, ints and strings only
            encoded = Encoded(saved["ids"], saved["trained"], saved["bounds"])
            print(f"Data: chat examples from cache {cache_file}")
            return encoded, ChatCounts(**saved["counts"]), saved["sample"]
        except (RuntimeError, EOFError, OSError, KeyError, TypeError, pickle.UnpicklingError) as e:
            print(f"Data: the chat cache {cache_file} does not load ({str(e).splitlines()[0]}); encoding again")
    encoded, counts, sample = encode_chat(source, tokenizer, max_seq_len, train_on)
    if cache_file is not None:
        try:
            with atomic_writer(cache_file) as f:
                torch.save({"ids": encoded.ids, "trained": encoded.trained, "bounds": encoded.bounds,
                            "counts": dataclasses.asdict(counts), "sample": sample}, f)
        except OSError as e:
            print(f"Data: could not cache the chat examples at {cache_file} ({e.strerror or e}); the next run "
                  "encodes them again")
    return encoded, counts, sample


def prepare_chat(source: ChatSource, tokenizer, max_seq_len: int, val_split: float, seed: int,
                 train_on: str, cache_dir: Optional[Path] = None, packing: tuple[bool, str] = (False, "")) -> ChatData:
    """Chat rows to train/val examples (encoded once, then from cache_dir); prints the counts and a sample with the
    trained part marked, once. packing: (pack batches into rows of max_seq_len, why not), decide_packing's answer."""
    cache_file = chat_cache_file(cache_dir, source, tokenizer, max_seq_len, train_on) if cache_dir else None
    encoded, counts, sample = encode_chat_cached(source, tokenizer, max_seq_len, train_on, cache_file)
    pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    train, val = split_chat(encoded, val_split, seed, pad_id, max_seq_len if packing[0] else None, packing[1])
    kept = len(encoded.bounds) - 1
    notes = [f"{kept:,} of {counts.rows:,} conversations kept"] if kept != counts.rows else []
    if counts.cut:
        notes.append(f"{counts.cut:,} longer than max_seq_len={max_seq_len} tokens cut at the end")
    if counts.lost_answer:
        notes.append(f"{counts.lost_answer:,} skipped: cut before their answer")
    if counts.no_answer:
        notes.append(f"{counts.no_answer:,} skipped: no assistant turn")
    sample = sample.rstrip()
    print(f"Data: one example as trained, the loss on the text in {TRAINED_OPEN} {TRAINED_CLOSE}:\n"
          + (sample if len(sample) <= SAMPLE_CHARS else sample[:SAMPLE_CHARS] + " [...]"))
    description = (f"{source.description} ({SHAPE_WORDS[source.shape]}, {TRAIN_ON_WORDS[train_on]}"
                   + "".join(f"; {note}" for note in notes) + ")")
    return ChatData(train, val, len(encoded.ids), description)
