"""Peak memory of prepare_data on a large text file, against the file's size.

Writes a text file of --size-mb MB (the embedded corpus's paragraphs in seeded random order) in a
temporary folder, runs prepare_data on it in a fresh subprocess per tokenizer, and prints the file
size, the child's peak RSS (ru_maxrss), the RSS of the same child right after its imports (torch and
friends), the ratios against the file size, and the time; then once more, when prepare_data finds
the tokens the first run cached and memory-maps them. The folder is deleted afterwards.

    python bench/prepare_rss.py                      # 200 MB, char, byte and bpe
    python bench/prepare_rss.py --size-mb 20 --tokenizers byte
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHILD = r"""
import json, resource, sys, time
from utils.config import WizardConfig
from utils.data import prepare_data
from utils.data.spec import build_data_spec
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
after_imports = rss()
config = WizardConfig(dataset_source="file", dataset_path=sys.argv[1], tokenizer_strategy=sys.argv[2],
                      vocab_size=int(sys.argv[3]), output_dir=sys.argv[4], max_seq_len=256)
start = time.perf_counter()
data = prepare_data(build_data_spec(config))
seconds = time.perf_counter() - start
print(json.dumps({"after_imports": after_imports, "peak": rss(), "seconds": seconds, "tokens": data.num_tokens,
                  "vocab": data.tokenizer.vocab_size, "windows": len(data.train) + len(data.val)}))
"""


def write_corpus(path: Path, size_bytes: int, seed: int = 0) -> int:
    paragraphs = (ROOT / "utils/data/embedded/python_reference.txt").read_text(encoding="utf-8").split("\n\n")
    rng = random.Random(seed)
    written = 0
    with open(path, "w", encoding="utf-8") as f:
        while written < size_bytes:
            rng.shuffle(paragraphs)
            for p in paragraphs:
                written += len((p + "\n\n").encode("utf-8"))
                f.write(p + "\n\n")
    return path.stat().st_size


def run_child(path: Path, strategy: str, vocab_size: int, out: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(path), strategy, str(vocab_size), str(out)],
                          cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"prepare_data failed for {strategy}:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=200)
    parser.add_argument("--tokenizers", default="char,byte,bpe")
    parser.add_argument("--vocab-size", type=int, default=4096, help="BPE target")
    args = parser.parse_args()
    mb = 1024 * 1024
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "corpus.txt"
        size = write_corpus(path, int(args.size_mb * mb))
        print(f"file: {size / mb:.1f} MiB ({size:,} bytes)", flush=True)
        print(f"{'tokenizer':<19} {'vocab':>6} {'tokens':>12} {'peak RSS':>10} {'peak/file':>9} "
              f"{'imports':>9} {'(peak-imports)/file':>20} {'time':>8}")
        for strategy in args.tokenizers.split(","):
            for run in ("", " (cached)"):  # the second run finds the token cache the first one wrote
                r = run_child(path, strategy, args.vocab_size, Path(tmp) / f"run-{strategy}")
                print(f"{strategy + run:<19} {r['vocab']:>6} {r['tokens']:>12,} {r['peak'] / mb:>7.0f} MiB "
                      f"{r['peak'] / size:>9.2f} {r['after_imports'] / mb:>5.0f} MiB "
                      f"{(r['peak'] - r['after_imports']) / size:>20.2f} {r['seconds']:>7.1f}s", flush=True)


if __name__ == "__main__":
    main()
