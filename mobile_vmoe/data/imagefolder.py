"""ImageFolder datasets (ImageNet-1k layout): PATH/train/<class>/*.JPEG and PATH/val/<class>/*.JPEG.

The class list comes from train/ (sorted folder names); val/ must use the same classes (a subset is
fine). Layout problems are MvmoeErrors that say how to fix them, notably the raw ImageNet val/
folder with 50,000 loose JPEGs.

Unreadable images are caught in two places:

- at scan (cheap, no decoding): an empty file or one whose first bytes are not a known image
  signature (JPEG, PNG, GIF, BMP, WebP, TIFF, PPM/PGM) is skipped, counted in
  ``stats["skipped_images"]`` and reported in one warning. This catches random bytes, HTML error
  pages saved as .JPEG, zero-byte downloads.
- at load (a truncated JPEG has a valid header and fails only when decoded): the sample is
  replaced by the next readable one, a warning is issued once per file, and the file is flagged in
  a shared-memory table, so DataLoader workers share the count (``dataset.load_failures``).

When skipped-at-scan plus failed-at-load images exceed ``max_bad_fraction`` of all image files the
scan or the next load raises MvmoeError.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch.utils.data import Dataset

from ..errors import MvmoeError
from .bundle import DataBundle
from .transforms import IMAGENET_MEAN, IMAGENET_STD, check_augment, folder_eval_transform, folder_train_transform

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
VALPREP_HINT = ("move each image into val/<class>/ (for ImageNet-1k use the valprep.sh script from "
                "https://github.com/soumith/imagenetloader.torch, or the ILSVRC2012 val labels with "
                "torchvision.datasets.ImageNet's parse_val_archive)")


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS) and not name.startswith(".")


def has_image_signature(path: str | os.PathLike) -> bool:
    """Cheap check: the file is non-empty and starts like a known image format (reads 12 bytes)."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        return False
    return (head.startswith(b"\xff\xd8\xff")  # JPEG
            or head.startswith(b"\x89PNG\r\n\x1a\n")
            or head.startswith((b"GIF87a", b"GIF89a"))
            or head.startswith(b"BM")
            or (head.startswith(b"RIFF") and head[8:12] == b"WEBP")
            or head.startswith((b"II*\x00", b"MM\x00*"))  # TIFF
            or head[:2] in (b"P5", b"P6", b"P2", b"P3"))  # PGM / PPM


def _subdirs_and_images(folder: Path) -> tuple[list[str], list[str]]:
    dirs, images = [], []
    with os.scandir(folder) as it:
        for e in it:
            if e.name.startswith("."):
                continue
            if e.is_dir():
                dirs.append(e.name)
            elif is_image_file(e.name):
                images.append(e.name)
    return sorted(dirs), sorted(images)


def scan_split(root: Path, split: str, classes: list[str] | None = None):
    """Scan root/split/<class>/*. -> (classes, good [(path, label)], bad [path], total image files).

    ``classes`` None: take the class list from this split (train). Otherwise every class folder
    here must be one of ``classes`` and labels index into it.
    """
    folder = root / split
    if not folder.is_dir():
        raise MvmoeError(f"{root} has no {split}/ folder: expected {root}/train/<class>/*.JPEG and "
                         f"{root}/val/<class>/*.JPEG")
    dirs, loose = _subdirs_and_images(folder)
    if not dirs:
        if loose:
            raise MvmoeError(f"{folder} holds {len(loose)} image file(s) directly instead of one folder per class "
                             f"(the raw ImageNet val layout): {VALPREP_HINT}")
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
    index = {c: i for i, c in enumerate(classes)}
    good, bad, total = [], [], 0
    for name in dirs:
        class_dir = folder / name
        _, files = _subdirs_and_images(class_dir)
        if not files:
            raise MvmoeError(f"class folder {class_dir} has no images ({', '.join(IMG_EXTENSIONS)}); "
                             "remove it or add its images")
        total += len(files)
        n_good = 0
        for f in files:
            p = str(class_dir / f)
            if has_image_signature(p):
                good.append((p, index[name]))
                n_good += 1
            else:
                bad.append(p)
        if n_good == 0:
            raise MvmoeError(f"class folder {class_dir} has {len(files)} files and none is a readable image")
    return classes, good, bad, total


