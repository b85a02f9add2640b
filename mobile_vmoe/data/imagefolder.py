"""ImageFolder datasets (ImageNet-1k layout): PATH/train/<class>/*.JPEG and PATH/val/<class>/*.JPEG.

The class list comes from train/ (sorted folder names); val/ must use the same classes (a subset is
fine). The official flat val/ folder (50,000 loose JPEGs) is read when its label file sits in PATH
(``LOC_val_solution.csv``, or the devkit's ground truth + meta.mat; see imagenet_val.py), or can be
sorted into class folders once with ``mvmoe data sort-val``.

Indexing lists folders with os.scandir and never opens a file (mobile_vmoe.data.index); with
``index_cache`` the index is built once (rank 0) and shared. A file that cannot be decoded (random
bytes, an HTML page saved as .JPEG, a truncated download) is found when it is loaded: the sample is
replaced by the next readable one, a warning is issued once per file, and the file is flagged in a
shared-memory table so DataLoader workers share the count (``dataset.load_failures``; the run's
summary.json reports ``skipped_images``, and last.pt keeps the list, so it survives a resume).
Files that fail the index's cheap check (index.py ``broken_reason``) start out flagged. More failures than ``max_bad_fraction`` of the split's
files raise MvmoeError.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..errors import MvmoeError
from .bundle import DataBundle, check_classes
from .class_names import class_names_of
from .decode import to_rgb8
from .imagenet_val import find_label_files, label_flat_files, val_labels
from .index import IMG_EXTENSIONS, FolderIndex, is_image_file, list_folder, load_or_build, nested_images, scan_classes  # noqa: F401 - re-exported
from .transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PREPROCESS,
    check_augment,
    device_erasing,
    folder_eval_transform,
    folder_train_transform,
)

SORT_HINT = ("give its labels: put LOC_val_solution.csv (or the devkit's ILSVRC2012_validation_ground_truth.txt "
             "and meta.mat) in {root}, or sort it once with `mvmoe data sort-val {folder} --labels FILE`")


def scan_split(root: Path, split: str, classes: list[str] | None = None) -> FolderIndex:
    """Index root/split/<class>/* (each file gets the cheap check of index.py, nothing is decoded).

    ``classes`` None: take the class list from this split (train). Otherwise every class folder
    here must be one of ``classes`` and labels index into it. A flat folder of images is read with
    the label file found in ``root`` (the official ImageNet val/).
    """
    folder = root / split
    if not folder.is_dir():
        raise MvmoeError(f"{root} has no {split}/ folder: expected {root}/train/<class>/*.JPEG and "
                         f"{root}/val/<class>/*.JPEG")
    dirs, loose = list_folder(folder)
    if not dirs and loose and classes is not None:
        return scan_flat(root, folder, loose, classes)
    if not dirs:
        if loose:
            raise MvmoeError(f"{folder} holds {len(loose)} image file(s) directly instead of one folder per class: "
                             + SORT_HINT.format(root=root, folder=folder))
        raise MvmoeError(f"{folder} has no class folders: expected {folder}/<class>/<image files>")
    if loose:
        warnings.warn(f"ignoring {len(loose)} images directly inside {folder} (not in a class folder)", stacklevel=2)
    if classes is None:
        classes = dirs
    else:
        unknown = [d for d in dirs if d not in classes]
        if unknown:
            shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
            raise MvmoeError(f"{folder} has {len(unknown)} class folder(s) not in train/: {shown}; "
                             "val must use the training classes")
    return scan_classes(folder, dirs, {c: i for i, c in enumerate(classes)})


def scan_flat(root: Path, folder: Path, files: list[str], classes: list[str]) -> FolderIndex:
    """A flat folder of images labelled by the label file found in ``root``."""
    found = find_label_files(root)
    if found is None:
        raise MvmoeError(f"{folder} holds {len(files)} image file(s) directly instead of one folder per class "
                         "(the official ImageNet val layout): " + SORT_HINT.format(root=root, folder=folder))
    wnids = label_flat_files(files, val_labels(*found), str(folder))
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(wnids) - set(index))
    if unknown:
        raise MvmoeError(f"{found[0]} labels {folder} with {len(unknown)} class(es) not in train/, e.g. {unknown[0]}")
    return FolderIndex(str(folder), list(classes), np.array([f.encode() for f in files], dtype=np.bytes_),
                       np.array([index[w] for w in wnids], dtype=np.int32), {"": os.stat(folder).st_mtime_ns})


def _check_bad_fraction(bad: int, total: int, max_bad_fraction: float, where: str) -> None:
    if total and bad > max_bad_fraction * total:
        raise MvmoeError(f"{bad} of {total} images in {where} are unreadable ({bad / total:.1%} > "
                         f"max_bad_fraction {max_bad_fraction:.1%}): check the copy of the dataset")


class ImageFolderDataset(Dataset):
    """The files of a FolderIndex decoded with PIL; unreadable ones replaced by the next readable one.

    ``transform`` is a FolderTransform (its ``load`` decodes and crops) or any callable on an RGB
    PIL image.
    """

    def __init__(self, index: FolderIndex, transform, *, where: str, max_bad_fraction: float = 0.01):
        self.index = index
        self.labels = torch.from_numpy(index.labels.astype(np.int64))
        self.transform = transform
        self.where, self.max_bad_fraction = where, max_bad_fraction
        # 1 = skipped (failed the index's cheap check, or to decode); shared memory: seen by all workers
        self._failed = torch.from_numpy(np.asarray(index.bad, dtype=np.uint8)).share_memory_()
        if index.bad.any():
            if os.environ.get("RANK", "0") == "0":
                shown = [index.files[i].decode() for i in np.flatnonzero(index.bad)[:5]]
                warnings.warn(f"skipping {int(index.bad.sum())} broken file(s) in {where} (empty, or a JPEG/PNG "
                              f"without its start or end marker): {', '.join(shown)}"
                              + (" ..." if index.bad.sum() > 5 else ""), stacklevel=2)
            _check_bad_fraction(self.load_failures, len(self), max_bad_fraction, where)

    def __len__(self) -> int:
        return len(self.index)

    def path(self, i: int) -> str:
        return self.index.path(i)

    @property
    def paths(self) -> list[str]:
        return [self.index.path(i) for i in range(len(self.index))]

    @property
    def load_failures(self) -> int:
        """Images that could not be decoded (so far, all workers)."""
        return int(self._failed.sum())

    def failed_indices(self) -> list[int]:
        return torch.nonzero(self._failed).flatten().tolist()

    def check_bad_fraction(self) -> None:
        _check_bad_fraction(self.load_failures, len(self), self.max_bad_fraction, self.where)

    def mark_failed(self, indices) -> None:
        """Skip these samples from now on (failures another rank or an earlier run found)."""
        self._failed[list(indices)] = 1

    def next_readable(self, i: int) -> int:
        """The sample that stands in for ``i``: the first not known to fail from ``i`` on (cyclic),
        the rule ``__getitem__`` follows."""
        n = len(self)
        for k in range(n):
            if not self._failed[(i + k) % n]:
                return (i + k) % n
        raise MvmoeError(f"no readable image left in {self.where}")

    def _load(self, i: int):
        if self._failed[i]:
            return None
        path = self.index.path(i)
        try:
            with Image.open(path) as im:
                load = getattr(self.transform, "load", None)
                return load(im) if load is not None else to_rgb8(im)  # decodes: a bad file fails here
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            self._failed[i] = 1
            warnings.warn(f"skipping unreadable image {path}: {e}", stacklevel=2)
            _check_bad_fraction(self.load_failures, len(self), self.max_bad_fraction, self.where)
            return None

    def __getitem__(self, i: int):
        n = len(self)
        for k in range(n):
            j = (i + k) % n
            img = self._load(j)
            if img is not None:
                x = self.transform(img) if self.transform is not None else img
                return x, int(self.labels[j])
        raise MvmoeError(f"no readable image left in {self.where}")


def build_imagefolder(path: str | os.PathLike, img_size: int | None = None, augment: str = "default", *,
                      max_bad_fraction: float = 0.01, index_cache: str | os.PathLike | None = None,
                      class_names: str | os.PathLike | None = None) -> DataBundle:
    """DataBundle of PATH/train and PATH/val; ImageNet mean/std; eval = resize 1/0.875 + center crop.

    index_cache: a file (e.g. in the run folder) holding the scan, shared by the ranks of a run.
    class_names: a file with one human name per class folder (data/class_names.py); without it,
    names are read from ImageNet's LOC_synset_mapping.txt or the devkit's meta.mat when found.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise MvmoeError(f"dataset folder not found: {root}")
    if not root.is_dir():
        raise MvmoeError(f"dataset path {root} is a file: expected a folder with train/<class>/ and val/<class>/")
    if not 0.0 <= max_bad_fraction <= 1.0:
        raise MvmoeError(f"max_bad_fraction must be in [0, 1], got {max_bad_fraction}")
    img_size = img_size or 224
    augment = check_augment(augment)

    def scan() -> dict[str, FolderIndex]:
        train = scan_split(root, "train")
        check_classes(root.resolve().name, train.classes)  # before the index is cached anywhere
        return {"train": train, "val": scan_split(root, "val", train.classes)}

    ix = load_or_build(index_cache, scan, folders={s: str(root / s) for s in ("train", "val")})
    nested = {s: nested_images(ix[s]) for s in ("train", "val")}
    if any(nested.values()):
        warnings.warn(f"{root}: " + ", ".join(f"{n} of {len(ix[s])} {s} images" for s, n in nested.items() if n)
                      + " are in subfolders of their class folders; they are included in that class, as torchvision's "
                      "ImageFolder includes them", stacklevel=2)
    named = class_names_of(root, ix["train"].classes, class_names)
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    train = ImageFolderDataset(ix["train"], folder_train_transform(img_size, augment), where=str(root / "train"),
                               max_bad_fraction=max_bad_fraction)
    val = ImageFolderDataset(ix["val"], folder_eval_transform(img_size, mean, std), where=str(root / "val"),
                             max_bad_fraction=max_bad_fraction)
    return DataBundle(
        name=root.resolve().name, train=train, val=val, class_names=ix["train"].classes, img_size=img_size,
        in_chans=3, mean=mean, std=std, preprocess=PREPROCESS["imagefolder"], planted_superclasses=None,
        stats={"root": str(root.resolve()), "train_images": len(train), "val_images": len(val),
               "images_in_class_subfolders": nested},
        train_erasing=device_erasing(augment), label_names=named[0] if named else None,
        label_names_from=named[1] if named else None,
    )
