"""LoRA fine-tuning: the kit against TRL's SFTTrainer + peft, and the kit's full vs LoRA vs QLoRA peak memory.

Trains the same small Llama (built from a config, saved locally; nothing downloaded) on the same text for
the same optimizer steps, batch and sequence length, each run in its own process so its peak RSS is its
own. Prints tokens/s, peak RSS and final loss side by side. TRL is not a dependency of the kit: install it
into a folder of its own, without its dependencies, so the shared environment's torch and transformers stay:

    pip install --no-deps --target /tmp/trl trl
    python bench/lora.py --trl-path /tmp/trl [--steps 30] [--batch 4] [--seq 128]

TRL packs the text into sequences of --seq tokens; the kit cuts the same token stream into windows of
--seq tokens: the same tokens per step, not the same batches, so losses agree only roughly.
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
TEXT_CHARS = 200_000


def build_model(folder: Path, hidden: int, layers: int) -> None:
    """A Llama (hidden 256 x 4 layers: about 6M parameters) with a byte-level BPE tokenizer trained on the
    embedded corpus."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    text = (ROOT / "utils/data/embedded/python_reference.txt").read_text(encoding="utf-8")[:TEXT_CHARS]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator([text], trainers.BpeTrainer(vocab_size=2048, special_tokens=["<|endoftext|>"],
                                                        show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 11 // 4,
                                 num_hidden_layers=layers, num_attention_heads=8, num_key_value_heads=2,
                                 max_position_embeddings=512)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "text.txt").write_text(text, encoding="utf-8")


def run_kit(args) -> dict:
    from utils.config import WizardConfig
    from utils.env import DeviceInfo
    from utils.training import train

    config = WizardConfig(model_source="pretrained", pretrained_model=args.model, finetune_method=args.method,
                          lora_rank=16, dataset_source="file", dataset_path=str(Path(args.model) / "text.txt"),
                          max_seq_len=args.seq, batch_size=args.batch, max_steps=args.steps, learning_rate=2e-4,
                          warmup_ratio=0.1, weight_decay=0.0, val_split=0.02, log_every_n_steps=1,
                          checkpoint_every_minutes=60, output_dir=args.out, gradient_checkpointing="false")
    result = train(config, device=DeviceInfo("cpu", "CPU"))
    return {"tokens_per_sec": result.tokens_per_sec, "final_loss": result.train_loss}


def run_trl(args) -> dict:
    sys.path.insert(0, args.trl_path)
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    text = (Path(args.model) / "text.txt").read_text(encoding="utf-8")
    chunks = [text[i:i + 2000] for i in range(0, len(text), 2000)]
    sft = SFTConfig(output_dir=args.out, max_steps=args.steps, per_device_train_batch_size=args.batch,
                    learning_rate=2e-4, lr_scheduler_type="cosine", warmup_steps=max(1, args.steps // 10), weight_decay=0.0,
                    logging_steps=1, max_length=args.seq, packing=True, report_to=[], save_strategy="no",
                    use_cpu=True, dataset_text_field="text", seed=42, bf16=False, fp16=False)
    lora = LoraConfig(r=16, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=args.model, args=sft, train_dataset=Dataset.from_dict({"text": chunks}),
                         peft_config=lora)
    metrics = trainer.train().metrics
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    return {"tokens_per_sec": args.steps * args.batch * args.seq / metrics["train_runtime"], "final_loss": losses[-1]}


def child(args) -> None:
    result = run_trl(args) if args.child == "trl" else run_kit(args)
    print("RESULT " + json.dumps(result))


def spawn(which: str, method: str, model: Path, args, out: Path) -> tuple[dict, float]:
    """One run in its own process: its result and its peak RSS in MB (ru_maxrss of that child alone, os.wait4)."""
    cmd = [sys.executable, __file__, "--child", which, "--method", method, "--model", str(model), "--out", str(out),
           "--steps", str(args.steps), "--batch", str(args.batch), "--seq", str(args.seq),
           "--trl-path", args.trl_path or ""]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    with tempfile.TemporaryFile("w+") as stderr:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
        stdout = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait for it again
        if proc.returncode:
            stderr.seek(0)
            raise SystemExit(f"{which} {method} failed:\n{stderr.read()[-3000:]}")
    line = next(line for line in stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT "):]), usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=256, help="model width (1024 shows the memory gap)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--trl-path", default="", help="folder trl was installed into with --no-deps --target")
    parser.add_argument("--child", choices=("kit", "trl"), help=argparse.SUPPRESS)
    parser.add_argument("--method", default="lora", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    work = Path(tempfile.mkdtemp(prefix="bench-lora-"))
    build_model(work / "model", args.hidden, args.layers)
    print(f"Model: Llama, {args.layers} layers x {args.hidden} wide, vocab 2048; {args.steps} steps of {args.batch} x {args.seq} tokens, "
          f"CPU, fp32, LoRA rank 16 on all linear layers; load {os.getloadavg()[0]:.1f} ({os.cpu_count()} CPUs)")
    rows = []
    runs = [("kit", "lora")] + ([("trl", "lora")] if args.trl_path else []) + [("kit", "full"), ("kit", "qlora")]
    for which, method in runs:
        result, rss = spawn(which, method, work / "model", args, work / f"{which}-{method}")
        rows.append((which, method, result, rss))
    print(f"{'run':<12} {'tokens/s':>10} {'peak RSS MB':>12} {'final loss':>11}")
    for which, method, result, rss in rows:
        print(f"{which + ' ' + method:<12} {result['tokens_per_sec']:>10,.0f} {rss:>12,.0f} "
              f"{result['final_loss']:>11.4f}")
    kit = rows[0][2]["tokens_per_sec"]
    if args.trl_path:
        print(f"kit / TRL tokens/s: {kit / rows[1][2]['tokens_per_sec']:.2f}x")


if __name__ == "__main__":
    main()
