"""Sequence packing for chat examples: a batch's conversations laid end to end in fewer, fuller rows.

A padded chat batch is batch_size rows as long as its longest conversation; short conversations pay for the
padding. Packed, the same conversations share rows of up to max_seq_len tokens and each row's position ids
restart at 0 where a conversation starts. Transformers' masking (masking_utils.create_causal_mask, through
find_packed_sequence_indices) reads those restarts when no attention mask and no cache is given, and keeps each
token's attention within its own conversation; the rotary positions are those the conversation has alone.
Targets are each conversation's own (its y is shifted within it, as unpacked), so the last token of one is never
asked to predict the first of the next. A packed batch is the tuple (x, y, position_ids), all (R, L).

Packing regroups the conversations of each batch, never across batches: every optimizer step sees the same
conversations and the same targets as without packing, and its loss (the mean over the same targets) is the
same number. What changes is the shape computed: fewer rows, less padding.

It is correct only for models whose every layer keeps to that mask: utils.models.packing says which (and why
the others are left out) and runs the packed forward.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from utils.data.sources import DataError
from utils.models.packing import packing_refusal

PAD_MULTIPLE = 8  # chat batches, packed or padded, are a multiple of this long: tensor cores want it, fewer shapes
IGNORE_INDEX = -100  # F.cross_entropy skips these targets
MAX_CANDIDATES = 16  # row lengths tried per batch when packing it (see pack_rows)


class PackedBatch(NamedTuple):
    x: torch.Tensor  # (R, L) ids, pad id after the last conversation of a row
    y: torch.Tensor  # (R, L) targets, -100 where not trained and on padding
    position_ids: torch.Tensor  # (R, L) 0, 1, ... from each conversation's first token


def rounded(n: int) -> int:
    return -(-n // PAD_MULTIPLE) * PAD_MULTIPLE


def first_fit(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices of lengths in rows of at most capacity tokens: longest first, each into the first row with room."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        row = next((r for r, left in enumerate(room) if left >= lengths[i]), None)
        if row is None:
            rows.append([i])
            room.append(capacity - lengths[i])
        else:
            rows[row].append(i)
            room[row] -= lengths[i]
    return rows


def pack_rows(lengths: list[int], max_len: int) -> list[list[int]]:
    """The rows that compute the fewest tokens (rows x their longest, rounded up as collate pads): row capacities
    from the longest example up to max_len are tried. Capacity = the longest example is always among them, so a
    packed batch never computes more tokens than the padded one; of equal costs the shorter rows win."""
    longest = max(lengths)
    top = max(longest, max_len)
    step = max(1, (top - longest) // (MAX_CANDIDATES - 1))
    best, best_cost = None, None
    for capacity in sorted({*range(longest, top + 1, step), top}):
        rows = first_fit(lengths, capacity)
        cost = (len(rows) * rounded(max(sum(lengths[i] for i in row) for row in rows)), capacity)
        if best_cost is None or cost < best_cost:
            best, best_cost = rows, cost
    return best


def collate_packed(items: list[tuple[torch.Tensor, torch.Tensor]], pad_id: int, max_len: int) -> PackedBatch:
    """The items (x (T,), y (T,)) packed into rows (pack_rows); position ids restart at each item's first token
    and carry on through the padding after a row's last item (causal: no real token sees it)."""
    rows = pack_rows([len(x) for x, _ in items], max_len)
    L = rounded(max(sum(len(items[i][0]) for i in row) for row in rows))
    x = torch.full((len(rows), L), pad_id, dtype=torch.long)  # (R, L)
    y = torch.full((len(rows), L), IGNORE_INDEX, dtype=torch.long)  # (R, L)
    positions = torch.zeros((len(rows), L), dtype=torch.long)  # (R, L)
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            xi, yi = items[i]
            x[r, at: at + len(xi)], y[r, at: at + len(yi)] = xi, yi
            positions[r, at: at + len(xi)] = torch.arange(len(xi))
            at += len(xi)
        positions[r, at:] = torch.arange(len(items[row[-1]][0]), len(items[row[-1]][0]) + L - at)
    return PackedBatch(x, y, positions)


def packed_shapes(lengths: torch.Tensor, batch_size: int, max_len: int, samples: int = 256) -> torch.Tensor:
    """(samples, 3): rows, tokens computed packed, tokens computed padded, for seeded random batches of the lengths."""
    rows = torch.randint(len(lengths), (samples, batch_size), generator=torch.Generator().manual_seed(0))
    out = []
    for batch in lengths[rows].tolist():
        packed = pack_rows(batch, max_len)
        longest_row = rounded(max(sum(batch[i] for i in row) for row in packed))
        out.append((len(packed), len(packed) * longest_row, batch_size * rounded(max(batch))))
    return torch.tensor(out, dtype=torch.float64)


# ------------------------------------------------------------------------------------- the run's decision

def decide_packing(setting: str, model_name: str) -> tuple[bool, str]:
    """(pack or not, why) for chat data trained on the pretrained model model_name; setting is the config's
    pack_sequences: "auto" packs where the model keeps attention within each conversation, "true" requires it."""
    if setting == "false":
        return False, "pack_sequences='false'"
    try:
        refusal = packing_refusal(_pretrained_config(model_name))
    except (OSError, ValueError) as e:  # no readable config.json: loading the model says what is wrong, next
        refusal = f"the model's config does not load ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
    if refusal and setting == "true":
        raise DataError(f"pack_sequences='true', but {model_name}: {refusal}, so packed conversations would see "
                        "each other; set pack_sequences='auto' (packs only where it is correct) or 'false'")
    return (not refusal), refusal


def _pretrained_config(model_name: str):
    """The model's transformers config, read as the model will be (a folder, the cache, or the Hub)."""
    import transformers

    from utils.models.pretrained import cached_only_source, resolve_source

    source = resolve_source(model_name)
    return transformers.AutoConfig.from_pretrained(source, local_files_only=cached_only_source(source))


def describe_packing(lengths: torch.Tensor, batch_size: int, max_len: int) -> str:
    """The run's packing line: conversations per row and the tokens saved, on sampled batches of the data."""
    shapes = packed_shapes(lengths, batch_size, max_len)
    per_row = batch_size * len(shapes) / float(shapes[:, 0].sum())
    saved = 1 - float(shapes[:, 1].sum() / shapes[:, 2].sum())
    return (f"Packing: on - each batch's conversations share rows of up to max_seq_len={max_len} tokens, attention "
            f"kept within each conversation; about {per_row:.1f} conversations per row, {saved:.0%} fewer tokens "
            "computed than padding each to its batch's longest (same loss; pack_sequences='false' turns it off)")
