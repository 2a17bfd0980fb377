"""Chat data: preparing it the first time (formatted, tokenized, marked) against a rerun that reads the cache.

    pip install -e .    # once: makes utils importable
    python bench/chat_cache.py [--conversations 5000] [--rounds 3]

A rerun after a disconnect prepares the same data again before it resumes. This writes --conversations chat
rows (the messages shape: a question of 20 words and an answer of 100, cut from the embedded corpus) to a JSONL
file and prepares them with bench/lora.py's byte-level BPE tokenizer (no chat template: the kit's plain one):
once into an empty data_cache/ (encoded and written), then again (read back). Each round uses a new cache
folder. Prints the seconds of each and the ratio, with the load average.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from lora import ROOT, build_model  # bench/ is on sys.path when a script in it runs
from utils.data import DataSpec, prepare_data


def write_rows(path: Path, n: int) -> None:
    words = (ROOT / "utils/data/embedded/python_reference.txt").read_text(encoding="utf-8").split()
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            at = (i * 97) % (len(words) - 120)
            question, answer = " ".join(words[at:at + 20]), " ".join(words[at + 20:at + 120])
            f.write(json.dumps({"messages": [{"role": "user", "content": question},
                                             {"role": "assistant", "content": answer}]}) + "\n")


def timed(spec: DataSpec) -> tuple[float, str]:
    out = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(out):
        prepare_data(spec)
    return time.perf_counter() - t0, out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        build_model(tmp / "model", hidden=32, layers=1)
        write_rows(tmp / "chat.jsonl", args.conversations)
        first, again = [], []
        for r in range(args.rounds):
            spec = DataSpec(task="lm", source="file", name="", subset="", path=str(tmp / "chat.jsonl"),
                            text_column="text", label_column="label", val_split=0.05, seed=0, max_seq_len=256,
                            tokenizer="model", tokenizer_path=str(tmp / "model"), vocab_size=0,
                            cache_dir=tmp / f"cache{r}")
            seconds, printed = timed(spec)
            first.append(seconds)
            seconds, printed_again = timed(spec)
            assert "from cache" in printed_again, "the second preparation did not read the cache"
            again.append(seconds)
            print(f"round {r + 1}: encode {first[-1]:.2f} s, from cache {again[-1]:.2f} s; "
                  f"load {os.getloadavg()[0]:.2f}", flush=True)
        a, b = statistics.median(first), statistics.median(again)
        print(f"median of {args.rounds}: {args.conversations:,} conversations encoded in {a:.2f} s, read from the cache "
              f"in {b:.2f} s: {a / b:.1f}x faster")


if __name__ == "__main__":
    main()
