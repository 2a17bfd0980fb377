"""LastCheckpoint's random state per process, restored where it fits; its votes between processes once per
logging interval instead of once per step."""

from __future__ import annotations

import types

import pytorch_lightning as pl
import torch

from utils.env import DeviceInfo
from utils.training import train
from utils.training.callbacks.last_checkpoint import LastCheckpoint, rng_to_restore

CPU = DeviceInfo("cpu", "CPU")


def _cpu_state(seed: int) -> torch.Tensor:
    return torch.Generator().manual_seed(seed).get_state()


def _cuda_state(byte: int) -> torch.Tensor:
    return torch.full((16,), byte, dtype=torch.uint8)  # the size of a CUDA (Philox) generator's state


def test_each_process_takes_its_own_ranks_state():
    saved = {"rng_per_rank": [{"cpu": _cpu_state(0), "cuda": _cuda_state(0)},
                              {"cpu": _cpu_state(1), "cuda": _cuda_state(1)}]}
    for rank in (0, 1):
        state, note = rng_to_restore(saved, rank, world_size=2, on_gpu=True)
        assert torch.equal(state["cpu"], _cpu_state(rank)) and torch.equal(state["cuda"], _cuda_state(rank))
        assert note == ""  # a DDP resume on the same processes is exact


def test_a_checkpoint_of_more_gpus_than_now_restores_what_fits_and_says_so():
    """A 2-GPU run resumed on one GPU (a Colab T4): set_rng_state_all with two states raised IndexError there."""
    old = {"rng": {"cpu": _cpu_state(0), "cuda": [_cuda_state(0), _cuda_state(1)]}}  # get_rng_state_all's list
    state, note = rng_to_restore(old, rank=0, world_size=1, on_gpu=True)
    assert torch.equal(state["cpu"], _cpu_state(0)) and torch.equal(state["cuda"], _cuda_state(0))
    assert note == ""  # one process saved it, one restores it: its own GPU's state
    two = {"rng_per_rank": [{"cpu": _cpu_state(0), "cuda": _cuda_state(0)},
                            {"cpu": _cpu_state(1), "cuda": _cuda_state(1)}]}
    state, note = rng_to_restore(two, rank=0, world_size=1, on_gpu=True)
    assert torch.equal(state["cuda"], _cuda_state(0))
    assert note == ("Random state: the checkpoint holds the random state of 2 training process(es) and this run "
                    "has 1: restored for process 0. Dropout and other random draws differ from the uninterrupted "
                    "run from here on.")
    state, note = rng_to_restore(two, rank=2, world_size=3, on_gpu=True)  # a new rank keeps its seeded state
    assert state is None and "has 3: restored for processes 0-1" in note


class FirstBatchState(pl.Callback):
    """The CPU random state at the first training batch, after LastCheckpoint (installed before it) restored it."""

    def __init__(self):
        self.state = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.state is None:
            self.state = torch.get_rng_state()


def test_resume_from_a_checkpoint_of_two_gpu_processes_on_this_cpu(tiny_config, capsys):
    config = tiny_config.replace(max_steps=3, max_epochs=3, dropout=0.1)  # epochs left to resume into
    first = train(config, device=CPU)
    ckpt = torch.load(first.last_checkpoint, weights_only=False)
    key = next(k for k in ckpt["callbacks"] if k.startswith("LastCheckpoint"))
    assert [set(s) for s in ckpt["callbacks"][key]["rng_per_rank"]] == [{"cpu", "cuda"}]
    injected = [{"cpu": _cpu_state(10), "cuda": _cuda_state(0)}, {"cpu": _cpu_state(11), "cuda": _cuda_state(1)}]
    ckpt["callbacks"][key] = {"rng_per_rank": injected}  # as a 2-GPU DDP run would have saved it
    torch.save(ckpt, first.last_checkpoint)
    capsys.readouterr()
    probe = FirstBatchState()
    resumed = train(config.replace(max_steps=5), device=CPU, extra_callbacks=[probe])
    assert resumed.global_step == 5 and torch.equal(probe.state, _cpu_state(10))
    out = capsys.readouterr().out
    assert ("Random state: the checkpoint holds the random state of 2 training process(es) and this run has 1: "
            "restored for process 0; its GPU random state is not restored on this CPU.") in out


