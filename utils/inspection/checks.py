"""The checks that read the model's outputs: shapes, causality, padding, initial_loss, overfit_batch, memory.

Each takes a Subject (utils.inspection.subject) and returns a CheckResult. They run in eval mode, on the
device the model is on, in the dtype its weights are stored in (fp32, or a LoRA base's 16 bits), unless they
say otherwise: under fp16 autocast an overflow turns the logits to NaN and would hide what these checks look
for, so the fp16 check (utils.inspection.numerics) is the one that runs the autocast. They leave the model's
weights, gradients and mode as they found them.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from contextlib import contextmanager
from typing import Optional

import torch

from utils.models.calling import describe_call
from utils.inspection.report import CheckResult
from utils.inspection.subject import Subject
from utils.env import DeviceInfo
from utils.formatting import format_bytes
from utils.plan.memory_model import device_capacity, measure_memory, memory_advice

RELATIVE_TOLERANCE = 1e-4  # a logit "changes" when it moves by more than this times the logits' scale
CAUSALITY_MAX_LEN = 128  # longer sequences add time and find no other leak than these positions do
# train()'s pre-flight: the same perturbed positions in a shorter sequence (a mask that is missing, off by one or
# turned around leaks at any length), so that a large vocabulary's logits cost a fraction of a training step.
CAUSALITY_PREFLIGHT_LEN = 32
CHANCE_FACTOR = 2.0  # an initial loss above this many times chance warns
OVERFIT_STEPS, OVERFIT_LR, OVERFIT_LEN, OVERFIT_DROP = 40, 3e-3, 32, 0.5
COLAB_GPUS = (("Tesla T4", 15.0), ("NVIDIA L4", 22.5), ("NVIDIA A100 40GB", 40.0))  # memory in GiB


@contextmanager
def evaluating(model):
    """Eval mode (no dropout: two forwards of the same ids must agree) while the block runs."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _logits(s: Subject, batch: tuple) -> torch.Tensor:
    with torch.no_grad(), evaluating(s.model):
        return s.task.logits(s.model, batch)


