"""Train / eval transforms built from torchvision.transforms.v2.

Two kinds of input:
- in-memory sets (digits, synthetic) hold float tensors in [0, 1] already at ``img_size``:
  eval = Normalize only; train adds augmentation on the tensor.
- ImageFolder files of any size (``FolderTransform``): crop and resize happen on the PIL side while
  decoding (bicubic, as DeiT), before any tensor work. eval = Resize(int(img_size / 0.875)) +
  CenterCrop(img_size) (the DeiT/timm crop ratio) -> normalised float; train = RandomResizedCrop +
  flip (+ RandAugment for "deit") -> uint8, normalised (+ pixel-mode random erasing for "deit") on
  the device by mobile_vmoe.data.loader.

``augment`` levels: "none" (the eval transform), "light" (small random crop, optional flip),
"deit" (RandomResizedCrop, flip, RandAugment(2, 9), RandomErasing(0.25)); "default" is resolved by
the dataset builder (digits/synthetic -> "light", folders -> "deit").
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import RandAugment, RandomResizedCrop, v2

from ..config import AUGMENTS
from ..errors import MvmoeError
from .bundle import Preprocess
from .decode import to_rgb8

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EVAL_CROP_RATIO = 0.875  # ImageFolder eval: Resize(int(S / 0.875)) + CenterCrop(S), the DeiT/timm ratio
# Each builder's eval policy by dataset kind (stored in checkpoints as data.preprocess). In-memory
# sets are generated or stored at the model size: no crop.
PREPROCESS = {
    "digits": Preprocess("digits", polarity="light-on-dark"),  # sklearn digits: ink 16 on background 0
    "synthetic": Preprocess("synthetic"),
    "shapes": Preprocess("shapes"),
    "shapes-disjoint": Preprocess("shapes-disjoint"),
    "graded": Preprocess("graded"),
    "imagefolder": Preprocess("imagefolder", crop_ratio=EVAL_CROP_RATIO),
}


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


class FolderTransform:
    """The transform of an ImageFolder sample, PIL side first.

    ``load(im)`` gets the opened, not yet decoded file: it draws the crop from the header's size,
    lets libjpeg decode at 1/2, 1/4 or 1/8 scale when the crop allows (``Image.draft``), and
    crops + resizes in one bicubic pass. ``__call__`` does the rest (flip, RandAugment on the small
    PIL image, then a tensor). Train transforms end in uint8 (C, H, W): the batch crosses to the
    device as bytes and is normalised there (mobile_vmoe.data.loader). Eval transforms end in the
    normalised float32 image.
    """

    def __init__(self, crop, rest):
        self.crop, self.rest = crop, rest

    def load(self, im):
        return self.crop(im)

    def __call__(self, img):
        return self.rest(img)


def _decode_box(im, box: tuple[float, float, float, float], size: int):
    """Decode ``im`` (reduced by JPEG draft when ``box`` stays >= ``size`` px) -> (RGB image, box in it)."""
    w0, h0 = im.size
    left, top, right, bottom = box
    if im.format == "JPEG":
        want = (math.ceil(w0 * size / max(right - left, 1)), math.ceil(h0 * size / max(bottom - top, 1)))
        im.draft("RGB", (min(want[0], w0), min(want[1], h0)))
    sx, sy = im.size[0] / w0, im.size[1] / h0
    img = to_rgb8(im)  # decodes; 16-bit and float images scaled, not clipped
    return img, (left * sx, top * sy, right * sx, bottom * sy)


class PilRandomResizedCrop:
    """torchvision's RandomResizedCrop box (same draw), applied while decoding: -> RGB size x size."""

    def __init__(self, size: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
        self.size, self.scale, self.ratio = size, scale, ratio

    def __call__(self, im):
        top, left, h, w = RandomResizedCrop.get_params(im, list(self.scale), list(self.ratio))  # torch RNG
        img, box = _decode_box(im, (left, top, left + w, top + h), self.size)
        return img.resize((self.size, self.size), Image.Resampling.BICUBIC, box=box)


class PilResizeCenterCrop:
    """Resize the shorter side to ``resize`` and centre-crop ``size``, as one bicubic resize of a box."""

    def __init__(self, size: int, resize: int):
        self.size, self.resize = size, resize

    def __call__(self, im):
        w, h = im.size
        s = self.resize / min(w, h)  # resized image is (w*s, h*s); crop its centre size x size
        cw, ch = self.size / s, self.size / s
        left, top = (w - cw) / 2, (h - ch) / 2
        img, box = _decode_box(im, (left, top, left + cw, top + ch), self.size)
        return img.resize((self.size, self.size), Image.Resampling.BICUBIC, box=box)


class PilFlip:
    def __call__(self, img):
        return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if float(torch.rand(())) < 0.5 else img


def pil_to_uint8(img) -> torch.Tensor:
    """PIL RGB -> uint8 (3, H, W)."""
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


def folder_eval_transform(img_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> FolderTransform:
    """PIL -> bicubic Resize(int(img_size / 0.875)) + CenterCrop(img_size) -> float32, normalised."""
    crop = PilResizeCenterCrop(img_size, int(img_size / EVAL_CROP_RATIO))
    return FolderTransform(crop, v2.Compose([pil_to_uint8, v2.ToDtype(torch.float32, scale=True),
                                             v2.Normalize(mean=list(mean), std=list(std))]))


def folder_train_transform(img_size: int, augment: str = "deit") -> FolderTransform:
    """PIL -> the training augmentation of ``augment`` -> uint8 (3, img_size, img_size).

    "none": the eval crop; "light": RandomResizedCrop(scale 0.35-1) + flip; "deit":
    RandomResizedCrop(scale 0.08-1, bicubic) + flip + RandAugment(2, 9). Normalisation and
    random erasing ("deit") run on the device (``device_erasing``).
    """
    augment = check_augment(augment)
    if augment == "default":
        augment = "deit"
    if augment == "none":
        return FolderTransform(PilResizeCenterCrop(img_size, int(img_size / EVAL_CROP_RATIO)), pil_to_uint8)
    scale = (0.35, 1.0) if augment == "light" else (0.08, 1.0)
    ops: list = [PilFlip()]
    if augment == "deit":
        ops.append(RandAugment(num_ops=2, magnitude=9))  # on the cropped PIL image (the PIL-native one: less dispatch than v2's)
    return FolderTransform(PilRandomResizedCrop(img_size, scale), v2.Compose([*ops, pil_to_uint8]))


def device_erasing(augment: str) -> float:
    """Probability of pixel-mode random erasing on the device for a folder's training batches."""
    return 0.25 if augment in ("deit", "default") else 0.0


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of (N, C, H, W) images, rounded to 4 decimals (stable in JSON)."""
    mean = images.mean(dim=(0, 2, 3))
    std = images.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return tuple(round(float(m), 4) for m in mean), tuple(round(float(s), 4) for s in std)
