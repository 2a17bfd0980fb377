"""What an inspection found: one CheckResult per check, and the report that prints and saves them.

A verdict is "pass", "warn", "fail" or "skipped". A fail is a finding about the model (the command
line exits 4), never an error of the kit. The report is written as inspect/report.json beside its
plots, in the run folder.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from utils.errors import KitError
from utils.files import atomic_write_text

VERDICTS = ("pass", "warn", "fail", "skipped")
REPORT_DIRNAME = "inspect"  # under output_dir
REPORT_FILENAME = "report.json"
NAME_WIDTH = 14  # the check names line up in the printed lines


class ModelInspectionError(KitError, ValueError):
    """A check found the model broken before training (train() runs the cheap checks); the message says how."""


@dataclass
class CheckResult:
    name: str  # shapes, causality, padding, ... (see utils.inspection.checks.CHECKS)
    verdict: str  # one of VERDICTS
    message: str  # a sentence a person reads: what was found
    fix: str = ""  # what to do about it; "" when there is nothing to do
    numbers: dict = field(default_factory=dict)  # what was measured, for the JSON and the tests
    plot: Optional[str] = None  # file name of its picture in the report folder
    seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict={self.verdict!r}; expected one of {VERDICTS}")

    def line(self) -> str:
        fix = f" Fix: {self.fix}" if self.fix and self.verdict in ("warn", "fail") else ""
        return f"{self.name:<{NAME_WIDTH}} {self.verdict:<7} {self.message}{fix}"


@dataclass
class InspectionReport:
    model: str  # e.g. "GPT, 0.82M parameters (template 'gpt')"
    precision_line: str  # the precision decision, with what the fp16 check says about it
    batch_source: str  # where the batch came from: the data, or random ids and why
    checks: list[CheckResult] = field(default_factory=list)
    folder: Optional[Path] = None  # where report.json and the plots were written
    seconds: float = 0.0

    def check(self, name: str) -> CheckResult:
        for result in self.checks:
            if result.name == name:
                return result
        raise KeyError(f"no check named {name!r}; ran: {', '.join(c.name for c in self.checks)}")

    @property
    def failed(self) -> list[CheckResult]:
        return [c for c in self.checks if c.verdict == "fail"]

    @property
    def exit_code(self) -> int:
        """0 when nothing failed, 4 when a check failed (the command line's exit code)."""
        return 4 if self.failed else 0

    def lines(self) -> list[str]:
        head = [f"Model: {self.model}", self.precision_line, f"Batch: {self.batch_source}"]
        counts = {v: sum(c.verdict == v for c in self.checks) for v in VERDICTS}
        tail = [f"{counts['pass']} passed, {counts['warn']} warned, {counts['fail']} failed, "
                f"{counts['skipped']} skipped in {self.seconds:.1f} s"]
        if self.folder is not None:
            plots = [c.plot for c in self.checks if c.plot]
            tail.append(f"Report: {self.folder / REPORT_FILENAME}" + (f"; plots: {', '.join(plots)}" if plots else ""))
        return head + [c.line() for c in self.checks] + tail

    def __str__(self) -> str:
        return "\n".join(self.lines())

    def to_dict(self) -> dict:
        return {"model": self.model, "precision": self.precision_line, "batch": self.batch_source,
                "seconds": round(self.seconds, 3), "exit_code": self.exit_code,
                "checks": {c.name: _jsonable(asdict(c)) for c in self.checks}}

    def write(self, folder: str | Path) -> Path:
        """report.json in folder (the plots are written there by the checks); returns its path."""
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / REPORT_FILENAME
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")
        return path


def _jsonable(value):
    """Numbers as JSON has them: an inf or NaN (an overflow, a broken loss) as a string, not invalid JSON."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
