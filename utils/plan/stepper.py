"""Training steps on dummy batches, measured where the model is: the memory model's forward passes
(utils.plan.memory_model) and the estimate's timed steps (utils.training.estimate), never on a copy of the model.

Measuring runs the model itself under saved-tensor hooks (no weights change; the random state is forked and
buffers put back); timing runs real AdamW steps, so the trained tensors are saved on the CPU and put back after.
The counting rules are utils.plan.memory's.
"""

from __future__ import annotations

import time
from contextlib import contextmanager, nullcontext
from typing import Optional

import torch
from torch import nn

from utils.plan.memory import logit_backward_bytes, storage_key
from utils.precision import PrecisionDecision


class Stepper:
    """Forward, backward and AdamW steps of one model, where it is, on dummy batches, as the training core runs
    them: under autocast on the model's own device type in the run's autocast dtype (CPU autocast runs fp16 and
    bf16 too), while decision.device says what the run's memory is compared against.

    It holds no reference to itself (a lambda over self would be a cycle): dropping it frees its model's
    memory at once, not when the garbage collector next runs.
    """

    def __init__(self, model, optimizer, task, decision: PrecisionDecision, vocab_size, num_classes, seq_len):
        self.model, self.optimizer, self.task = model, optimizer, task
        self.device = device_of(model)
        self.kind = self.device.type
        self.vocab_size, self.num_classes, self.seq_len = vocab_size, num_classes, seq_len
        self.dtype = decision.autocast_dtype
        self.scaler = torch.amp.GradScaler(self.kind) if decision.uses_scaler and self.kind != "meta" else None
        self.params = {storage_key(p) for p in model.parameters()}

    def autocast(self):
        # The meta device (shapes only: the paper model and tests) has no autocast; its model runs in its own dtypes.
        if self.dtype is None or self.kind == "meta":
            return nullcontext()
        return torch.autocast(self.kind, dtype=self.dtype)

    def batch(self, size: int):
        batch, _ = self.task.dummy_batch(size, self.seq_len, self.vocab_size, self.num_classes)
        return tuple(t.to(self.device) for t in batch)

    def peak_bytes(self, size: int) -> int:
        """Bytes a training step at this batch holds at its peak beyond the parameters: the tensors autograd keeps
        for backward (counted as the forward saves them), plus the larger of what the backward adds at once: the
        loss's gradient of its fp32 logits (utils.plan.memory), or under gradient checkpointing one block's
        activations while it is recomputed (its first block runs whole here, so that they are seen)."""
        storages: dict[int, int] = {}
        kept: list[torch.Tensor] = []  # alive until the count is done, so no storage is freed and reused meanwhile
        params, block = self.params, _RecomputedBlock(self.model)

        def pack(t: torch.Tensor) -> None:
            # Nothing goes into the graph (no backward runs here): a saved output tensor returned from pack
            # would form a cycle with its own grad_fn, and the copy would outlive this call.
            key = storage_key(t)
            if key not in params and key not in storages:
                storages[key] = t.untyped_storage().nbytes()
                block.saw(key)
            kept.append(t)

        with block.seen(), torch.autograd.graph.saved_tensors_hooks(pack, _never_unpacked), self.autocast():
            logits = self.task.scored(self.model, self.batch(size))[2].numel()
        # The graph's saved slots hold `pack`, and so `kept`, whose tensors hold the graph: a cycle through
        # autograd's C++ objects that the garbage collector cannot see. Emptying the list breaks it.
        kept.clear()
        recomputed = sum(storages[key] for key in block.keys)
        kept_bytes = sum(storages.values()) - recomputed + block.input_bytes  # checkpointed: its input alone
        return kept_bytes + max(recomputed, logit_backward_bytes(logits))

    def time(self, size: int, warmup: int, timed: int) -> tuple[float, float, int]:
        """Mean seconds of forward + backward and of the optimizer step over `timed` steps, and peak CUDA bytes."""
        batch = self.batch(size)
        if self.kind == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        fb = opt = 0.0
        for i in range(warmup + timed):
            t0 = self._now()
            with self.autocast():
                loss, _ = self.task.loss(self.model, batch)
            (self.scaler.scale(loss) if self.scaler else loss).backward()
            t1 = self._now()
            if self.scaler:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            t2 = self._now()
            if i >= warmup:
                fb, opt = fb + t1 - t0, opt + t2 - t1
        peak = torch.cuda.max_memory_allocated(self.device) if self.kind == "cuda" else 0
        return fb / timed, opt / timed, peak

    def time_forward(self, size: int) -> float:
        """Seconds of one validation batch: a forward pass without gradients, after the training steps have
        warmed the same kernels up."""
        batch = self.batch(size)
        self.model.eval()
        with torch.no_grad(), self.autocast():
            t0 = self._now()
            self.task.loss(self.model, batch)
            seconds = self._now() - t0
        self.model.train()
        return seconds

    def _now(self) -> float:
        if self.kind == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()


