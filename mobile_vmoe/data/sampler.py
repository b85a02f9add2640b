"""The training sample order: one global order per epoch, sharded over ranks, resumable anywhere.

Epoch ``e`` draws one permutation of the ``n`` training samples from ``seed + e`` (the same draw as
torch's ``DistributedSampler``). With repeated augmentation (DeiT's RASampler, ``repeats=3``)
every index is repeated ``repeats`` times in a row and the stream is cut back to ``n``, so an
epoch still has ``n`` samples (about n / 3 distinct images, each seen 3 times under different
augmentations). Global step ``s`` consumes positions ``[s*B, (s+1)*B)`` of that stream (``B`` the
global batch), and rank ``k`` of ``W`` takes the positions ``p`` with ``p % W == k``: the
``DistributedSampler`` layout, and the repeats of an image land on different ranks, as in DeiT.

Because a step's samples depend only on (seed, epoch, step, B), never on the world size, a run
stopped after ``s`` steps resumes at position ``s*B`` with any number of processes that divides B.

Each sample also carries its own augmentation seed, drawn from (seed, epoch, position): the
augmentation of a sample does not depend on which worker or rank decoded it.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset, Sampler


def epoch_order(n: int, seed: int, epoch: int, repeats: int = 1) -> torch.Tensor:
    """(n,) int64: the global sample order of one epoch (see the module docstring)."""
    g = torch.Generator().manual_seed(seed + epoch)
    perm = torch.randperm(n, generator=g)  # as DistributedSampler(shuffle=True, seed).set_epoch(epoch)
    if repeats > 1:
        perm = perm.repeat_interleave(repeats)[:n]
    return perm


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """The augmentation seed of the sample at ``position`` of epoch ``epoch`` (a 63-bit integer)."""
    return (seed * 0x9E3779B1 + epoch * 0x85EBCA77 + position * 0xC2B2AE3D + 0x27D4EB2F) % 2**63


class ShardedBatchSampler(Sampler):
    """This rank's batches of the global order: lists of (index, augmentation seed).

    ``set_epoch(epoch, start_step)`` picks the epoch and how many global steps are already done;
    iterate it once per epoch (a DataLoader built once re-iterates it each epoch).
    """

    def __init__(self, n: int, global_batch: int, world_size: int = 1, rank: int = 0, *, seed: int = 0,
                 repeats: int = 1):
        if global_batch % world_size:
            raise ValueError(f"global batch {global_batch} is not divisible by {world_size} processes")
        self.n, self.global_batch, self.world_size, self.rank = n, global_batch, world_size, rank
        self.seed, self.repeats = seed, repeats
        self.steps_per_epoch = n // global_batch  # the tail n % B is dropped, as drop_last=True
        self.epoch, self.start_step = 0, 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        if not 0 <= start_step <= self.steps_per_epoch:
            raise ValueError(f"start_step {start_step} is outside 0..{self.steps_per_epoch}")
        self.epoch, self.start_step = epoch, start_step

    def __len__(self) -> int:
        return self.steps_per_epoch - self.start_step

    def batch_positions(self, step: int) -> range:
        """Positions in the global order that this rank takes at global step ``step``."""
        first = step * self.global_batch + self.rank
        return range(first, (step + 1) * self.global_batch, self.world_size)

    def __iter__(self):
        order = epoch_order(self.n, self.seed, self.epoch, self.repeats).tolist()
        for step in range(self.start_step, self.steps_per_epoch):
            yield [(order[p], sample_seed(self.seed, self.epoch, p)) for p in self.batch_positions(step)]


class SeededSamples(Dataset):
    """``dataset[(index, seed)]``: ``dataset[index]`` with torch's RNG seeded by ``seed`` first.

    torchvision's random transforms draw from torch's global RNG; seeding it per sample makes the
    augmentation a function of the sample's position only. In a DataLoader worker the worker's own
    RNG is simply reseeded; in the main process (workers=0) the training RNG is forked and restored.
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item):
        index, seed = item
        # the CPU generator only: torch.manual_seed would also queue seeds for CUDA/XPU/MTIA (ms per call)
        if torch.utils.data.get_worker_info() is not None:
            torch.default_generator.manual_seed(seed)
            return self.dataset[index]
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            return self.dataset[index]