def _changed(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Per position (or per row): the largest change, and whether it is past the tolerance."""
    return (a.float() - b.float()).abs().amax(dim=-1), RELATIVE_TOLERANCE * (1 + scale.float())


def _error(e: BaseException) -> str:
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {first[:160]}"


# ------------------------------------------------------------------------------------------------ shapes

def check_shapes(s: Subject, cheap: bool = False) -> CheckResult:
    """Forward at batch 1, 2 and batch_size and lengths 1, max_seq_len // 2 and max_seq_len; cheap (train()'s
    pre-flight): batch 2 of one token and batch 1 of max_seq_len, which find a lost batch dimension and a position
    table too short at a fraction of the cost (the logits of a large vocabulary dominate it)."""
    L = s.config.max_seq_len
    if cheap:
        trials = [(2, 1)] + ([(1, L)] if L > 1 else [])
    else:
        trials = [(B, T) for T in sorted({1, max(1, L // 2), L}) for B in sorted({1, 2, s.config.batch_size})]
    batches, lengths = sorted({B for B, _ in trials}), sorted({T for _, T in trials})
    tried = []
    for B, T in trials:
        problem = _shape_problem(s, B, T)
        if problem:
            return _shapes_fail(s, B, T, problem, tried)
        tried.append([B, T])
    return CheckResult("shapes", "pass", f"logits of the expected shape at batch {batches} and sequence length "
                       f"{lengths}.", numbers={"batches": batches, "lengths": lengths})


def _shape_problem(s: Subject, B: int, T: int) -> Optional[str]:
    batch = s.random_batch(B, T)
    expected = (B, T, s.vocab_size) if s.is_lm else (B, s.num_classes)
    try:
        logits = _logits(s, batch)
    except Exception as e:  # the user's forward: what it raised is the finding
        return _error(e)
    if not isinstance(logits, torch.Tensor):
        return f"the model returned {type(logits).__name__}, not a logits tensor"
    if not s.task.output_fits(tuple(logits.shape), expected):
        return f"logits of shape {tuple(logits.shape)}, expected {expected} ({s.task.output_meaning})"
    return None


def _shapes_fail(s: Subject, B: int, T: int, problem: str, tried: list) -> CheckResult:
    numbers = {"batch": B, "length": T, "error": problem, "worked": tried}
    if T > 1 and not any(t == T for _, t in tried):  # batch 1 fails too at this length: the length is the problem
        longest = _longest_length(s, T)
        numbers["longest_length"] = longest
        if longest:
            s.shorten(longest)  # the other checks run at a length the model takes, and find their own bugs
            return CheckResult("shapes", "fail", f"the model fails at sequence length {T} ({problem}); the longest "
                               f"sequence it takes is {longest} tokens (a position table of {longest}?).",
                               f"build the model with config['max_seq_len'] positions (the kit passes "
                               f"{s.config.max_seq_len}), or set max_seq_len <= {longest}. The other checks ran at "
                               f"{longest} tokens.", numbers)
    return CheckResult("shapes", "fail", f"the model fails at batch {B}, sequence length {T}: {problem}.",
                       f"make forward() take input_ids of shape (batch, length) for any batch and length up to "
                       f"max_seq_len, and return {s.task.output_meaning}.", numbers)


def _longest_length(s: Subject, failing: int) -> int:
    """The longest length that works at batch 1, by bisection below the failing one (0: none)."""
    low, high = 0, failing  # low works (0 trivially), high fails
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if _shape_problem(s, 1, mid) is None else (low, mid)
    return low


# --------------------------------------------------------------------------------------------- causality

def check_causality(s: Subject, cheap: bool = False) -> CheckResult:
    """Perturbing token t must not change the logits at any position < t, at several t in one batched forward
    (cheap, train()'s pre-flight: in a sequence of CAUSALITY_PREFLIGHT_LEN tokens)."""
    if not s.is_lm:
        return CheckResult("causality", "skipped", "a classifier reads the whole text at once; causality applies "
                           "to language models.")
    T = min(s.max_len, CAUSALITY_PREFLIGHT_LEN if cheap else CAUSALITY_MAX_LEN)
    base = s.random_batch(1, T, seed=1)[0]  # (1, T)
    positions = sorted({t for t in (1, 2, 3, T // 4, T // 2, 3 * T // 4, T - 1) if 1 <= t < T})
    rows = base.repeat(len(positions) + 1, 1)  # (K+1, T): the sequence, then one copy per perturbed position
    for k, t in enumerate(positions, start=1):
        rows[k, t] = (rows[k, t] + 1) % s.vocab_size
    logits = _logits(s, (rows, rows))  # (K+1, T, V); the targets are not read
    for k, t in enumerate(positions, start=1):
        change, tolerance = _changed(logits[k, :t], logits[0, :t], logits[0].abs().max())  # (t,)
        leaks = (change > tolerance).nonzero().flatten()
        if len(leaks):
            p = int(leaks[0])
            return CheckResult(
                "causality", "fail",
                f"causality fails at position {t}: changing the token at position {t} changes the logits at "
                f"position {p} (by {change[p].item():.3g}), so position {p} sees the future. The loss of such a "
                "model falls fast and its generated text is garbage.",
                "mask the attention scores above the diagonal before the softmax: is_causal=True in "
                "F.scaled_dot_product_attention, or scores.masked_fill(torch.ones(T, T).triu(1).bool(), "
                "float('-inf')) (diagonal 1, not 0 or 2).",
                {"position": t, "sees_future_at": p, "change": change[p].item(), "positions_checked": positions,
                 "tolerance": tolerance.item()})
    return CheckResult("causality", "pass", f"changing the token at positions {positions} leaves every earlier "
                       "position's logits unchanged.", numbers={"positions_checked": positions, "length": T})


# ----------------------------------------------------------------------------------------------- padding

def check_padding(s: Subject) -> CheckResult:
    """A text's logits must not depend on how much padding follows it; other ids at the padded positions are
    measured too, but a model may find padding by its id (GPT-2's classifier pools at the last non-pad id), and
    the kit always pads with pad_id, so that alone is not a fail."""
    if s.is_lm:
        return CheckResult("padding", "skipped", "a language model reads each position from the ones before it: "
                           "padding after the text (chat data) is never seen when causality passes.")
    T = min(s.max_len, 64)
    real = max(1, T // 2)
    ids = s.random_batch(1, T, seed=2)[0].clone()  # (1, T)
    ids[ids == s.pad_id] = (s.pad_id + 1) % s.vocab_size
    ids[:, real:] = s.pad_id
    mask = torch.arange(T, device=s.device)[None, :] < real  # (1, T)
    labels = torch.zeros(1, dtype=torch.long, device=s.device)
    base = _logits(s, (ids, mask, labels))  # (1, C)
    shorter = real + max(1, (T - real) // 2)
    change, tolerance = _changed(_logits(s, (ids[:, :shorter], mask[:, :shorter], labels)), base, base.abs().max())
    other = ids.clone()
    other[:, real:] = (s.pad_id + 1 + torch.arange(T - real, device=s.device)) % s.vocab_size
    other[other == s.pad_id] = (s.pad_id + 2) % s.vocab_size
    by_id, _ = _changed(_logits(s, (other, mask, labels)), base, base.abs().max())
    takes_mask = "mask" in describe_call(s.model, with_mask=True)
    numbers = {"change_with_less_padding": change.max().item(), "change_with_other_ids_at_padding":
               by_id.max().item(), "tolerance": tolerance.item(), "takes_attention_mask": takes_mask,
               "length": T, "real_tokens": real}
    if change.max() > tolerance:
        return CheckResult(
            "padding", "fail",
            f"padding fails: the same text padded to {shorter} instead of {T} tokens gets logits that differ by "
            f"{change.max().item():.3g}; the model reads the padding, so its answer depends on the length of the "
            "longest text in the batch.",
            "hide padding from attention (a key mask from attention_mask) and pool over real tokens only "
            "(a masked mean, or the first token).", numbers)
    how = ("it finds padding by the pad id, not by attention_mask" if by_id.max() > tolerance else
           "nor does putting other ids at the padded positions")
    return CheckResult("padding", "pass", f"the logits do not change with the amount of padding ({how}).",
                       numbers=numbers)


# ------------------------------------------------------------------------------------------ initial_loss

def check_initial_loss(s: Subject) -> CheckResult:
    """The untrained model's loss on the real batch against chance, ln(outputs)."""
    outputs = s.task.chance_loss_outputs(s.vocab_size, s.num_classes)
    chance = math.log(outputs)
    with torch.no_grad(), evaluating(s.model):
        loss = s.task.loss(s.model, s.batch)[0].item()
    numbers = {"loss": loss, "chance": chance, "outputs": outputs}
    if not math.isfinite(loss):
        return CheckResult("initial_loss", "fail", f"the loss at initialisation is {loss}.",
                           "look for a division or log of something that can be zero in forward(), and for "
                           "huge initial weights.", numbers)
    numbers["ratio"] = loss / chance
    if loss > CHANCE_FACTOR * chance:
        return CheckResult("initial_loss", "warn",
                           f"the loss at initialisation is {loss:.3g}, {loss / chance:.1f}x chance (ln {outputs} = "
                           f"{chance:.2f}): the model starts confidently wrong, and the first steps only undo "
                           "the initialisation.",
                           "initialise weights with a small std (GPT-2 uses 0.02) and keep the output layer small "
                           "(or tied to the embedding); look for a scale applied to the logits.", numbers)
    return CheckResult("initial_loss", "pass", f"the loss at initialisation is {loss:.3g}, chance is ln {outputs} = "
                       f"{chance:.2f}.", numbers=numbers)


# ----------------------------------------------------------------------------------------- overfit_batch

def check_overfit_batch(s: Subject) -> CheckResult:
    """A few dozen AdamW steps on one small batch, on a copy of the model, must take the loss well down."""
    # Shorter sequences learn faster; chat data keeps its length (its first tokens may all be prompt, untrained).
    chat = s.is_lm and bool((s.batch[1] < 0).any())
    batch = s.batch if chat else tuple(t[:, :OVERFIT_LEN] if t.ndim == 2 else t for t in s.batch)
    work = copy.deepcopy(s.model).train()
    params = [p for p in work.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=OVERFIT_LR, weight_decay=0.0)
    losses = []
    with torch.random.fork_rng(devices=[]):
        for _ in range(OVERFIT_STEPS):
            loss = s.task.loss(work, batch)[0]
            losses.append(loss.item())
            if not loss.requires_grad:
                return CheckResult("overfit_batch", "fail", "the loss does not depend on any trainable parameter, "
                                   "so no step can lower it: the output is detached (.detach(), torch.no_grad() or "
                                   ".item() on the way to the logits).",
                                   "compute the logits from the model's layers without .detach() or no_grad.",
                                   {"losses": losses})
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    first, last = losses[0], min(losses[-3:])
    numbers = {"first": first, "last": last, "steps": OVERFIT_STEPS, "learning_rate": OVERFIT_LR,
               "rows": int(batch[0].shape[0]), "length": int(batch[0].shape[1]), "losses": losses}
    if not (math.isfinite(last) and last < OVERFIT_DROP * first):
        return CheckResult("overfit_batch", "fail",
                           f"{OVERFIT_STEPS} AdamW steps on one batch of {numbers['rows']} sequences took the loss "
                           f"from {first:.3g} to {last:.3g} only; a model that cannot memorise one batch will not "
                           "learn the data.",
                           "look for outputs cut from the graph (.detach(), no_grad), layers that are frozen or "
                           "unused, or an output that does not depend on the input.", numbers)
    return CheckResult("overfit_batch", "pass", f"{OVERFIT_STEPS} AdamW steps on one batch of {numbers['rows']} "
                       f"sequences took the loss from {first:.3g} to {last:.3g}.", numbers=numbers)


# ------------------------------------------------------------------------------------------------ memory

def check_memory(s: Subject) -> CheckResult:
    """The pre-flight estimate's memory model (utils.plan.memory_model), and the largest batch per device."""
    c = s.config
    if s.max_len < c.max_seq_len:
        return CheckResult("memory", "skipped", f"the model cannot take max_seq_len={c.max_seq_len} tokens (see "
                           "shapes), so its training memory at that length cannot be measured.")
    here = s.decision
    if s.device.type != here.device.kind:  # the wizard on a CPU for a GPU run: measured here, compared with the GPU
        here = dataclasses.replace(here, device=DeviceInfo(s.device.type, s.device.type.upper()))
    memory = measure_memory(c, here, s.model, s.task, s.vocab_size, s.num_classes)
    if here is not s.decision:  # a GPU holds the model's memory alone, not this process's (process_bytes)
        capacity, name = device_capacity(s.decision.device)
        memory = dataclasses.replace(memory, capacity_bytes=capacity, capacity_name=name, process_bytes=0)
    limit = max(c.batch_size, 4096)
    largest = {memory.capacity_name: memory.largest_batch(limit)}
    for name, gib in COLAB_GPUS:  # the same model, against the memory of the GPUs Colab lends
        on_gpu = dataclasses.replace(memory, capacity_bytes=int(gib * 2**30), process_bytes=0)
        largest[f"{name} memory"] = on_gpu.largest_batch(limit)
    numbers = {"bytes_at_batch_size": memory.bytes_at(c.batch_size), "fixed_bytes": memory.fixed_bytes,
               "per_sequence_bytes": memory.per_sequence_bytes, "largest_batch": largest,
               "measured_in": s.decision.precision}
    shown = {name: f"{batch}+" if batch == limit else str(batch) for name, batch in largest.items()}  # + : or more
    others = ", ".join(f"{name.removesuffix(' memory')} {batch}" for name, batch in list(shown.items())[1:])
    need = (f"training at batch_size={c.batch_size}, max_seq_len={c.max_seq_len} needs about "
            f"{format_bytes(memory.bytes_at(c.batch_size))}")
    if not memory.fits(c.batch_size):
        suggested = memory.largest_batch(c.batch_size)
        return CheckResult("memory", "warn", f"{need}, more than {memory.capacity_name} holds.",
                           memory_advice(memory, c.batch_size, suggested,
                                         math.ceil(c.batch_size / max(suggested, 1))) + ".", numbers)
    return CheckResult("memory", "pass", f"{need}; the largest batch that fits in {memory.capacity_name} is "
                       f"{shown[memory.capacity_name]} (on {others}, at {s.decision.precision}).", numbers=numbers)