class FakeStrategy:
    """Lightning's strategy as LastCheckpoint sees it in a 2-process run: reduce is the collective, counted."""

    root_device = torch.device("cpu")

    def __init__(self):
        self.reduces = []

    def reduce(self, tensor, reduce_op):
        self.reduces.append(self.step)
        return tensor * 2  # the other process voted the same


def test_processes_vote_once_per_logging_interval(tmp_path):
    strategy = FakeStrategy()
    saves = []
    trainer = types.SimpleNamespace(world_size=2, global_step=0, current_epoch=0, num_training_batches=100, max_steps=-1,
                                    strategy=strategy, save_checkpoint=lambda path, **options: saves.append(trainer.global_step))
    last = LastCheckpoint(tmp_path / "last.ckpt", every_seconds=0.0, agree_every=5)  # due at every vote
    last._step_seen = 0
    for step in range(1, 21):
        trainer.global_step = strategy.step = step
        last.on_train_batch_end(trainer, None, {}, None, batch_idx=step - 1)
    assert strategy.reduces == [5, 10, 15, 20]  # one collective (and host sync) per interval, not per step
    assert saves == [5, 10, 15, 20]


class _Witness(torch.nn.Module):
    """A tiny language model that notes, at each training step, the batch it got and a random draw (as dropout
    makes one): two runs that note the same list read the same data in the same order with the same randomness.
    It notes only while Lightning trains (_Fitting): the pre-flight measures the model itself, not a copy, and its
    passes are not the run's steps."""

    def __init__(self, seen: list):
        super().__init__()
        self.emb = torch.nn.Embedding(128, 8)
        self.head = torch.nn.Linear(8, 128)
        self.seen = seen
        self.fitting = False

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        if self.training and self.fitting:
            self.seen.append((idx.tolist(), torch.rand(()).item()))
        return self.head(self.emb(idx))


class _Fitting(pl.Callback):
    def on_train_start(self, trainer, pl_module):
        pl_module.model.fitting = True

    def on_train_end(self, trainer, pl_module):
        pl_module.model.fitting = False


def test_raising_max_steps_after_a_stop_inside_the_epoch_continues_that_epoch(tiny_config, tmp_path):
    """The notebook's "raise Max steps to train further": a run of 3 steps, then the same run raised to 6, reads the
    batches and draws the random numbers an uninterrupted 6-step run does, in one epoch (Lightning alone closes the
    epoch at the stop, and the rerun started the next one; with max_epochs=1 it trained nothing)."""
    config = tiny_config.replace(max_epochs=1, dropout=0.1)
    whole: list = []
    train(config.replace(max_steps=6, output_dir=str(tmp_path / "whole")), model=_Witness(whole), device=CPU,
          extra_callbacks=[_Fitting()])
    stretches: list = []
    first = train(config.replace(max_steps=3, output_dir=str(tmp_path / "raised")), model=_Witness(stretches),
                  device=CPU, extra_callbacks=[_Fitting()])
    assert first.val_loss is not None  # the stop still validates
    ckpt = torch.load(first.last_checkpoint, map_location="cpu", weights_only=False)
    assert (ckpt["epoch"], ckpt["global_step"]) == (0, 3)
    second = train(config.replace(max_steps=6, output_dir=str(tmp_path / "raised")), model=_Witness(stretches),
                   device=CPU, extra_callbacks=[_Fitting()])
    assert (second.resumed_from, second.steps_run, second.global_step) == (first.last_checkpoint, 3, 6)
    assert len(whole) == 6 and stretches == whole
    assert second.best_checkpoint is not None and second.best_checkpoint.exists()

