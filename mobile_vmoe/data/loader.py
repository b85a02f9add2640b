"""The training loader of one process, built once per stage, and the device side of a batch.

``build_train_loader(bundle, tcfg, info)`` picks the engine (``loader=auto|torch|dali``: auto is
DALI when it is installed and the device is CUDA, else torch) and returns an object with::

    loader.steps_per_epoch                 global steps per epoch (the same for every world size)
    loader.epoch(epoch, start)             this rank's batches of epoch ``epoch``, ``start`` steps done
    loader.to_device(images)               (B, C, H, W) on the device, normalised float32

The torch engine is one DataLoader (persistent workers, ``prefetch`` batches per worker) over the
global sample order of mobile_vmoe.data.sampler. Folder images arrive as uint8 (4x less to copy
than float32) and are normalised on the device, where pixel-mode random erasing (DeiT/timm) runs
too; in-memory sets arrive already normalised.
"""

from __future__ import annotations

import signal

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..errors import MvmoeError
from .dali import DaliTrainLoader
from .device_batch import DeviceNormalize, image_files
from .sampler import SeededSamples, ShardedBatchSampler


def dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401 - only whether it imports
    except ImportError:
        return False
    return True


def choose_loader(loader: str, device: torch.device, files: bool = True) -> str:
    """auto -> "dali" when DALI is installed, ``device`` is CUDA and the data are image ``files``
    (not an in-memory set), else "torch"."""
    if loader == "auto":
        return "dali" if files and device.type == "cuda" and dali_available() else "torch"
    if loader == "dali" and not dali_available():
        raise MvmoeError("loader=dali needs NVIDIA DALI: uv sync --extra dali (or pip install 'mvmoe[dali]')")
    return loader


def build_train_loader(bundle, tcfg, info, *, global_batch: int | None = None):
    """The training loader of this rank (``global_batch`` defaults to tcfg.batch_size)."""
    global_batch = global_batch or tcfg.batch_size
    kind = choose_loader(tcfg.loader, info.device, files=image_files(bundle.train) is not None)
    if kind == "dali":
        return DaliTrainLoader(bundle, tcfg, info, global_batch=global_batch)
    return TorchTrainLoader(bundle.train, global_batch=global_batch, world_size=info.world_size, rank=info.rank,
                            seed=tcfg.seed, repeats=tcfg.repeated_aug, workers=tcfg.workers, prefetch=tcfg.prefetch,
                            device=info.device, mean=bundle.mean, std=bundle.std, erasing=bundle.train_erasing)


class TorchTrainLoader:
    """One DataLoader over this rank's share of the global order, built once, re-iterated per epoch."""

    kind = "torch"

    def __init__(self, dataset, *, global_batch: int, world_size: int = 1, rank: int = 0, seed: int = 0,
                 repeats: int = 1, workers: int = 0, prefetch: int = 2, device=torch.device("cpu"),
                 mean=(0.0,), std=(1.0,), erasing: float = 0.0):
        self.sampler = ShardedBatchSampler(len(dataset), global_batch, world_size, rank, seed=seed, repeats=repeats)
        self.global_batch = global_batch
        self.steps_per_epoch = self.sampler.steps_per_epoch
        kw = {}
        if workers > 0:
            kw = {"persistent_workers": True, "prefetch_factor": prefetch}
        # its own generator: creating or iterating the loader never draws from the training RNG
        self.loader = DataLoader(SeededSamples(dataset), batch_sampler=self.sampler, num_workers=workers,
                                 pin_memory=torch.device(device).type == "cuda", worker_init_fn=ignore_stop_signals,
                                 generator=torch.Generator().manual_seed(seed), **kw)
        self.to_device = DeviceNormalize(torch.device(device), mean, std, erasing)

    def epoch(self, epoch: int, start: int = 0):
        """Iterator over (images (B, C, H, W), labels (B,)) of the rest of ``epoch`` on this rank."""
        self.sampler.set_epoch(epoch, start)
        return iter(self.loader)

    def close(self) -> None:
        """Shut the persistent workers down now (they ignore SIGTERM, so they must be told)."""
        it = getattr(self.loader, "_iterator", None)
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
        self.loader._iterator = None


