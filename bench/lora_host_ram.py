"""Host RAM of the work train() does before a LoRA run's first step, against the frozen base's storage.

A Llama-3.2-1B-shaped model (tests/fixtures/hf_configs/llama-3.2-1b, random weights, saved in fp16: 2.5 GB) is
fine-tuned with LoRA for a T4 (the decision injected: the base is stored in fp16, as on Colab). In a fresh child
process, the steps train() takes before its first optimizer step run on this CPU, where the model stays (no GPU
here): the base loaded and the adapters applied (build_model, with its model check), the sequence-length check
and the memory measurement at max_seq_len. The child prints its peak RSS above the RSS after its imports,
divided by the base's storage. Issue 28 asked for under 1.75x (it was 2.3x: a copy of the model for the length
check and gradients for the whole base in the model check).

    python bench/lora_host_ram.py                 # max_seq_len 256 (the passes are fp16 on a CPU: slow)
    python bench/lora_host_ram.py --seq-len 1024

The folder is written to a temporary directory (2.5 GB) and deleted afterwards. Measured here (one thread, a test
run beside it): base 2.30 GB; the checks' peak RSS above the imports 0.80x the base (transformers memory-maps the
fp16 safetensors, so the base's pages count as they are read), 583 s of fp16 passes on this CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHILD = r"""
import json, resource, sys, time
import torch
from utils.config import WizardConfig
from utils.env import DeviceInfo
from utils.models.build import build_model, build_task
from utils.training.estimate import check_sequence_length, measure_memory
from utils.precision import resolve_precision
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
after_imports = rss()
folder, seq_len = sys.argv[1], int(sys.argv[2])
config = WizardConfig(model_source="pretrained", pretrained_model=folder, finetune_method="lora", lora_rank=16,
                      max_seq_len=seq_len, batch_size=4, dataset_source="embedded")
decision = resolve_precision(True, "auto", DeviceInfo("cuda", "Tesla T4", (7, 5), 15 << 30))
start = time.perf_counter()
model = build_model(config, 128256, decision=decision, device=torch.device("cpu"))
loaded = rss()
task = build_task(config)
check_sequence_length(config, decision, model, task, 128256, 0)
memory = measure_memory(config, decision, model, task, 128256, 0)
base = sum(p.untyped_storage().nbytes() for p in {id(p): p for p in model.parameters()}.values()
           if not p.requires_grad)
print(json.dumps({"after_imports": after_imports, "after_load": loaded, "peak": rss(), "base_bytes": base,
                  "seconds": time.perf_counter() - start, "answer": memory.bytes_at(config.batch_size)}))
"""


def write_model(folder: Path) -> None:
    """Random weights of the 1B shape in fp16, without a 5 GB fp32 initialisation."""
    import torch
    from transformers import AutoConfig, LlamaForCausalLM

    config = AutoConfig.from_pretrained(ROOT / "tests/fixtures/hf_configs/llama-3.2-1b")
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model = model.to_empty(device="cpu").to(torch.float16)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02, generator=generator)
    model.tie_weights()
    model.save_pretrained(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=256)
    args = parser.parse_args()
    print(f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; load average before: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="lora-host-ram-") as tmp:
        write_model(Path(tmp))
        proc = subprocess.run([sys.executable, "-c", CHILD, tmp, str(args.seq_len)], cwd=ROOT, capture_output=True,
                              text=True)
    if proc.returncode != 0:
        raise SystemExit(proc.stdout[-3000:] + proc.stderr[-3000:])
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    base = r["base_bytes"]
    print(f"1B-shaped LoRA for a T4, max_seq_len {args.seq_len}: base {base / 2**30:.2f} GB (fp16); RSS above the "
          f"imports after loading {(r['after_load'] - r['after_imports']) / base:.2f}x the base, at the peak of the "
          f"checks {(r['peak'] - r['after_imports']) / base:.2f}x ({r['seconds']:.0f} s); memory answer at batch 4: "
          f"{r['answer'] / 2**30:.1f} GB")


if __name__ == "__main__":
    main()
