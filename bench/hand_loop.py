"""The kit's training written by hand, for the benchmarks to measure the kit against.

Same model (compiled when config.compile), batches, AdamW (groups and implementation), TF32
setting, warmup+cosine schedule, clipping, autocast and GradScaler as utils.training builds them;
no Lightning, no callbacks, no logging, no loss read back. Used by bench/throughput.py and bench/gpu.py.
"""

from __future__ import annotations

import time
from typing import Callable

import pytorch_lightning as pl
import torch

from utils.config import WizardConfig
from utils.data import prepare_data
from utils.training.builder import adamw_options, apply_matmul_precision, build_dataloaders, total_steps
from utils.data.spec import build_data_spec
from utils.models.build import build_model, build_task
from utils.training.module import param_groups, warmup_cosine
from utils.precision import PrecisionDecision


def hand_loop_tokens_per_sec(config: WizardConfig, decision: PrecisionDecision, warmup: int, steps: int,
                             clock: Callable[[], float] = time.perf_counter) -> float:
    """Tokens per second over optimizer steps warmup+1 .. warmup+steps (each batch timed once on the device).

    clock: wall time by default; bench/throughput.py --clock cpu passes time.process_time.
    """
    device = "cuda" if decision.device.kind == "cuda" else "cpu"
    pl.seed_everything(config.seed, workers=True, verbose=False)
    data = prepare_data(build_data_spec(config))
    model = build_model(config, data.tokenizer.vocab_size, data.num_classes, data.pad_id).to(device)
    if config.compile:
        model.compile()
    apply_matmul_precision(decision)  # TF32 where the kit turns it on (a process-wide setting)
    task = build_task(config)
    train_loader, _ = build_dataloaders(config, data.train, data.val, pin_memory=device == "cuda")
    optimizer = torch.optim.AdamW(param_groups(model, config.weight_decay), lr=config.learning_rate,
                                  betas=(0.9, 0.95), **adamw_options(decision.device.kind))
    total = total_steps(config, len(train_loader))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(int(config.warmup_ratio * total), total))
    scaler = torch.amp.GradScaler(device, enabled=decision.uses_scaler)
    autocast = decision.autocast
    model.train()
    tokens, t0, step = 0, None, 0
    for batch in train_loader:
        batch = [t.to(device, non_blocking=True) for t in batch]
        if step == warmup:  # where the kit's clock starts too: the batch fetched and on the device
            _sync(device)
            t0 = clock()
        with autocast():
            loss, _ = task.loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.gradient_clip_val)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        step += 1
        if t0 is not None:
            tokens += batch[0].numel()
        if step == warmup + steps:
            break
    if step < warmup + steps:
        raise RuntimeError(f"the training data gave only {step} batches; {warmup + steps} were needed")
    _sync(device)
    return tokens / (clock() - t0)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()
