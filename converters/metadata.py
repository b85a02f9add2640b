"""The metadata .json written beside every artifact (format: docs/formats.md): everything an app
needs to feed and read it, and where it came from. Its artifact size and sha256 and the split
program table are added by the pipeline (mobile_vmoe.artifact reads and checks them)."""

from __future__ import annotations

from pathlib import Path

from mobile_vmoe.checkpoint import config_from_checkpoint
from mobile_vmoe.fileio import file_sha256

from mobile_vmoe.provenance import versions
from .wrapper import SCALE, ExportWrapper

RESIZE = "center-crop-then-bilinear"


def checkpoint_identity(checkpoint) -> dict:
    """What tells two runs' artifacts apart: the checkpoint's path and sha256 (None for a
    checkpoint given as a dict)."""
    if isinstance(checkpoint, dict):
        return {"checkpoint": None, "checkpoint_sha256": None}
    return {"checkpoint": str(Path(checkpoint).resolve()), "checkpoint_sha256": file_sha256(checkpoint)}


def build_metadata(ckpt: dict, wrapper: ExportWrapper, *, target: str, backend: str | None, precision: str,
                   artifact: str, dispatch: str, macs: int, parity_result: dict, ops: dict,
                   source: dict | None = None) -> dict:
    """The .json beside an artifact (format: docs/formats.md): everything an app needs to feed and
    read it. ``source``: checkpoint_identity() of the checkpoint it came from."""
    cfg = config_from_checkpoint(ckpt)
    data = ckpt.get("data") or {}
    label_ids = ckpt.get("class_names") or [str(i) for i in range(cfg.num_classes)]  # the dataset's class ids
    labels = data.get("labels") or label_ids  # human names when the data gave them (ImageFolder)
    sc = ckpt.get("superclasses")
    outputs = [{"name": "logits", "shape": [1, cfg.num_classes]}]
    if wrapper.per_image_moe:
        outputs.append({"name": "expert_probs", "shape": [1, cfg.num_experts]})
    return {
        "model": cfg.name, "target": target, "backend": backend, "precision": precision, "artifact": artifact,
        "input": {"name": "image", "shape": [1, cfg.in_chans, cfg.img_size, cfg.img_size], "layout": "NCHW",
                  "dtype": "float32", "mean": [float(v) for v in data.get("mean", [0.5] * cfg.in_chans)],
                  "std": [float(v) for v in data.get("std", [0.5] * cfg.in_chans)], "scale": SCALE,
                  "preprocessing_baked_in": bool(wrapper.bake_preprocessing), "resize": RESIZE},
        "outputs": outputs, "labels": list(labels), "label_ids": list(label_ids),
        "superclasses": ({"names": list(sc["names"]), "class_to_superclass": [int(c) for c in sc["class_to_superclass"]]}
                         if sc else None),
        "experts": cfg.num_experts, "k": cfg.top_k if cfg.is_moe else 0, "dispatch": dispatch if cfg.is_moe else "dense",
        "macs": int(macs), "parity": parity_result, "ops": ops, "versions": versions(),
        "model_config": cfg.to_dict(),  # lets `mvmoe profile flops ARTIFACT` count what the artifact runs
        **(source or {"checkpoint": None, "checkpoint_sha256": None}),
    }
