"""Datasets, transforms, MixUp/CutMix and superclasses.

``build_data(spec)`` is the one entry point the trainer uses::

    "digits"                      scikit-learn's digits (embedded, the default)
    "synthetic"                   generated, 20 classes in 4 planted superclasses
    "synthetic:<N>:<S>"           generated, N classes in S planted superclasses
    "shapes", "shapes:<N>:<S>"    generated, 100 classes in 10 superclasses (object outline =
                                  superclass, a superclass-specific detail = class): capacity binds
    "shapes-disjoint[:<N>:<S>]"   the same, but each superclass owns its hue band and its own
                                  detail family (shapes' details are shared across outlines)
    "shapes[-disjoint]:N:S:P"     either, with P training images per class (eval P / 3, at least 20)
    PATH                          ImageFolder: PATH/train/<class>/*, PATH/val/<class>/* (or the flat
                                  ImageNet val/ with its label file in PATH)
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import MvmoeError
from .bundle import DataBundle, Preprocess, TensorImageDataset
from .digits import build_digits
from .imagefolder import build_imagefolder
from .mixup import MixupCutmix, superclass_targets
from .shapes import VAL_PER_CLASS, build_shapes, parse_shapes_size, shapes_spec
from .synthetic import build_synthetic, parse_synthetic_spec
from .transforms import check_augment

__all__ = ["DataBundle", "Preprocess", "TensorImageDataset", "build_data", "spec_kind", "MixupCutmix",
           "superclass_targets"]


def spec_kind(spec: str) -> str:
    """The dataset kind a spec names: digits, synthetic, shapes, shapes-disjoint, else imagefolder
    (whether the folder exists is build_data's to check)."""
    spec = str(spec)
    for kind in ("digits", "synthetic", "shapes-disjoint", "shapes"):
        if spec == kind or (kind != "digits" and spec.startswith(kind + ":")):
            return kind
    return "imagefolder"


def build_data(spec: str, img_size: int | None = None, *, augment: str = "default", seed: int = 0,
               max_bad_fraction: float = 0.01, index_cache: str | os.PathLike | None = None,
               class_names: str | os.PathLike | None = None) -> DataBundle:
    """Build the DataBundle named by ``spec``.

    img_size None -> the dataset's natural size (digits 32, synthetic 32, folder 224).
    augment: "none" | "light" | "default" (digits/synthetic: light, folder: deit) | "deit".
    seed: the generation seed of ``synthetic`` (digits' split and folder contents never depend on it).
    max_bad_fraction: ImageFolder only; more unreadable images than this fraction is an error.
    index_cache: ImageFolder only; a file where the file index is cached and shared by the ranks.
    class_names: ImageFolder only; a file with one human name per class folder (``--class-names``).
    """
    check_augment(augment)
    if img_size is not None and (not isinstance(img_size, int) or img_size < 4):
        raise MvmoeError(f"img_size must be an integer >= 4, got {img_size!r}")
    spec = str(spec)
    kind = spec_kind(spec)
    if class_names and kind != "imagefolder":
        raise MvmoeError(f"--class-names names the class folders of an ImageFolder dataset; {spec} keeps its own labels")
    if kind == "digits":
        bundle = build_digits(img_size, augment)
        bundle.spec = spec
        return bundle
    if kind == "synthetic":
        num_classes, num_superclasses = parse_synthetic_spec(spec)
        bundle = build_synthetic(num_classes, num_superclasses, img_size, augment, seed=seed)
        bundle.spec, bundle.seed = f"synthetic:{num_classes}:{num_superclasses}", seed
        return bundle
    if kind in ("shapes", "shapes-disjoint"):
        return _shapes(spec, kind, img_size, augment, seed)
    path = Path(os.path.expanduser(spec))
    if path.exists() or os.sep in spec or spec.startswith("."):
        bundle = build_imagefolder(path, img_size, augment, max_bad_fraction=max_bad_fraction,
                                   index_cache=index_cache, class_names=class_names)
        bundle.spec = str(path.resolve())
        return bundle
    raise MvmoeError(f"unknown dataset {spec!r}: use digits, synthetic, synthetic:<classes>:<superclasses>, shapes, shapes-disjoint, "
                     "or the path of a folder with train/<class>/ and val/<class>/ subfolders")


def _shapes(spec: str, name: str, img_size: int | None, augment: str, seed: int) -> DataBundle:
    """shapes / shapes-disjoint, ``NAME[:N:S[:P]]`` (P training images per class, eval P / 3, at least 20)."""
    n, s, per_class = parse_shapes_size(spec, name)
    bundle = build_shapes(n, s, img_size, augment, seed=seed, train_per_class=per_class,
                          val_per_class=max(VAL_PER_CLASS, per_class // 3), disjoint=name == "shapes-disjoint")
    bundle.spec, bundle.seed = shapes_spec(name, n, s, per_class), seed
    return bundle
