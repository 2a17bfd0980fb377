"""Several training processes: which one this is, what only global rank zero does, and in which order.

One process trains per device, devices x num_nodes in all. Who starts them decides the order:

- Lightning's own launcher (`--set devices=4` on one machine): the process the user started is global
  rank zero. It takes the run lock, prepares the data and writes config.json and tokenizer/ before
  trainer.fit starts the other processes, which run the same command again (LOCAL_RANK set) and only
  read what it wrote.
- torchrun or SLURM: every process starts at once. Here the process group is opened before the data
  is prepared, so the others wait at a barrier until rank zero has prepared it (Lightning finds the
  group open and keeps it).

Before the Trainer exists the rank comes from the launcher's environment (RANK, SLURM_PROCID, or
NODE_RANK and LOCAL_RANK); once it exists, the Trainer's own ranks must agree (check_ranks).
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch

from utils.errors import KitError

# Rank zero may prepare data for long (a BPE trained on a large corpus, a Hub download) while the
# others wait at the barrier; the same timeout then holds for every collective of the run.
PREPARE_TIMEOUT = datetime.timedelta(hours=2)


class LaunchError(KitError, RuntimeError):
    """The processes started do not match devices x num_nodes, or disagree on their ranks."""


@dataclass(frozen=True)
class Launch:
    """This process's place among the run's processes, as far as the launcher's environment says."""

    world_size: int  # processes in all: devices per machine x num_nodes
    is_zero: bool  # global rank zero: the process that locks the folder and writes the run's files
    external: bool  # started by torchrun or SLURM: all processes at once, rank zero prepares first
    local_rank: int = 0  # this process's place on its machine: the GPU its model is placed on

    def wait_for_rank_zero(self) -> None:
        """Other ranks: block until rank zero has prepared the data (torchrun / SLURM only)."""
        if self.external and not self.is_zero:
            torch.distributed.barrier()

    def release_others(self) -> None:
        """Rank zero: the data and the run's files are ready; the waiting ranks may read them."""
        if self.external and self.is_zero:
            torch.distributed.barrier()


def plan_launch(world_size: int, device_kind: str) -> Launch:
    """Read this process's rank from the launcher's environment; under torchrun or SLURM open the
    process group now, so that rank zero can prepare the data while the others wait."""
    if world_size == 1:
        return Launch(1, True, False)
    env = _external_environment()
    if env is None:  # the user's own process, or one Lightning's launcher started with LOCAL_RANK
        node, local = int(os.environ.get("NODE_RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
        return Launch(world_size, node == 0 and local == 0, False, local)
    if env.world_size() != world_size:
        raise LaunchError(f"the launcher started {env.world_size()} processes, but devices x num_nodes is "
                          f"{world_size}; start one process per device (torchrun --nproc_per_node=DEVICES "
                          "--nnodes=NUM_NODES, or SLURM --ntasks-per-node=DEVICES --nodes=NUM_NODES)")
    if not torch.distributed.is_initialized():
        os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = env.main_address, str(env.main_port)
        backend = "nccl" if device_kind == "cuda" else "gloo"
        if device_kind == "cuda":
            torch.cuda.set_device(env.local_rank())
        torch.distributed.init_process_group(backend, rank=env.global_rank(), world_size=world_size,
                                             timeout=PREPARE_TIMEOUT)
    return Launch(world_size, env.global_rank() == 0, True, env.local_rank())


def _external_environment():
    """Lightning's description of a torchrun or SLURM launch, or None when neither started us."""
    from lightning_fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    if TorchElasticEnvironment.detect():
        return TorchElasticEnvironment()
    if SLURMEnvironment.detect():
        return SLURMEnvironment()
    return None


def check_ranks(launch: Launch, trainer) -> None:
    """The Trainer's ranks must be those the data was sharded for and the files were written by."""
    if trainer.world_size != launch.world_size or trainer.is_global_zero != launch.is_zero:
        raise LaunchError(f"Lightning sees {trainer.world_size} processes with this one as global rank "
                          f"{trainer.global_rank}, but the launcher's environment said {launch.world_size} with "
                          f"rank zero {'here' if launch.is_zero else 'elsewhere'}; check devices, num_nodes and "
                          "how the processes were started")


@contextlib.contextmanager
def quiet_unless_rank_zero(launch: Launch):
    """Messages are printed once, by global rank zero; errors still reach every process's stderr."""
    if launch.is_zero:
        yield
        return
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        yield
