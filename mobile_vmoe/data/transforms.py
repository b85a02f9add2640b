"""Train / eval transforms built from torchvision.transforms.v2.

Two kinds of input:
- in-memory sets (digits, synthetic) hold float tensors in [0, 1] already at ``img_size``:
  eval = Normalize only; train adds augmentation on the tensor.
- ImageFolder yields PIL images of any size: eval = Resize(int(img_size / 0.875)) +
  CenterCrop(img_size) (the DeiT/timm crop ratio); train = RandomResizedCrop + flip (+ RandAugment,
  RandomErasing for "deit").

``augment`` levels: "none" (the eval transform), "light" (small random crop, optional flip),
"deit" (RandomResizedCrop, flip, RandAugment(2, 9), RandomErasing(0.25)); "default" is resolved by
the dataset builder (digits/synthetic -> "light", folders -> "deit").
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2

from ..errors import MvmoeError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
AUGMENTS = ("none", "light", "default", "deit")
EVAL_CROP_RATIO = 0.875


def check_augment(augment: str) -> str:
    if augment not in AUGMENTS:
        raise MvmoeError(f"unknown augment {augment!r}: choose one of {', '.join(AUGMENTS)}")
    return augment


def tensor_transform(img_size: int, mean, std, augment: str = "none", flip: bool = True) -> v2.Compose:
    """Transform for (C, H, W) float images in [0, 1] that are already ``img_size`` square.

    ``flip=False`` for data that is not mirror-invariant (digits: a mirrored 2 is not a 2).
    "light" pads by img_size/8 (reflect) and crops back: a random shift of up to 12.5%.
    """
    augment = check_augment(augment)
    if augment == "default":
        raise ValueError("resolve augment='default' per dataset before calling tensor_transform")
    ops: list = []
    if augment == "light":
        ops.append(v2.RandomCrop(img_size, padding=max(1, img_size // 8), padding_mode="edge"))
        if flip:
            ops.append(v2.RandomHorizontalFlip())
    elif augment == "deit":
        ops += [v2.RandomResizedCrop(img_size, scale=(0.35, 1.0), antialias=True)]
        if flip:
            ops.append(v2.RandomHorizontalFlip())
        # RandAugment's colour ops expect uint8-like ranges; run it on uint8 and convert back.
        ops += [v2.ToDtype(torch.uint8, scale=True), v2.RandAugment(num_ops=2, magnitude=9),
                v2.ToDtype(torch.float32, scale=True)]
    ops.append(v2.Normalize(mean=list(mean), std=list(std)))
    if augment == "deit":
        ops.append(v2.RandomErasing(p=0.25, value=0))
    return v2.Compose(ops)


def folder_eval_transform(img_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> v2.Compose:
    """PIL image -> Resize(int(img_size / 0.875)) -> CenterCrop(img_size) -> float -> Normalize."""
    return v2.Compose([
        v2.ToImage(),  # PIL -> uint8 tv_tensors.Image (C, H, W)
        v2.Resize(int(img_size / EVAL_CROP_RATIO), antialias=True),
        v2.CenterCrop(img_size),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(mean), std=list(std)),
    ])


def folder_train_transform(img_size: int, augment: str = "deit", mean=IMAGENET_MEAN, std=IMAGENET_STD) -> v2.Compose:
    """PIL image -> the training augmentation of ``augment`` ("none", "light", "deit")."""
    augment = check_augment(augment)
    if augment == "default":
        augment = "deit"
    if augment == "none":
        return folder_eval_transform(img_size, mean, std)
    ops: list = [v2.ToImage()]
    if augment == "light":
        ops += [v2.RandomResizedCrop(img_size, scale=(0.35, 1.0), antialias=True), v2.RandomHorizontalFlip()]
    else:  # deit
        ops += [v2.RandomResizedCrop(img_size, scale=(0.08, 1.0), antialias=True), v2.RandomHorizontalFlip(),
                v2.RandAugment(num_ops=2, magnitude=9)]
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]
    if augment == "deit":
        ops.append(v2.RandomErasing(p=0.25, value=0))
    return v2.Compose(ops)


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of (N, C, H, W) images, rounded to 4 decimals (stable in JSON)."""
    mean = images.mean(dim=(0, 2, 3))
    std = images.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return tuple(round(float(m), 4) for m in mean), tuple(round(float(s), 4) for s in std)
