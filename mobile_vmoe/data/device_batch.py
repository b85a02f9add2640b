"""What both training loaders (torch and DALI) share: the image files behind a dataset, and the
device side of a batch: uint8 -> float32 normalised on the device, with timm's pixel-mode random
erasing drawn on the host."""

from __future__ import annotations

import math

import torch


def image_files(dataset):
    """(folder dataset, its sample ids) behind ``dataset`` (a Subset of it, e.g. the dense stage's
    train split less the holdout), or None for in-memory sets."""
    ids = None
    while hasattr(dataset, "indices") and hasattr(dataset, "dataset"):  # torch Subset
        ids = [dataset.indices[i] for i in ids] if ids is not None else list(dataset.indices)
        dataset = dataset.dataset
    if not hasattr(dataset, "path"):
        return None
    return dataset, ids if ids is not None else range(len(dataset))


class DeviceNormalize:
    """uint8 (B, C, H, W) on the host -> float32 normalised on ``device`` (+ random erasing)."""

    def __init__(self, device: torch.device, mean, std, erasing: float = 0.0):
        self.device, self.erasing = device, erasing
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255.0  # (1, C, 1, 1)
        self.inv_std = 1.0 / (torch.tensor(std, device=device).view(1, -1, 1, 1) * 255.0)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True)
        if images.dtype != torch.uint8:  # in-memory sets: normalised by their transform already
            return images
        x = images.float().sub_(self.mean).mul_(self.inv_std)  # in place: one float copy of the batch
        return random_erasing(x, self.erasing) if self.erasing > 0 else x


def erasing_boxes(batch: int, height: int, width: int, prob: float, attempts: int = 10) -> torch.Tensor:
    """(B, 4) int64 boxes (top, left, h, w) of timm's RandomErasing (area 2-33 %, aspect 0.3-3.3),
    h = w = 0 for images left alone. Drawn on the CPU from torch's RNG: no device sync."""
    area = height * width
    apply = torch.rand(batch) < prob
    target = torch.empty(batch, attempts).uniform_(0.02, 1 / 3) * area
    aspect = torch.empty(batch, attempts).uniform_(math.log(0.3), math.log(1 / 0.3)).exp()
    h = (target * aspect).sqrt().round().long()  # (B, attempts)
    w = (target / aspect).sqrt().round().long()
    ok = (h < height) & (w < width)
    first = ok.to(torch.uint8).argmax(dim=1, keepdim=True)  # the first attempt that fits
    apply &= ok.any(dim=1)
    h = torch.where(apply, h.gather(1, first).squeeze(1), 0)
    w = torch.where(apply, w.gather(1, first).squeeze(1), 0)
    top = (torch.rand(batch) * (height - h + 1)).long()  # randint(0, H - h) inclusive, as timm
    left = (torch.rand(batch) * (width - w + 1)).long()
    return torch.stack([top, left, h, w], dim=1)


def random_erasing(x: torch.Tensor, prob: float) -> torch.Tensor:
    """Pixel-mode random erasing of normalised images x (B, C, H, W), in place: each erased box is
    filled with N(0, 1) noise per pixel and channel (timm ``mode="pixel"``). The boxes are known on
    the host, so the loop over erased images launches small fills without a device sync."""
    B, C, H, W = x.shape
    for i, (top, left, h, w) in enumerate(erasing_boxes(B, H, W, prob).tolist()):
        if h:
            x[i, :, top:top + h, left:left + w] = torch.randn(C, h, w, device=x.device, dtype=x.dtype)
    return x
