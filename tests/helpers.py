"""Helpers shared by the tests (not part of the library): fixture data written to disk, tiny
models and checkpoints, and readers the library itself never needs."""

from __future__ import annotations

from pathlib import Path

import torch


def write_imagefolder(root: str | Path, num_classes: int = 20, num_superclasses: int = 4, img_size: int = 32, *,
                      train_per_class: int = 8, val_per_class: int = 4, seed: int = 0) -> Path:
    """Write the synthetic set as PNGs: root/train/<class>/<i>.png and root/val/<class>/<i>.png
    (the ImageFolder layout). Returns ``root``."""
    from PIL import Image

    from mobile_vmoe.data.synthetic import class_names, make_split

    root = Path(root)
    names = class_names(num_classes, num_superclasses)
    for split, per_class, split_seed in (("train", train_per_class, 2 * seed), ("val", val_per_class, 2 * seed + 1)):
        x, y = make_split(num_classes, num_superclasses, per_class, img_size, split_seed)
        pixels = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()  # (B, H, W, 3)
        for i, (img, label) in enumerate(zip(pixels, y.tolist())):
            d = root / split / names[label]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(d / f"{i:05d}.png")
    return root


def read_coreml_metadata(path: Path) -> dict:
    """The user_defined_metadata of a saved .mlpackage (readable on Linux)."""
    import coremltools as ct

    spec = ct.utils.load_spec(str(path))
    return dict(spec.description.metadata.userDefined)