def _check_bad_fraction(bad: int, total: int, max_bad_fraction: float, where: str) -> None:
    if total and bad > max_bad_fraction * total:
        raise MvmoeError(f"{bad} of {total} images in {where} are unreadable ({bad / total:.1%} > "
                         f"max_bad_fraction {max_bad_fraction:.1%}): check the copy of the dataset")


class ImageFolderDataset(Dataset):
    """(path, label) samples decoded with PIL; unreadable ones replaced by the next readable one.

    ``bad_at_scan``/``total`` feed the max_bad_fraction check together with load failures.
    """

    def __init__(self, samples: list[tuple[str, int]], transform, *, where: str, total: int, bad_at_scan: int = 0,
                 max_bad_fraction: float = 0.01):
        self.paths = [p for p, _ in samples]
        self.labels = torch.tensor([y for _, y in samples], dtype=torch.int64)
        self.transform = transform
        self.where, self.total, self.bad_at_scan = where, total, bad_at_scan
        self.max_bad_fraction = max_bad_fraction
        self._failed = torch.zeros(len(samples), dtype=torch.uint8).share_memory_()  # seen by all workers

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def load_failures(self) -> int:
        """Images that passed the scan but could not be decoded (so far, all workers)."""
        return int(self._failed.sum())

    def _decode(self, i: int):
        from PIL import Image

        from .decode import to_rgb8

        if self._failed[i]:
            return None
        try:
            with Image.open(self.paths[i]) as im:
                return to_rgb8(im)  # forces the full decode: a truncated file fails here; 16-bit scaled
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            self._failed[i] = 1
            warnings.warn(f"skipping unreadable image {self.paths[i]}: {e}", stacklevel=2)
            _check_bad_fraction(self.bad_at_scan + self.load_failures, self.total, self.max_bad_fraction, self.where)
            return None

    def __getitem__(self, i: int):
        n = len(self.paths)
        for k in range(n):
            j = (i + k) % n
            img = self._decode(j)
            if img is not None:
                x = self.transform(img) if self.transform is not None else img
                return x, int(self.labels[j])
        raise MvmoeError(f"no readable image left in {self.where}")


def build_imagefolder(path: str | os.PathLike, img_size: int | None = None, augment: str = "default", *,
                      max_bad_fraction: float = 0.01) -> DataBundle:
    """DataBundle of PATH/train and PATH/val; ImageNet mean/std; eval = resize 1/0.875 + center crop."""
    root = Path(path).expanduser()
    if not root.exists():
        raise MvmoeError(f"dataset folder not found: {root}")
    if not root.is_dir():
        raise MvmoeError(f"dataset path {root} is a file: expected a folder with train/<class>/ and val/<class>/")
    if not 0.0 <= max_bad_fraction <= 1.0:
        raise MvmoeError(f"max_bad_fraction must be in [0, 1], got {max_bad_fraction}")
    img_size = img_size or 224
    augment = check_augment(augment)
    classes, train_good, train_bad, train_total = scan_split(root, "train")
    _, val_good, val_bad, val_total = scan_split(root, "val", classes)
    for split, bad, total in (("train", train_bad, train_total), ("val", val_bad, val_total)):
        if bad:
            shown = ", ".join(bad[:3]) + (" ..." if len(bad) > 3 else "")
            warnings.warn(f"skipping {len(bad)} unreadable image file(s) in {root / split}: {shown}", stacklevel=2)
        _check_bad_fraction(len(bad), total, max_bad_fraction, str(root / split))
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    train = ImageFolderDataset(train_good, folder_train_transform(img_size, augment, mean, std), where=str(root / "train"),
                               total=train_total, bad_at_scan=len(train_bad), max_bad_fraction=max_bad_fraction)
    val = ImageFolderDataset(val_good, folder_eval_transform(img_size, mean, std), where=str(root / "val"),
                             total=val_total, bad_at_scan=len(val_bad), max_bad_fraction=max_bad_fraction)
    return DataBundle(
        name=root.resolve().name,
        train=train,
        val=val,
        class_names=classes,
        img_size=img_size,
        in_chans=3,
        mean=mean,
        std=std,
        planted_superclasses=None,
        stats={"root": str(root.resolve()), "train_images": len(train_good), "val_images": len(val_good),
               "skipped_images": len(train_bad) + len(val_bad),
               "skipped_train": len(train_bad), "skipped_val": len(val_bad)},
    )
