"""DataBundle: what every dataset builder returns (train/val datasets plus what a model needs to know)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch.utils.data import Dataset

from ..errors import MvmoeError


@dataclass(frozen=True)
class Preprocess:
    """How a dataset's eval images reach the model: the policy an exported model's app must repeat.

    kind: digits | synthetic | shapes | shapes-disjoint | imagefolder.
    crop_ratio: 1.0 = images stored at the model size S, fed uncropped; r < 1 = the eval transform
    resizes the short side to int(S / r) and centre-crops S (ImageFolder: 0.875).
    polarity: "light-on-dark" when strokes are light on a dark ground (digits), else None.
    """

    kind: str
    crop_ratio: float = 1.0
    polarity: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class DataBundle:
    """A dataset ready for training and evaluation.

    Items of ``train`` and ``val`` are ``(image, label)``, label an int. ``val`` images are float32
    (C, H, W) normalised with ``mean``/``std`` (applied to pixels scaled to [0, 1]) by the
    deterministic eval transform. ``train`` images are either that too (in-memory sets) or uint8
    (C, H, W) (folders): mobile_vmoe.data.loader normalises uint8 batches on the device and applies
    pixel-mode random erasing there with probability ``train_erasing``.
    """

    name: str
    train: Dataset
    val: Dataset
    class_names: list[str]
    img_size: int
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    preprocess: Preprocess  # stored in the checkpoint: the exporter reads it, never guesses from names
    planted_superclasses: list[int] | None = None  # generated sets: class id -> true superclass id
    stats: dict = field(default_factory=dict)
    spec: str = ""  # what rebuilds it: build_data(spec, img_size, seed=seed) ("digits", "synthetic:20:4", an absolute path)
    seed: int = 0  # generation seed (synthetic only; 0 otherwise)
    train_erasing: float = 0.0  # random erasing probability of uint8 train batches (on the device)
    label_names: list[str] | None = None  # human names of class_names (ImageFolder: data/class_names.py), else None
    label_names_from: str | None = None  # the file they were read from

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def checkpoint_info(self) -> dict:
        """The checkpoint's ``data`` entry: what an exported model must be fed."""
        info = {"name": self.name, "spec": self.spec or self.name, "seed": self.seed, "img_size": self.img_size,
                "in_chans": self.in_chans, "mean": list(self.mean), "std": list(self.std),
                "preprocess": self.preprocess.to_dict()}
        if self.label_names is not None:  # human names beside the ids (class_names): the export's labels
            info.update(labels=list(self.label_names), labels_from=self.label_names_from)
        return info


def check_classes(name: str, class_names: list[str]) -> None:
    """A classifier needs at least 2 classes: one MvmoeError naming the dataset otherwise."""
    n = len(class_names)
    if n < 2:
        raise MvmoeError(f"{name} has {n} class{'es' if n != 1 else ''} ({', '.join(class_names[:3])}): "
                         "a classifier needs at least 2")


def split_class_spec(spec: str, name: str, default: tuple[int, int], example: str) -> tuple[int, int]:
    """``name`` -> ``default``; ``name:N:S`` -> (N, S) as integers (ranges are the caller's to check)."""
    if spec == name:
        return default
    parts = spec.split(":")
    try:
        if len(parts) != 3 or parts[0] != name:
            raise ValueError
        return int(parts[1]), int(parts[2])
    except ValueError:
        raise MvmoeError(f"bad {name} spec {spec!r}: use {name}:<classes>:<superclasses>, e.g. {example}") from None


class TensorImageDataset(Dataset):
    """Images held in memory as one float tensor in [0, 1], transformed on access.

    images: (N, C, H, W) float32 in [0, 1]; labels: (N,) int64. ``transform`` maps one
    (C, H, W) image in [0, 1] to the normalised model input.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform=None):
        if images.ndim != 4 or images.shape[0] != labels.shape[0]:
            raise ValueError(f"images {tuple(images.shape)} and labels {tuple(labels.shape)} do not match")
        self.images = images
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int):
        x = self.images[i]  # (C, H, W)
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.labels[i])
