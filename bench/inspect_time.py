"""How long `inspect` takes on a config, and what train()'s pre-flight checks add to its start-up.

Runs `python -m utils.training inspect` in a fresh subprocess (imports included, as a user meets it) and
prints its wall and CPU time with the machine's load; then, in this process, times the per-check seconds
of inspect_model and train()'s pre-flight checks (utils.inspection.preflight) on the same model, warm.
Everything goes to a temporary folder, deleted afterwards.

    python bench/inspect_time.py                                  # the default config
    python bench/inspect_time.py --set model_size=small --set batch_size=32
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory(prefix="kit-inspect-bench-") as scratch:
        sets = [a for kv in args.overrides + [f"output_dir={scratch}/run"] for a in ("--set", kv)]
        print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
        before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
        code = subprocess.run([sys.executable, "-m", "utils.training", "inspect", *sets], cwd=ROOT,
                              capture_output=True, text=True).returncode
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        print(f"inspect command: {time.perf_counter() - started:.1f} s wall, {cpu:.1f} s CPU, exit code {code}")
        warm(args.overrides, scratch)
        print(f"load average after: {os.getloadavg()[0]:.2f}")


def warm(overrides: list[str], scratch: str) -> None:
    """Per-check seconds of inspect_model, and train()'s pre-flight checks, with everything imported."""
    from utils.config import WizardConfig, apply_overrides
    from utils.data import prepare_data
    from utils.env import detect_device
    from utils.inspection import inspect_model, preflight
    from utils.models.build import build_model, build_task
    from utils.data.spec import build_data_spec
    from utils.precision import resolve_precision

    config = apply_overrides(WizardConfig(), overrides + [f"output_dir={scratch}/run"])
    report = inspect_model(config)
    print(f"inspect_model, warm: {report.seconds:.1f} s; " +
          ", ".join(f"{c.name} {c.seconds:.2f}" for c in report.checks))
    decision = resolve_precision(config.use_mixed_precision, config.precision, detect_device(config.devices))
    data = prepare_data(build_data_spec(config))
    model = build_model(config, data.tokenizer.vocab_size, data.num_classes, data.pad_id).to(decision.device.kind)
    seconds = []
    for _ in range(3):
        started = time.perf_counter()
        preflight(config, decision, model, build_task(config), data)
        seconds.append(time.perf_counter() - started)
    print(f"train()'s pre-flight checks: {min(seconds):.2f} s (best of 3; {', '.join(f'{s:.2f}' for s in seconds)})")


if __name__ == "__main__":
    main()