def ignore_stop_signals(worker_id: int = 0) -> None:
    """``worker_init_fn`` of every DataLoader: the workers ignore SIGTERM and SIGINT, which the main
    process owns (it stops at an agreed step and saves last.pt). A signal sent to the whole process
    group (SLURM, Kubernetes, Ctrl-C, torchrun's agent) would otherwise kill the workers first and
    the main process would die with "DataLoader worker ... is killed by signal". The workers still
    exit when the main process shuts them down or dies."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def folder_datasets(bundle):
    """(split, dataset) of ``bundle``'s splits that track unreadable files (ImageFolderDataset)."""
    for split, ds in (("train", bundle.train), ("val", bundle.val)):
        while hasattr(ds, "dataset") and not hasattr(ds, "failed_indices"):  # Subset, SeededSamples
            ds = ds.dataset
        if hasattr(ds, "failed_indices"):
            yield split, ds


def skipped_files(bundle, info=None) -> dict[str, list[str]]:
    """{split: sorted file names (relative to the split folder)} skipped so far by any rank: failed
    the index's cheap check or failed to decode. Every rank must call it (one all_gather)."""
    found = {split: {ds.index.files[i].decode() for i in ds.failed_indices()} for split, ds in folder_datasets(bundle)}
    if info is not None and info.enabled and torch.distributed.is_initialized():
        every = [None] * info.world_size
        torch.distributed.all_gather_object(every, {k: sorted(v) for k, v in found.items()})
        found = {k: set().union(*(part.get(k, ()) for part in every)) for k in found}
    return {k: sorted(v) for k, v in found.items()}


def skipped_images(bundle, info=None) -> int:
    """Images of ``bundle`` skipped so far (``skipped_files``), counted once over all ranks."""
    return sum(len(v) for v in skipped_files(bundle, info).values())


def restore_skipped(bundle, saved: dict[str, list[str]] | None) -> int:
    """Flag the files a checkpoint recorded as skipped (``skipped_files``); -> how many were found."""
    n = 0
    for split, ds in folder_datasets(bundle):
        names = [f.encode() for f in (saved or {}).get(split, ())]
        if names:
            idx = np.flatnonzero(np.isin(ds.index.files, np.array(names, dtype=np.bytes_)))
            ds.mark_failed(idx.tolist())
            n += len(idx)
    return n


def sample_order(stage, state) -> dict:
    """last.pt's record of where the run is in the global sample order."""
    return {"engine": stage.loader.kind, "global_batch": stage.loader.global_batch, "world_size": stage.info.world_size,
            "repeats": stage.tcfg.repeated_aug, "epoch": state.epoch,
            "position": state.epoch_step * stage.tcfg.grad_accum * stage.loader.global_batch}


def check_sample_order(stage, ck: dict) -> None:
    """Refuse, in one line, a mid-epoch resume that could not continue the same sample order."""
    saved, world = ck.get("sample_order"), stage.info.world_size
    if not ck.get("epoch_step"):
        return  # epoch boundary: the next epoch's order does not depend on what came before
    old_world = saved["world_size"] if saved else len(ck.get("rng_per_rank") or [None])
    engine = saved["engine"] if saved else "torch"
    if engine != stage.loader.kind:
        raise MvmoeError(f"the run stopped mid-epoch with loader={engine}; resume it with --set loader={engine} "
                         "(another engine reads another order)")
    if old_world != world and saved is None:
        raise MvmoeError(f"the run stopped mid-epoch with {old_world} process(es), now {world}: its checkpoint has "
                         f"no global sample position; resume with {old_world} process(es)")
