"""scikit-learn's bundled handwritten digits (1,797 8x8 images, 10 classes) as a DataBundle.

The one real dataset that ships with the install, so the default `mvmoe train` needs no download.
Pixels 0..16 are scaled to [0, 1], upsampled bilinearly to ``img_size`` and replicated to RGB.
The train/val split is a fixed stratified 80/20 split (random_state=0): it never changes between
runs or seeds, so val accuracies are comparable. mean/std are computed once from the train split
(the same value on all three channels, since the channels are copies).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .bundle import DataBundle
from .in_memory import tensor_bundle
from .transforms import PREPROCESS, check_augment

SPLIT_SEED = 0
VAL_FRACTION = 0.2


def load_digits_tensors(img_size: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (train_x, train_y, val_x, val_y); x float32 (N, 3, img_size, img_size) in [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.from_numpy(d.images).float().div_(16.0).unsqueeze(1)  # (N, 1, 8, 8) in [0, 1]
    y = torch.from_numpy(d.target).long()  # (N,)
    idx = torch.arange(len(y)).numpy()
    tr, va = train_test_split(idx, test_size=VAL_FRACTION, random_state=SPLIT_SEED, stratify=d.target)
    tr, va = torch.from_numpy(tr).sort().values, torch.from_numpy(va).sort().values
    if img_size != 8:
        x = F.interpolate(x, size=(img_size, img_size), mode="bilinear", align_corners=False)
    x = x.clamp_(0.0, 1.0).expand(-1, 3, -1, -1).contiguous()  # (N, 3, S, S)
    return x[tr], y[tr], x[va], y[va]


def build_digits(img_size: int | None = None, augment: str = "default") -> DataBundle:
    check_augment(augment)
    tx, ty, vx, vy = load_digits_tensors(img_size or 32)
    return tensor_bundle("digits", (tx, ty), (vx, vy), [str(i) for i in range(10)], augment, PREPROCESS["digits"])
