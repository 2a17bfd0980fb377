"""Know your model before you train it: checks that find the bugs hand-built transformers have.

    from utils.inspection import inspect_model
    report = inspect_model(config)       # builds the model and a real batch, runs every check
    print(report)                        # one line per check: pass / warn / fail / skipped, and the fix
    report.check("causality").verdict

or `python -m utils.training inspect --config FILE --set KEY=VALUE` (exit 0, or 4 when a check fails).
The report and plots go to output_dir/inspect/ (report.json, gradient_flow.png, activations.png,
attention.png); nothing else of a run in output_dir is touched. train() runs the cheap checks
(PREFLIGHT) before training unless config.inspect is False.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Optional

import torch

from utils.config import WizardConfig
from utils.env import DeviceInfo, detect_device
from utils.inspection.attention import check_attention
from utils.inspection.checks import (check_causality, check_initial_loss, check_memory, check_overfit_batch,
                                     check_padding, check_shapes)
from utils.inspection.numerics import check_activations, check_fp16, check_gradient_flow, run_probe
from utils.inspection.report import (REPORT_DIRNAME, CheckResult, InspectionReport, ModelInspectionError)
from utils.inspection.subject import Subject, build_subject, first_rows
from utils.precision import PrecisionDecision, resolve_precision

CHECKS = ("shapes", "causality", "padding", "initial_loss", "gradient_flow", "activations", "fp16",
          "overfit_batch", "memory", "attention")
PREFLIGHT = ("shapes", "causality", "padding", "gradient_flow")  # what train() runs, cheaply: about a training step
PREFLIGHT_ROWS = 2  # rows of the training data the pre-flight's gradient check runs on


def inspect_model(config: WizardConfig, device: Optional[DeviceInfo] = None, write: bool = True,
                  on_check: Optional[Callable[[CheckResult], None]] = None, run_on: str = "") -> InspectionReport:
    """Build the config's model and a batch of its data, run every check; write output_dir/inspect/ when write.
    device: the run's device (detected when not given), which decides the precision; the checks run on it,
    or on run_on ("cpu": the wizard on a machine without that GPU). on_check: called with each result as it
    comes (the command line prints it at once)."""
    config = config.validate()
    started = time.perf_counter()
    decision = resolve_precision(config.use_mixed_precision, config.precision, device or detect_device(config.devices))
    folder = Path(config.output_dir) / REPORT_DIRNAME if write else None
    with torch.random.fork_rng(devices=[]):
        subject = build_subject(config, decision, run_on)
        report = InspectionReport(subject.describe(), "", subject.batch_source)
        for result in run_checks(subject, CHECKS, folder):
            report.checks.append(result)
            if on_check:
                on_check(result)
    report.precision_line = precision_line(decision, report)
    report.seconds = time.perf_counter() - started
    if folder is not None:
        report.write(folder)
    return report


def run_checks(subject: Subject, names: tuple[str, ...], folder: Optional[Path] = None, cheap: bool = False):
    """The named checks' results in CHECKS order, one at a time; the probe they share runs once."""
    probe = None
    for name in (n for n in CHECKS if n in names):
        started = time.perf_counter()
        try:
            if name in ("gradient_flow", "activations", "fp16") and probe is None:
                probe = run_probe(subject)
            result = _run_one(subject, name, probe, folder, cheap)
        except Exception as e:  # the user's model code raised inside a check: that is this check's finding
            result = CheckResult(name, "fail", f"the model raised {type(e).__name__} during this check: "
                                 f"{' '.join(str(e).split())[:300]}.", "run the model on a batch of the data by "
                                 "hand to see where (python -m utils.training inspect shows every check).",
                                 {"error": type(e).__name__})
        result.seconds = time.perf_counter() - started
        yield result


def _run_one(subject: Subject, name: str, probe, folder: Optional[Path], cheap: bool) -> CheckResult:
    return {
        "shapes": lambda: check_shapes(subject, cheap=cheap),
        "causality": lambda: check_causality(subject, cheap=cheap),
        "padding": lambda: check_padding(subject),
        "initial_loss": lambda: check_initial_loss(subject),
        "gradient_flow": lambda: check_gradient_flow(subject, probe, folder),
        "activations": lambda: check_activations(subject, probe, folder),
        "fp16": lambda: check_fp16(subject, probe),
        "overfit_batch": lambda: check_overfit_batch(subject),
        "memory": lambda: check_memory(subject),
        "attention": lambda: check_attention(subject, folder),
    }[name]()


def precision_line(decision: PrecisionDecision, report: InspectionReport) -> str:
    """The precision decision, and what the fp16 check says against it."""
    line = f"Precision: {decision.precision} - {decision.reason}"
    fp16 = next((c for c in report.checks if c.name == "fp16"), None)
    if fp16 is not None and fp16.verdict in ("warn", "fail"):
        line += f" (the fp16 check says: {fp16.numbers.get('verdict', 'not safe for fp16')})"
    return line


def preflight(config: WizardConfig, decision: PrecisionDecision, model, task, data) -> str:
    """train()'s cheap checks (PREFLIGHT) on its model, where it is, and the first rows of its data (a PreparedData).
    Returns the line train() prints; raises ModelInspectionError naming each failed check and its fix."""
    started = time.perf_counter()
    subject = Subject(config, decision, model, task, data.tokenizer.vocab_size, data.num_classes, data.pad_id, (),
                      "the training data", data.tokenizer)
    subject.batch = first_rows(data.train, subject.device, PREFLIGHT_ROWS)  # where train() placed the model
    with torch.random.fork_rng(devices=[]):
        results = list(run_checks(subject, PREFLIGHT, cheap=True))
    failed = [r for r in results if r.verdict == "fail"]
    if failed:
        raise ModelInspectionError(
            "The model failed the checks run before training:\n" + "\n".join(r.line() for r in failed)
            + "\nFix the model, or set inspect=False to train anyway; `python -m utils.training inspect` runs "
              "every check and draws the plots.")
    ran = [r.name for r in results if r.verdict != "skipped"]
    return f"Inspection: {', '.join(ran)} passed ({time.perf_counter() - started:.2f} s; inspect=False skips them)"


__all__ = ["inspect_model", "preflight", "InspectionReport", "CheckResult", "ModelInspectionError", "CHECKS",
           "PREFLIGHT"]
