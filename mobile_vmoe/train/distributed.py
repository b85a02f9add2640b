"""torch.distributed for torchrun: set up from the environment, rank-0 helpers.

``torchrun --nproc_per_node N --no-python mvmoe train ...`` sets RANK, WORLD_SIZE, LOCAL_RANK and
MASTER_ADDR/PORT; without them everything runs as a single process (world size 1). NCCL on CUDA,
gloo on CPU. The process group gets an explicit timeout (``dist_timeout_min``, default 60 min):
a collective that waits longer than that (a hung rank) fails instead of blocking for ever, and
every legitimate wait (a step, the sharded evaluation, the superclass pass) must stay under it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.utils.data import Subset


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup_distributed(timeout_min: float = 60.0) -> DistInfo:
    """Initialise the process group when launched by torchrun; pick this process's device.

    timeout_min: how long a collective may wait for the other ranks before it fails."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local % torch.cuda.device_count())  # more processes than GPUs: they share
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        # MVMOE_DIST_BACKEND=gloo: several processes on one GPU (NCCL refuses two ranks on one device)
        backend = os.environ.get("MVMOE_DIST_BACKEND") or ("nccl" if device.type == "cuda" else "gloo")
        dist.init_process_group(backend=backend, device_id=device if backend == "nccl" else None,
                                timeout=timedelta(minutes=timeout_min))
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=device)


def barrier(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.barrier()


def all_reduce_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled and dist.is_initialized():
        value = value.detach().clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= info.world_size
    return value


def all_reduce_sum(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The sum over ranks of ``value`` (exact for integer counts), on ``value``'s device; ``value``
    itself on one process. NCCL reduces CUDA tensors only, so it travels via this rank's device."""
    if info.enabled and dist.is_initialized():
        total = value.detach().to(info.device, copy=True)
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total.to(value.device)
    return value


def shard(dataset, info: DistInfo):
    """This rank's share of ``dataset`` for evaluation: items rank, rank + world, ... (every item on
    exactly one rank, none padded or repeated, unlike DistributedSampler)."""
    if not info.enabled:
        return dataset
    return Subset(dataset, range(info.rank, len(dataset), info.world_size))


def broadcast_flag(flag: bool, info: DistInfo) -> bool:
    """Rank 0's flag on every rank (e.g. 'stop now' after a SIGTERM reached only some ranks)."""
    if not (info.enabled and dist.is_initialized()):
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
