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

Position-exact resume: an epoch's pipeline on one rank is seeded from (seed, epoch, rank) only and
always reads the whole epoch's file list; resuming at step s runs the first s batches through it
and drops them, so the draws line up with the uninterrupted run's (the cost: decoding those
batches once more). Bad files: the files the index's cheap check or an earlier failure flagged
are replaced by the next readable sample, the torch path's rule. A file that fails to decode
mid-epoch stops DALI's pipeline; the loader then finds it (each file of the batches in flight
decoded alone, on the CPU), names it, flags it in the dataset's shared table (so it is counted in
``skipped_images`` with the torch path's failures) and rebuilds the pipeline at the same position.
DALI re-issues its own deprecation warnings at every pipeline build; they are shown once.
"""

from __future__ import annotations

import contextlib
import warnings

import torch

from ..errors import MvmoeError
from .device_batch import DeviceNormalize, image_files
from .sampler import ShardedBatchSampler, epoch_order


_SHOWN: set[str] = set()  # DALI warnings already shown by this process


@contextlib.contextmanager
def dali_warnings_once():
    """Show each warning DALI issues once per process. DALI warns about its own deprecated names
    (which its rand_augment still calls) at every pipeline build, inside its own catch_warnings with
    a "default" filter, so a filter cannot hold them back; ``showwarning`` is where they pass."""
    show = warnings.showwarning

    def once(message, category, *args, **kwargs):
        key = f"{category.__name__}: {message}"
        if key not in _SHOWN:
            _SHOWN.add(key)
            show(message, category, *args, **kwargs)

    warnings.showwarning = once
    try:
        yield
    finally:
        warnings.showwarning = show


def dali_pipeline(files: list[str], labels: list[int], *, batch: int, size: int, augment: str = "deit",
                  device: str = "cpu", device_id: int | None = None, threads: int = 2, seed: int = 0,
                  prefetch: int = 2):
    """A built DALI pipeline yielding (images uint8 (B, 3, size, size), labels (B, 1) int32)."""
    with dali_warnings_once():
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

    with dali_warnings_once():  # DALI's rand_augment still calls its own deprecated fn.experimental names
        p = pipe(batch_size=batch, num_threads=threads, device_id=device_id if device == "gpu" else None, seed=seed,
                 prefetch_queue_depth=prefetch)
        p.build()
    return p


def run_pipeline(p, steps: int, device: torch.device):
    """Iterate ``steps`` batches of a built pipeline as torch tensors (images on ``device``)."""
    from nvidia.dali.plugin.pytorch import DALIGenericIterator

    with dali_warnings_once():  # the graph is traced when the iterator first runs it
        it = DALIGenericIterator([p], ["images", "labels"], reader_name="Reader")
    for k, out in enumerate(it):
        if k >= steps:
            break
        yield out[0]["images"].clone(), out[0]["labels"].view(-1).long()  # the iterator reuses its buffers


def undecodable(files: list[str]) -> list[str]:
    """The files of ``files`` that DALI's CPU decoder cannot decode, each decoded alone (a
    synchronous batch-1 pipeline, rebuilt after each failure: a failed pipeline is no longer valid)."""
    from nvidia.dali import fn, pipeline_def, types

    bad, rest = [], list(files)
    while rest:
        @pipeline_def
        def probe(names=tuple(rest)):
            data, _ = fn.readers.file(files=list(names))
            return fn.decoders.image(data, device="cpu", output_type=types.RGB)

        with dali_warnings_once():
            p = probe(batch_size=1, num_threads=1, device_id=None, exec_pipelined=False, exec_async=False,
                      prefetch_queue_depth=1)
            p.build()
        done = 0
        try:
            while done < len(rest):
                p.run()
                done += 1
        except RuntimeError:
            bad.append(rest[done])
            done += 1
        rest = rest[done:]
    return bad


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

    def epoch_indices(self, epoch: int, start: int = 0) -> list[int]:
        """This rank's dataset indices for the rest of ``epoch``, in the torch path's order; a file
        known to be unreadable is replaced by the next readable sample (the torch path's rule)."""
        order = epoch_order(len(self.ids), self.tcfg.seed, epoch, self.tcfg.repeated_aug).tolist()
        self.sampler.set_epoch(epoch, start)
        stand_in = getattr(self.dataset, "next_readable", lambda i: i)
        return [stand_in(self.ids[order[p]]) for step in range(start, self.steps_per_epoch)
                for p in self.sampler.batch_positions(step)]

    def epoch_files(self, epoch: int, start: int = 0) -> tuple[list[str], list[int]]:
        """This rank's (files, labels) for the rest of ``epoch`` (``epoch_indices``)."""
        idx = self.epoch_indices(epoch, start)
        return [self.dataset.path(i) for i in idx], [int(self.dataset.labels[i]) for i in idx]

    def epoch(self, epoch: int, start: int = 0):
        """Iterator over this rank's (images uint8 (B, 3, S, S), labels (B,)) of ``epoch`` from step
        ``start`` (the first ``start`` batches are decoded and dropped: see the module docstring)."""
        self.close()  # the previous epoch's pipeline, if a stop left it running
        if start >= self.steps_per_epoch:
            return iter(())
        self._live = self._batches(epoch, start)
        return self._live

    def _batches(self, epoch: int, start: int):
        done = start  # batches already handed out (or done before a resume)
        local = self.global_batch // self.info.world_size
        seed = (self.tcfg.seed * 1_000_003 + epoch * 10_007 + self.info.rank * 101) % 2**31
        while True:
            idx = self.epoch_indices(epoch)
            files, labels = [self.dataset.path(i) for i in idx], [int(self.dataset.labels[i]) for i in idx]
            p = dali_pipeline(files, labels, batch=local, size=self.size, augment=self.tcfg.augment,
                              device=self.device, device_id=self.info.device.index or 0,
                              threads=max(self.tcfg.workers, 1), seed=seed, prefetch=self.tcfg.prefetch)
            try:
                for k, batch in enumerate(run_pipeline(p, self.steps_per_epoch, self.info.device)):
                    if k >= done:
                        done += 1
                        yield batch
                return
            except RuntimeError as e:
                if "pipeline" not in str(e).lower():
                    raise
                self.skip_undecodable(idx[done * local:(done + self.tcfg.prefetch + 2) * local], e)
            finally:
                p._shutdown()  # now, not when the garbage collector gets to it: a DALI pipeline
                del p  # left running while the next one is built was seen to crash the process

    def skip_undecodable(self, in_flight: list[int], error: Exception) -> None:
        """Find the samples of ``in_flight`` that stopped the pipeline, warn naming them, flag them."""
        index = {self.dataset.path(i): i for i in set(in_flight)}
        bad = undecodable(sorted(index))
        if not bad:
            raise MvmoeError(f"DALI's pipeline failed and every file of the batches in flight decodes alone: "
                             f"{str(error).strip().splitlines()[-1][:300]}")
        for path in bad:
            warnings.warn(f"skipping unreadable image {path}: DALI cannot decode it", stacklevel=2)
        self.dataset.mark_failed([index[p] for p in bad])
        check = getattr(self.dataset, "check_bad_fraction", None)
        if check is not None:
            check()

    def close(self) -> None:
        """Shut down the pipeline of an epoch left unfinished (a stop mid-epoch)."""
        live, self._live = getattr(self, "_live", None), None
        if live is not None:
            live.close()  # runs _batches' finally: the pipeline's _shutdown
