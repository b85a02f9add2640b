"""A teacher for knowledge distillation: any checkpoint this project wrote (``--teacher CKPT``).

The teacher runs in eval mode without gradients on the same augmented (and mixed) batch as the
student; ``losses.distillation_loss`` turns its logits into the soft (KL with temperature) or
hard (DeiT: CE on its argmax) term. ViT-22B served as such a teacher (Dehghani et al. 2023); here a
wider dense ViT trained on the same data is the usual one.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import MvmoeError


def load_teacher(path: str | Path, bundle, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict]:
    """-> (frozen model in eval mode on ``device``, {"checkpoint", "sha256", "model", "top1"}).

    Refuses a teacher trained on other classes or images of another size than ``bundle``'s."""
    from ..checkpoint import model_from_checkpoint
    from ..fileio import file_sha256

    path = Path(path)
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
