"""The images an export is checked on: parity, int8 calibration and the accuracy check, from the
checkpoint's own dataset, a dataset given with ``--parity-data``, or seeded random pixels."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mobile_vmoe.checkpoint import config_from_checkpoint
from mobile_vmoe.data import build_data
from mobile_vmoe.errors import MvmoeError

from .wrapper import SCALE


@dataclass
class EvalImages:
    """Images for parity, calibration and the int8 accuracy check.

    ``normalised`` (N, C, H, W) is what the model sees; ``raw`` the same images as RGB in [0, 255]
    (what a baked-in-preprocessing artifact takes); ``labels`` (N,) or None when the images carry
    no labels of the model's classes. ``data`` is the dataset spec the images came from, or
    "random" for seeded random pixels (no usable data).
    """

    normalised: torch.Tensor
    raw: torch.Tensor
    labels: torch.Tensor | None
    source: str  # "digits val split (256 images)", "random pixels (cannot rebuild dataset ...)"
    data: str = "random"

    def inputs(self, baked: bool) -> torch.Tensor:
        return self.raw if baked else self.normalised

    @property
    def is_random(self) -> bool:
        return self.data == "random"


def spread(n: int, count: int) -> torch.Tensor:
    """``min(count, n)`` indices evenly spaced over ``range(n)``, first and last included; an
    ImageFolder val split is sorted by class, so its first images would all be one class."""
    return torch.linspace(0, n - 1, min(count, n)).round().long()


def dataset_images(spec: str, ckpt: dict, count: int) -> EvalImages:
    """``count`` images evenly spaced over the val split of dataset ``spec`` (build_data), fed as
    the checkpoint's model expects them (its mean/std). Labels only when the dataset has the
    checkpoint's classes."""
    cfg = config_from_checkpoint(ckpt)
    data = ckpt.get("data") or {}
    seed = int(data.get("seed", 0)) if spec == (data.get("spec") or data.get("name")) else 0
    bundle = build_data(spec, cfg.img_size, augment="none", seed=seed)
    if bundle.in_chans != cfg.in_chans:
        raise MvmoeError(f"dataset {spec!r} has {bundle.in_chans} channels, the model takes {cfg.in_chans}")
    idx = spread(len(bundle.val), count).tolist()
    xs, ys = zip(*(bundle.val[i] for i in idx))
    x = torch.stack(xs).float()  # (n, C, H, W), normalised with the dataset's mean/std
    raw = ((x * _channels(bundle.std) + _channels(bundle.mean)) * SCALE).clamp(0, SCALE)
    mean, std = _channels(data.get("mean", bundle.mean)), _channels(data.get("std", bundle.std))
    same_classes = list(bundle.class_names) == list(ckpt.get("class_names") or bundle.class_names)
    labels = torch.tensor(ys) if same_classes else None
    return EvalImages((raw / SCALE - mean) / std, raw, labels, f"{bundle.name} val split ({len(idx)} images)",
                      bundle.spec or spec)


def _channels(values) -> torch.Tensor:
    return torch.tensor([float(v) for v in values]).view(1, -1, 1, 1)  # (1, C, 1, 1)


def random_images(ckpt: dict, count: int, reason: str, seed: int = 0) -> EvalImages:
    """Seeded random pixels: enough to compare fp32 logits, never to calibrate or judge accuracy."""
    cfg = config_from_checkpoint(ckpt)
    data = ckpt.get("data") or {}
    mean = _channels(data.get("mean", [0.5] * cfg.in_chans))
    std = _channels(data.get("std", [0.5] * cfg.in_chans))
    g = torch.Generator().manual_seed(seed)
    raw = torch.randint(0, 256, (count, cfg.in_chans, cfg.img_size, cfg.img_size), generator=g).float()
    return EvalImages((raw / SCALE - mean) / std, raw, None, f"random pixels ({reason})", "random")


def eval_images(ckpt: dict, count: int = 64, seed: int = 0, spec: str | None = None) -> EvalImages:
    """``count`` images evenly spaced over an eval split.

    ``spec`` (``mvmoe export --parity-data``): a dataset for build_data (PATH, digits, synthetic);
    it must build. Without it the checkpoint's own dataset is rebuilt (build_data(data.spec,
    img_size, seed=data.seed)); if that fails (an ImageFolder that moved) the result is random
    pixels, and ``data == "random"`` says so.
    """
    if spec is not None:
        try:
            return dataset_images(spec, ckpt, count)
        except Exception as e:  # noqa: BLE001 - whatever stops the dataset, say which and why
            raise MvmoeError(f"--parity-data {spec!r}: cannot use it ({str(e).strip().splitlines()[0][:160]})") from None
    data = ckpt.get("data") or {}
    if not data.get("name"):
        return random_images(ckpt, count, "checkpoint names no dataset", seed)
    try:
        return dataset_images(data.get("spec") or data["name"], ckpt, count)
    except Exception as e:  # noqa: BLE001 - any failure to rebuild the data means: random images, said loudly
        reason = f"cannot rebuild dataset {data['name']!r}: {str(e).strip().splitlines()[0][:120]}"
        return random_images(ckpt, count, reason, seed)