class _RecomputedBlock:
    """Under gradient checkpointing the forward keeps each block's input only, and the backward brings one
    block's activations back while it recomputes them. The first checkpointed block runs whole during the
    measurement (its flag off, put back after), so that its saved tensors, the recomputed ones, are seen.
    A model without checkpointing has no such block: nothing is changed or counted."""

    def __init__(self, model: nn.Module):
        self.block = _first_checkpointed_block(model)
        self.keys: set[int] = set()
        self.input_bytes = 0
        self.inside = False

    def saw(self, key: int) -> None:
        if self.inside:
            self.keys.add(key)

    @contextmanager
    def seen(self):
        if self.block is None:
            yield
            return

        def enter(module, args, kwargs):
            hidden = args[0] if args and torch.is_tensor(args[0]) else kwargs.get("hidden_states")
            self.input_bytes = hidden.untyped_storage().nbytes() if torch.is_tensor(hidden) else 0
            self.inside = True

        def leave(module, args, kwargs, output):
            self.inside = False

        hooks = [self.block.register_forward_pre_hook(enter, with_kwargs=True),
                 self.block.register_forward_hook(leave, with_kwargs=True)]
        self.block.gradient_checkpointing = False
        try:
            yield
        finally:
            self.block.gradient_checkpointing = True
            for hook in hooks:
                hook.remove()


def _first_checkpointed_block(model: nn.Module) -> Optional[nn.Module]:
    """transformers' GradientCheckpointingLayer blocks carry gradient_checkpointing=True once it is enabled (their
    model does too): the first flagged module that holds no flagged module of its own."""
    flagged = [m for m in model.modules() if getattr(m, "gradient_checkpointing", False) is True]
    leaves = [m for m in flagged if not any(o is not m and getattr(o, "gradient_checkpointing", False) is True
                                            for o in m.modules())]
    return leaves[0] if len(leaves) > 1 else None  # one flag on the whole model: no block to run whole


def device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@contextmanager
def measuring(model: nn.Module):
    """model in training mode for a measuring forward pass, with the random state forked (dropout draws) and its
    buffers (a BatchNorm's running statistics) and its modules' plain number attributes put back afterwards:
    saved-tensor hooks change no weights, so the model itself is measured, never a copy of it."""
    device = device_of(model)
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    # Plain numbers a forward may count with (a step counter, a cached length): the run must start from the model
    # as it was built, as it did when these passes ran on a copy.
    numbers = [(m, {k: v for k, v in vars(m).items() if type(v) in (int, float, bool)}) for m in model.modules()]
    was_training = model.training
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            yield model.train()
    finally:
        for module, values in numbers:
            vars(module).update(values)
        model.train(was_training)
        with torch.no_grad():
            for name, b in model.named_buffers():
                if name in buffers:
                    b.copy_(buffers[name])
        del buffers
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the measurement's activations are gone; give their blocks back


@contextmanager
def trained_weights_restored(model: nn.Module):
    """model itself for the timed AdamW steps, its trained tensors saved on the CPU first and put back afterwards.
    The steps change those tensors; a deepcopy of the model would hold every weight twice on the device (a full
    fine-tune of a 1B model: 5 GB more than the run needs, so the estimate could run out of memory where the run
    fits), and for a LoRA base it would copy gigabytes of frozen weights that no step changes. The CPU copy holds
    only what trains: the adapters, or for a full fine-tune the weights once, in host RAM."""
    saved = {name: p.detach().to("cpu", copy=True) for name, p in model.named_parameters() if p.requires_grad}
    try:
        with measuring(model):
            yield model
    finally:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in saved:
                    p.copy_(saved[name])
                    p.grad = None


def _never_unpacked(packed: None) -> torch.Tensor:
    raise RuntimeError("the memory measurement's forward pass has no backward")
