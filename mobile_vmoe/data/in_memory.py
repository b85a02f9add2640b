"""The DataBundle of an in-memory image set (digits, synthetic, shapes): one body for the three.

    return tensor_bundle(name, (tx, ty), (vx, vy), class_names, augment, PREPROCESS["shapes"])
"""

from __future__ import annotations

import torch

from .bundle import DataBundle, Preprocess, TensorImageDataset
from .transforms import channel_stats, check_augment, tensor_transform


def tensor_bundle(name: str, train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor],
                  class_names: list[str], augment: str, preprocess: Preprocess, *,
                  planted_superclasses: list[int] | None = None, stats: dict | None = None) -> DataBundle:
    """train, val: (images (N, 3, S, S) float32 in [0, 1], labels (N,) int64), stored at the model size.

    mean/std come from the train split; augment "default" is "light" (a small random shift). No
    flips: a mirrored digit is another glyph, and a mirrored orientation or outline detail can be
    another class or superclass of the generated sets. ``stats`` adds to the image counts.
    """
    (tx, ty), (vx, vy) = train, val
    augment = check_augment(augment)
    augment = "light" if augment == "default" else augment
    img_size = int(tx.shape[-1])
    mean, std = channel_stats(tx)
    return DataBundle(
        name=name,
        train=TensorImageDataset(tx, ty, tensor_transform(img_size, mean, std, augment, flip=False)),
        val=TensorImageDataset(vx, vy, tensor_transform(img_size, mean, std, "none")),
        class_names=class_names, img_size=img_size, in_chans=int(tx.shape[1]), mean=mean, std=std,
        preprocess=preprocess, planted_superclasses=planted_superclasses,
        stats={"train_images": len(ty), "val_images": len(vy), "skipped_images": 0, **(stats or {})},
    )
