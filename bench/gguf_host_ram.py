"""Host RAM a GGUF export takes, against what utils.gguf_export.check_host_memory asks for before it starts.

On Colab the host has 12.7 GB: the export's fp32 copy (written from, and the reference its read-back is checked
against) is what runs out there, not the GPU. check_host_memory refuses an export whose figure exceeds the RAM
available; this bench measures, on the real SmolLM2-135M-Instruct (tests/real_model.py; its weights loaded in
bf16, a full fine-tune's shape), the export's peak resident memory above the process's before it, sampled every
10 ms, for each quant, each in a fresh child process that has imported the GGUF reader and writer first (an
export after a warm-up one in the same process measures less: the allocator keeps the freed pages resident).

    PYTHONPATH=. python bench/gguf_host_ram.py

Measured 2026-12-07 on this 2-core CPU (load average 1.8, a CI run beside it): extra peak f16 7.41, q8_0 6.62,
q4_0 6.06 bytes per parameter; the check asks 7.60, 6.66, 6.16 (taken / asked 0.97-0.99). Part of the taken figure
is fixed (first-call pages of the reader), so a larger model takes fewer bytes per parameter than asked. So on
Colab's 12.7 GB (about 11 GB available beside the kernel) a full fine-tune exports as f16 up to about 1.4B
parameters; a 3B model is refused in one line with the safetensors route, instead of killing the session.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def resident() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_of(work) -> int:
    """Peak resident bytes above the start while work() runs."""
    peak, done = [resident()], threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], resident())
            time.sleep(0.01)

    before = resident()
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        work()
    finally:
        done.set()
        watcher.join()
    return peak[0] - before


def child(quant: str) -> None:
    import gguf  # noqa: F401  (imported before the baseline: the export's figure is its data, not its modules)
    import torch
    import transformers.modeling_gguf_pytorch_utils  # noqa: F401
    from transformers import AutoModelForCausalLM

    import utils.gguf_export as gguf_export
    from tests.real_model import smollm2_folder
    from utils.config import WizardConfig
    from utils.data.tokenizers import load_model_tokenizer

    folder = smollm2_folder()
    tmp = Path(tempfile.mkdtemp())
    config = WizardConfig(model_source="pretrained", pretrained_model=str(folder), output_dir=str(tmp / "run"))
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).eval()
    predictor = types.SimpleNamespace(model=model, config=config, tokenizer=load_model_tokenizer(str(folder),
                                                                                                classify=False))
    parameters = sum(p.numel() for p in model.parameters())
    taken = peak_of(lambda: gguf_export.export_gguf(predictor, tmp / quant, quant))
    asked = gguf_export.FP32_COPY_BYTES + gguf_export.FILE_BYTES[quant] + gguf_export.TRANSIENT_BYTES
    print(f"{quant:5s} {parameters / 1e6:.1f}M parameters: extra peak {taken / 2**20:6.0f} MiB = "
          f"{taken / parameters:.2f} B/param; the check asks {asked:.2f} B/param (taken / asked "
          f"{taken / parameters / asked:.2f})", flush=True)


def main() -> None:
    print(f"SmolLM2-135M-Instruct in bf16, load average {os.getloadavg()[0]:.2f}")
    for quant in ("f16", "q8_0", "q4_0"):
        subprocess.run([sys.executable, __file__, "--child", quant], check=True, stderr=subprocess.DEVNULL)


if __name__ == "__main__":
    child(sys.argv[2]) if sys.argv[1:2] == ["--child"] else main()
