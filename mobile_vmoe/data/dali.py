"""The DALI training loader (``loader=dali``; ``uv sync --extra dali``): decode and augment on the GPU.

Per rank and epoch, one DALI pipeline::

    fn.readers.file(files, labels)              this rank's files, in the global sample order
    fn.decoders.image_random_crop               JPEG decode fused with RandomResizedCrop's box
                                                (device "mixed": nvJPEG on the GPU; "cpu" without one)
    fn.resize (bicubic) -> rand_augment(2, 9)   DALI's RandAugment, per sample
    fn.crop_mirror_normalize                    random flip, HWC -> CHW, uint8 out

The batches have the torch path's labels, shapes (B, 3, S, S), dtype (uint8) and sharding: the
reader is given exactly the files that rank takes in mobile_vmoe.data.sampler's global order
(``random_shuffle`` stays off: the reader's own shuffle is a 1024-sample buffer, which on a
class-sorted ImageNet list only mixes neighbouring classes). So epochs reshuffle from the seed,
every sample is seen once per epoch across ranks, and a run resumes mid-epoch, on any world
size, at the same position. Normalisation and pixel-mode random erasing run on the device in torch
(``DeviceNormalize``), exactly as for the torch path. Augmentation draws come from DALI's own
seeded RNG, so they differ from the torch path's (same distributions).
"""

from __future__ import annotations

import warnings

import torch

from ..errors import MvmoeError
from .device_batch import DeviceNormalize, image_files
from .sampler import ShardedBatchSampler, epoch_order


def dali_pipeline(files: list[str], labels: list[int], *, batch: int, size: int, augment: str = "deit",
                  device: str = "cpu", device_id: int | None = None, threads: int = 2, seed: int = 0,
                  prefetch: int = 2):
    """A built DALI pipeline yielding (images uint8 (B, 3, size, size), labels (B, 1) int32)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from nvidia.dali import fn, pipeline_def, types
        from nvidia.dali.auto_aug import rand_augment

    scale = (0.35, 1.0) if augment == "light" else (0.08, 1.0)

    @pipeline_def(enable_conditionals=augment in ("deit", "default"))
    def pipe():
        jpegs, y = fn.readers.file(files=files, labels=labels, random_shuffle=False, name="Reader")
        images = fn.decoders.image_random_crop(jpegs, device="mixed" if device == "gpu" else "cpu",
                                               output_type=types.RGB, random_area=list(scale),
                                               random_aspect_ratio=[3 / 4, 4 / 3], num_attempts=10)
        images = fn.resize(images, resize_x=size, resize_y=size, interp_type=types.INTERP_CUBIC, antialias=True)
        if augment in ("deit", "default"):
            images = rand_augment.rand_augment(images, n=2, m=9, shape=(size, size))
        images = fn.crop_mirror_normalize(images, dtype=types.UINT8, output_layout="CHW",
                                          mirror=fn.random.coin_flip(probability=0.5))
        return images, y

    with warnings.catch_warnings():  # DALI's rand_augment still calls its own deprecated fn.experimental names
        warnings.simplefilter("ignore", DeprecationWarning)
        p = pipe(batch_size=batch, num_threads=threads, device_id=device_id if device == "gpu" else None, seed=seed,
                 prefetch_queue_depth=prefetch)
        p.build()
    return p


def run_pipeline(p, steps: int, device: torch.device):
    """Iterate ``steps`` batches of a built pipeline as torch tensors (images on ``device``)."""
    from nvidia.dali.plugin.pytorch import DALIGenericIterator

    with warnings.catch_warnings():  # the graph is traced when the iterator first runs it
        warnings.simplefilter("ignore", DeprecationWarning)
        it = DALIGenericIterator([p], ["images", "labels"], reader_name="Reader")
    for k, out in enumerate(it):
        if k >= steps:
            break
        yield out[0]["images"], out[0]["labels"].view(-1).long()


class DaliTrainLoader:
    """loader=dali: one pipeline per epoch over this rank's files of the global order."""

    kind = "dali"

    def __init__(self, bundle, tcfg, info, *, global_batch: int, device: str | None = None):
        found = image_files(bundle.train)
        if found is None:
            raise MvmoeError(f"loader=dali reads image files: {bundle.name} is not a dataset folder; use loader=torch")
        self.dataset, self.ids = found  # the folder dataset and the sample ids of the training split
        self.tcfg, self.info = tcfg, info
        self.global_batch = global_batch
        self.sampler = ShardedBatchSampler(len(self.ids), global_batch, info.world_size, info.rank, seed=tcfg.seed,
                                           repeats=tcfg.repeated_aug)
        self.steps_per_epoch = self.sampler.steps_per_epoch
        self.device = device or ("gpu" if info.device.type == "cuda" else "cpu")
        self.size = bundle.img_size
        self.to_device = DeviceNormalize(info.device, bundle.mean, bundle.std, bundle.train_erasing)

    def epoch_files(self, epoch: int, start: int = 0) -> tuple[list[str], list[int]]:
        """This rank's (files, labels) for the rest of ``epoch``, in the torch path's order."""
        order = epoch_order(len(self.ids), self.tcfg.seed, epoch, self.tcfg.repeated_aug).tolist()
        self.sampler.set_epoch(epoch, start)
        idx = [self.ids[order[p]] for step in range(start, self.steps_per_epoch)
               for p in self.sampler.batch_positions(step)]
        return [self.dataset.path(i) for i in idx], [int(self.dataset.labels[i]) for i in idx]

    def epoch(self, epoch: int, start: int = 0):
        files, labels = self.epoch_files(epoch, start)
        if not files:
            return iter(())
        seed = (self.tcfg.seed * 1_000_003 + epoch * 10_007 + self.info.rank * 101 + start) % 2**31
        p = dali_pipeline(files, labels, batch=self.global_batch // self.info.world_size, size=self.size,
                          augment=self.tcfg.augment, device=self.device, device_id=self.info.device.index or 0,
                          threads=max(self.tcfg.workers, 1), seed=seed, prefetch=self.tcfg.prefetch)
        return run_pipeline(p, self.steps_per_epoch - start, self.info.device)
