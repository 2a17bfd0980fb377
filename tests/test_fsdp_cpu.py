"""The module's FSDP path under torch's real FSDP, in two CPU processes (gloo): Lightning runs FSDP on GPUs
only, but torch's FullyShardedDataParallel shards on a CPU too. Wrapped as Lightning's FSDPStrategy wraps
it (the LightningModule the root, each template Block a unit, use_orig_params=True), the weight decay
groups are the ones decided before wrapping, clipping by norm is over every shard, and Lightning's full
state dict gathers the trained weights into a plain copy of the model."""

from __future__ import annotations

import copy
import math
import os
import types

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.test_distributed import free_port

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="this torch build has no torch.distributed")

CLIP = 0.01


def _run(rank: int, world_size: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        _check(rank, world_size, out)
    finally:
        dist.destroy_process_group()


def _check(rank: int, world_size: int, out: str) -> None:
    from torch.distributed.fsdp import FullStateDictConfig, FullyShardedDataParallel, StateDictType
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    from templates import build_template
    from utils.training.builder import template_blocks
    from utils.models.tasks import LanguageModelTask
    from utils.training.module import TransformerModule, clip_gradients, param_groups

    torch.manual_seed(0)  # the same initial model in both processes, as Lightning's seed_everything gives
    model = build_template("gpt", {"vocab_size": 64, "max_seq_len": 16, "size": "tiny", "dropout": 0.0})
    plain = copy.deepcopy(model)
    module = TransformerModule(model, LanguageModelTask(), 1e-2, 0.1, 0.0, 10)
    names = {id(p): n for n, p in model.named_parameters()}
    as_built = [sorted(names[id(p)] for p in g["params"]) for g in param_groups(model, 0.1)]
    root = FullyShardedDataParallel(module, auto_wrap_policy=ModuleWrapPolicy(template_blocks(model)),
                                    device_id=torch.device("cpu"), use_orig_params=True)
    assert all(p.ndim == 1 for p in model.parameters())  # every parameter now a flat view of this process's shard
    optimizer = module.configure_optimizers()["optimizer"]
    assert [sorted(names[id(p)] for p in g["params"]) for g in optimizer.param_groups] == as_built

    ids = torch.randint(0, 64, (4, 17), generator=torch.Generator().manual_seed(rank))
    loss, _ = module.task.loss(root, (ids[:, :-1], ids[:, 1:]))  # the root's forward gathers each unit in turn
    loss.backward()
    trainer = types.SimpleNamespace(precision_plugin=types.SimpleNamespace(scaler=None), strategy=types.SimpleNamespace(model=root))
    clip_gradients(trainer, optimizer, CLIP)
    local = sum(float(p.grad.float().pow(2).sum()) for p in model.parameters() if p.grad is not None)
    total = torch.tensor(local, dtype=torch.float64)
    dist.all_reduce(total)  # the norm over every process's shards
    optimizer.step()

    # FSDPStrategy.lightning_module_state_dict's full state dict, whole on rank 0 only; without its offload to
    # the CPU, which on CPU shards crashes torch 2.13 (a GPU concern: the gathered copy leaves GPU memory).
    config = FullStateDictConfig(offload_to_cpu=False, rank0_only=True)
    with FullyShardedDataParallel.state_dict_type(root, StateDictType.FULL_STATE_DICT, config):
        full = root.state_dict()
    if rank == 0:
        plain.load_state_dict({k[len("model."):]: v for k, v in full.items() if k.startswith("model.")})
        torch.save({"norm": float(total.sqrt()), "state": plain.state_dict()}, out)


def test_real_fsdp_on_two_cpu_processes_keeps_decay_groups_clips_over_all_shards_and_gathers(tmp_path):
    out = tmp_path / "gathered.pt"
    mp.spawn(_run, args=(2, free_port(), str(out)), nprocs=2, join=True)
    saved = torch.load(out)
    assert math.isclose(saved["norm"], CLIP, rel_tol=1e-3)  # clipped to 0.01 over both processes' shards
    from templates import build_template

    torch.manual_seed(0)
    initial = build_template("gpt", {"vocab_size": 64, "max_seq_len": 16, "size": "tiny", "dropout": 0.0})
    state = saved["state"]
    assert set(state) == set(initial.state_dict())  # the plain model's own keys, whole shapes
    assert all(state[k].shape == v.shape for k, v in initial.state_dict().items())
    moved = [k for k, v in initial.state_dict().items() if not torch.equal(state[k], v)]
    assert "blocks.0.attn.qkv.weight" in moved and "wte.weight" in moved  # the trained weights, not the initial
