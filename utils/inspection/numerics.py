"""The checks that read the numbers inside the model: gradient_flow, activations and fp16.

One forward and backward in fp32 with a forward hook on every module (a Probe) feeds all three; fp16
then reruns the step under fp16 autocast (CPU autocast supports it) and compares.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from utils.inspection import plots
from utils.inspection.report import CheckResult
from utils.inspection.subject import Subject

FP16_MAX = 65504.0
FP16_LOSS_TOLERANCE = 0.05  # relative loss difference that fp16 (or bf16) may make at initialisation
GRADIENT_SPREAD_WARN = 1e6  # largest / smallest nonzero gradient norm between layers
ACTIVATION_GROWTH_WARN = 1e3  # std of the last block over the first (or the inverse)
MAX_NAMED = 5  # parameters named in a message, the rest counted


@dataclass
class ModuleStats:
    mean: float
    std: float
    max_abs: float


@dataclass
class Probe:
    loss: float
    stats: dict[str, ModuleStats] = field(default_factory=dict)  # module name -> its output's stats, in finish order
    grad_norms: dict[str, Optional[float]] = field(default_factory=dict)  # parameter -> norm (None: no gradient)
    grad_max_abs: float = 0.0
    connected: bool = True  # False when the loss does not depend on any parameter


def first_tensor(output) -> Optional[torch.Tensor]:
    """The tensor a module's output leads with: itself, the first of a tuple, or the first value of a dict."""
    if isinstance(output, torch.Tensor):
        return output
    values = output.values() if isinstance(output, Mapping) else output if isinstance(output, (tuple, list)) else ()
    return next((v for v in values if isinstance(v, torch.Tensor) and v.is_floating_point()), None)


@contextmanager
def recorded_outputs(model: nn.Module, stats: dict):
    """Record each module's output statistics while the block runs."""
    def hook(name):
        def record(module, args, output):
            t = first_tensor(output)
            if t is not None and t.is_floating_point() and t.numel():
                t = t.detach().float()
                stats[name] = ModuleStats(t.mean().item(), t.std().item() if t.numel() > 1 else 0.0,
                                          t.abs().max().item())
        return record
    handles = [m.register_forward_hook(hook(name)) for name, m in model.named_modules() if name]
    try:
        yield stats
    finally:
        for h in handles:
            h.remove()


def run_probe(s: Subject, autocast_dtype: Optional[torch.dtype] = None) -> Probe:
    """One forward (hooks on every module) and backward on the real batch, in eval mode; gradients cleared after."""
    model, stats = s.model, {}
    was_training = model.training
    model.eval()
    autocast = torch.autocast(s.device.type, dtype=autocast_dtype) if autocast_dtype else _nothing()
    try:
        with torch.random.fork_rng(devices=[]), recorded_outputs(model, stats), autocast:
            loss = s.task.loss(model, s.batch)[0]
        probe = Probe(loss.item(), stats, connected=loss.requires_grad)
        if loss.requires_grad:
            loss.backward()
        for name, p in model.named_parameters():
            if p.requires_grad:
                probe.grad_norms[name] = None if p.grad is None else p.grad.float().norm().item()
                if p.grad is not None:
                    probe.grad_max_abs = max(probe.grad_max_abs, p.grad.float().abs().max().item())
        return probe
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)


@contextmanager
def _nothing():
    yield


def _named(names: list[str]) -> str:
    more = f" and {len(names) - MAX_NAMED} more" if len(names) > MAX_NAMED else ""
    return ", ".join(names[:MAX_NAMED]) + more


def layer_of(parameter: str) -> str:
    """The module a parameter belongs to: blocks.1.attn.qkv.weight -> blocks.1.attn.qkv."""
    return parameter.rsplit(".", 1)[0] if "." in parameter else parameter


# ------------------------------------------------------------------------------------------ gradient_flow

def check_gradient_flow(s: Subject, probe: Probe, folder: Optional[Path] = None) -> CheckResult:
    """Every trainable parameter must get a nonzero gradient; norms far apart between layers warn."""
    norms = probe.grad_norms
    missing = [n for n, g in norms.items() if g is None]
    # A LoRA adapter starts with B = 0 (peft's init, so training starts at the base model): A's gradient is
    # zero until B moves. That is by design when B itself gets a gradient, which proves the branch is connected.
    zero = [n for n, g in norms.items()
            if g == 0.0 and not (".lora_A." in n and norms.get(n.replace(".lora_A.", ".lora_B.")))]
    plot = plots.gradient_plot(norms, folder / "gradient_flow.png") if folder else None
    per_layer: dict[str, float] = {}
    for name, g in norms.items():
        if g:
            per_layer[layer_of(name)] = (per_layer.get(layer_of(name), 0.0) ** 2 + g ** 2) ** 0.5
    numbers = {"no_gradient": missing, "zero_gradient": zero, "layer_norms": per_layer}
    fix = ("use the layer's output in forward() (or delete the layer), and remove .detach() / torch.no_grad() "
           "on the way to the logits.")
    if not probe.connected:
        return CheckResult("gradient_flow", "fail", "no parameter gets a gradient: the loss does not depend on "
                           "the model's parameters (its output is detached).", fix, numbers, plot)
    if missing or zero:
        parts = ([f"no gradient reaches {_named(missing)}"] if missing else []) + \
                ([f"an all-zero gradient reaches {_named(zero)}"] if zero else [])
        return CheckResult("gradient_flow", "fail", f"{'; '.join(parts)}: a layer whose output is never used, or "
                           "a branch cut from the loss.", fix, numbers, plot)
    spread = max(per_layer.values()) / min(per_layer.values()) if per_layer else 1.0
    numbers["spread"] = spread
    if spread > GRADIENT_SPREAD_WARN:
        low, high = min(per_layer, key=per_layer.get), max(per_layer, key=per_layer.get)
        return CheckResult("gradient_flow", "warn", f"gradient norms differ by {spread:.1e} between layers "
                           f"({low}: {per_layer[low]:.2e}, {high}: {per_layer[high]:.2e}); some layers will barely "
                           "learn.", "look at the initialisation and any scaling of that layer; pre-norm residual "
                           "blocks keep gradients even.", numbers, plot)
    return CheckResult("gradient_flow", "pass", f"all {len(norms)} trainable parameters get a gradient; norms "
                       f"between layers within {spread:.1e} of each other.", numbers=numbers, plot=plot)


