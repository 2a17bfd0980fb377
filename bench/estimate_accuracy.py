"""How close the pre-flight estimate (utils.training.estimate) comes to the training it predicts.

    python bench/estimate_accuracy.py            # four configs, about 30-60 s of training each on a CPU

Each config trains through train(), which prints its estimate before the first step; the run's
result holds that estimate, the measured training time per optimizer step (validation excluded) and
the wall time of trainer.fit (validation and checkpoints included). Prints both pairs and their
ratios (estimate / actual); the goal is within +-25%.
"""

from __future__ import annotations

import os
import tempfile

from utils.config import WizardConfig
from utils.env import detect_device
from utils.training import train

# (name, config fields): different sizes, batches, accumulation and precision; short runs.
CONFIGS = [
    ("tiny 16x128", dict(model_size="tiny", batch_size=16, max_seq_len=128, max_steps=200)),
    ("tiny 32x64, accumulate 2", dict(model_size="tiny", batch_size=32, max_seq_len=64, gradient_accumulation_steps=2,
                                      max_steps=100)),
    ("small 8x128", dict(model_size="small", batch_size=8, max_seq_len=128, max_steps=60)),
    ("tiny 8x64 fp16 + GradScaler", dict(model_size="tiny", batch_size=8, max_seq_len=64, max_steps=40,
                                         use_mixed_precision=True, precision="16-mixed")),
]


def main() -> None:
    print(f"device: {detect_device().describe()}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; "
          f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    rows = []
    for name, fields in CONFIGS:
        with tempfile.TemporaryDirectory(prefix="estimate-accuracy-") as tmp:
            config = WizardConfig(val_split=0.02, log_every_n_steps=50, output_dir=tmp, **fields)
            result = train(config)
        est, steps = result.estimate, result.steps_run
        actual_step = result.train_seconds / steps
        rows.append((name, est.seconds_per_step, actual_step, est.total_seconds, result.fit_seconds))
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("\n| config | s/step estimated | s/step actual | ratio | total estimated | total actual (fit) | ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, est_step, step, est_total, total in rows:
        print(f"| {name} | {est_step:.3f} | {step:.3f} | {est_step / step:.2f} | {est_total:.1f} s | {total:.1f} s "
              f"| {est_total / total:.2f} |")


if __name__ == "__main__":
    main()
