"""A teacher for knowledge distillation: any checkpoint this project wrote (``--teacher CKPT``).

The teacher runs in eval mode without gradients on the same augmented (and mixed) batch as the
student; ``losses.distillation_loss`` turns its logits into the soft (KL with temperature) or
hard (DeiT: CE on its argmax) term. ViT-22B served as such a teacher (Dehghani et al. 2023); here a
wider dense ViT trained on the same data is the usual one.

A torchvision classifier can teach too (a convnet, as DeiT's RegNet teacher): ``save_torchvision_teacher``
writes it as ``{"format": "mvmoe-torchvision-teacher", "arch", "num_classes", "img_size",
"in_chans", "class_names", "state_dict", "top1"}`` and ``load_teacher`` rebuilds it with
``torchvision.models.get_model(arch, num_classes=...)``.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import torch
import torchvision

from ..checkpoint import model_from_checkpoint
from ..errors import MvmoeError
from ..fileio import atomic_write_bytes, file_sha256

TORCHVISION_FORMAT = "mvmoe-torchvision-teacher"


def save_torchvision_teacher(path: str | Path, model: torch.nn.Module, arch: str, bundle,
                             top1: float | None = None) -> Path:
    """A torchvision classifier trained on ``bundle`` as a teacher file ``load_teacher`` reads."""
    ck = {"format": TORCHVISION_FORMAT, "arch": arch, "num_classes": bundle.num_classes, "img_size": bundle.img_size,
          "in_chans": bundle.in_chans, "class_names": list(bundle.class_names), "state_dict": model.state_dict(),
          "top1": top1}
    return atomic_write_bytes(path, lambda f: torch.save(ck, f))


def read_torchvision_teacher(path: Path) -> dict | None:
    """The dict of a ``save_torchvision_teacher`` file, or None for any other file."""
    if not path.is_file() or not zipfile.is_zipfile(path):
        return None
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # not ours: load_teacher's checkpoint path names the problem
        return None
    return ck if isinstance(ck, dict) and ck.get("format") == TORCHVISION_FORMAT else None


def load_teacher(path: str | Path, bundle, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict]:
    """-> (frozen model in eval mode on ``device``, {"checkpoint", "sha256", "model", "top1"}).

    Refuses a teacher trained on other classes or images of another size than ``bundle``'s."""
    path = Path(path)
    tv = read_torchvision_teacher(path)
    if tv is not None:
        return torchvision_teacher(tv, path, bundle, device)
    model, ck = model_from_checkpoint(path)  # EMA weights when the checkpoint has them
    if ck.get("class_names") and list(ck["class_names"]) != list(bundle.class_names):
        raise MvmoeError(f"--teacher {path} was trained on other classes than {bundle.name}'s {bundle.num_classes}")
    cfg = model.cfg
    if (cfg.num_classes, cfg.img_size, cfg.in_chans) != (bundle.num_classes, bundle.img_size, bundle.in_chans):
        raise MvmoeError(f"--teacher {path}: {cfg.num_classes} classes at {cfg.img_size} px x {cfg.in_chans} channels, "
                         f"the data has {bundle.num_classes} at {bundle.img_size} px x {bundle.in_chans}")
    model.requires_grad_(False)
    info = {"checkpoint": str(path.resolve()), "sha256": file_sha256(path), "model": cfg.name,
            "top1": (ck.get("metrics") or {}).get("top1")}
    return model.to(device).eval(), info


def torchvision_teacher(ck: dict, path: Path, bundle, device) -> tuple[torch.nn.Module, dict]:
    if list(ck["class_names"]) != list(bundle.class_names):
        raise MvmoeError(f"--teacher {path} was trained on other classes than {bundle.name}'s {bundle.num_classes}")
    if (ck["img_size"], ck["in_chans"]) != (bundle.img_size, bundle.in_chans):
        raise MvmoeError(f"--teacher {path}: {ck['img_size']} px x {ck['in_chans']} channels, the data has "
                         f"{bundle.img_size} px x {bundle.in_chans}")
    model = torchvision.models.get_model(ck["arch"], num_classes=ck["num_classes"])
    model.load_state_dict(ck["state_dict"])
    model.requires_grad_(False)
    info = {"checkpoint": str(path.resolve()), "sha256": file_sha256(path), "model": ck["arch"], "top1": ck.get("top1")}
    return model.to(device).eval(), info