# ------------------------------------------------------------------------------------------- activations

def blocks_of(model: nn.Module) -> list[str]:
    """The model's repeated blocks (the children of its longest nn.ModuleList), else its top-level modules."""
    lists = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m)]
    if lists:
        name, longest = max(lists, key=lambda item: len(item[1]))
        return [f"{name}.{i}" if name else str(i) for i in range(len(longest))]
    return [name for name, _ in model.named_children()]


def check_activations(s: Subject, probe: Probe, folder: Optional[Path] = None) -> CheckResult:
    """Mean, std and max |x| of each block's output; a std that grows or shrinks by orders of magnitude warns."""
    blocks = [b for b in blocks_of(s.model) if b in probe.stats]
    stats = {b: probe.stats[b] for b in blocks}
    numbers = {"blocks": {b: vars(st) for b, st in stats.items()}}
    if not stats:
        return CheckResult("activations", "skipped", "no block output could be recorded (no submodule returned "
                           "a floating-point tensor).", numbers=numbers)
    plot = plots.activation_plot(stats, folder / "activations.png") if folder else None
    first, last = stats[blocks[0]].std, stats[blocks[-1]].std
    growth = last / first if first > 0 else float("inf")
    numbers["std_growth"] = growth
    if not (1 / ACTIVATION_GROWTH_WARN <= growth <= ACTIVATION_GROWTH_WARN):
        return CheckResult("activations", "warn", f"the std of the block outputs goes from {first:.3g} "
                           f"({blocks[0]}) to {last:.3g} ({blocks[-1]}), a factor of {growth:.2g}: signals "
                           "explode or vanish through depth.", "normalise inside each block (pre-norm "
                           "LayerNorm) and scale the residual projections' init by 1/sqrt(2 x layers).",
                           numbers, plot)
    return CheckResult("activations", "pass", f"{len(stats)} blocks; output std from {first:.3g} to {last:.3g}, "
                       f"max |x| {max(st.max_abs for st in stats.values()):.3g}.", numbers=numbers, plot=plot)


# -------------------------------------------------------------------------------------------------- fp16

def check_fp16(s: Subject, probe: Probe) -> CheckResult:
    """fp32 activation and gradient magnitudes against fp16's range, and one fp16-autocast step against fp32."""
    overflow = next(((n, st.max_abs) for n, st in probe.stats.items() if st.max_abs > FP16_MAX), None)
    largest = max((st.max_abs for st in probe.stats.values()), default=0.0)
    half = _compare(s, probe, torch.float16)
    numbers = {"largest_activation": largest, "largest_gradient": probe.grad_max_abs, "fp16": half,
               "overflowing_layer": overflow[0] if overflow else None}
    if overflow is None and half["finite"] and half["relative_loss_difference"] <= FP16_LOSS_TOLERANCE:
        return CheckResult("fp16", "pass", f"safe for fp16: the largest activation is {largest:.3g} (fp16 holds "
                           f"{FP16_MAX:,.0f}), an fp16-autocast step differs from fp32 by "
                           f"{half['relative_loss_difference']:.1e} in the loss.", numbers=numbers)
    brain = _compare(s, probe, torch.bfloat16)
    numbers["bf16"] = brain
    why = (f"activations reach {overflow[1]:.3g} in {overflow[0]}, past fp16's {FP16_MAX:,.0f}" if overflow else
           f"under fp16 autocast the loss is {half['loss']:.4g} against {probe.loss:.4g} in fp32"
           + ("" if half["finite"] else " (inf/NaN in the loss or gradients)"))
    bf16_ok = brain["finite"] and brain["relative_loss_difference"] <= FP16_LOSS_TOLERANCE
    numbers["verdict"] = "needs bf16" if bf16_ok else "keep fp32"
    uses_fp16 = s.decision.precision == "16-mixed"
    if bf16_ok:
        message = f"needs bf16: {why}, so fp16 training would skip step after step; bf16 trains it."
        fix = ("use precision='bf16-mixed' (Ampere or newer GPU) or use_mixed_precision=False; or keep that layer's "
               "output small (no large constant scale, a LayerNorm after it).")
    else:
        message = f"keep fp32: {why}, and bf16 also breaks it (loss {brain['loss']:.4g})."
        fix = "train with use_mixed_precision=False, or keep the activations of that layer small."
    return CheckResult("fp16", "fail" if uses_fp16 else "warn", message, fix, numbers)


def _compare(s: Subject, reference: Probe, dtype: torch.dtype) -> dict:
    probe = run_probe(s, dtype)
    grads = [g for g in probe.grad_norms.values() if g is not None]
    finite = all(map(_finite, [probe.loss, *grads]))
    difference = abs(probe.loss - reference.loss) / max(abs(reference.loss), 1e-8) if finite else float("inf")
    return {"loss": probe.loss, "finite": finite, "relative_loss_difference": difference}


def _finite(x: float) -> bool:
    return x == x and abs(x) != float("inf")
