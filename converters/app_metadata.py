"""What the demo apps need in an artifact's .json beyond the interface (docs/apps.md, "Metadata for
the apps"): a parity set, the preprocessing policy, the runtime the artifact needs and a fingerprint
of the artifact file.

    meta.update(app_metadata(ckpt, wrapper, images, meta))  # in converters/pipeline.py

The sample check is the apps' bundled sample at full size with PyTorch's logits after the app's
own crop and antialiased resize: it covers the preprocessing the parity set skips.

The parity set is a few eval images stored as model-size RGB bytes (base64, H x W x 3 row-major)
with the PyTorch logits of exactly those bytes after the stated preprocessing. An app feeds them to
its runtime at load and shows "parity: max diff X, top-1 agree Y/Z": the only check of Core ML (and
of phone GPUs) that can run anywhere.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata as md
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.io import ImageReadMode, decode_image

from mobile_vmoe.data import Preprocess, spec_kind
from mobile_vmoe.data.transforms import PREPROCESS
from mobile_vmoe.errors import MvmoeError

from . import targets as T
from .images import EvalImages, spread
from .metadata import RESIZE
from .wrapper import SCALE

PARITY_SET_IMAGES = 8
# Largest |logit difference| an app accepts for the parity set; None: top-1 agreement only.
# fp32 leaves room for a phone's CPU kernels (different summation order, FMA); fp16 for half floats.
PARITY_SET_TOL = {"fp32": 1e-3, "fp16": 5e-2, "int8": None}
# The sample both apps bundle (the same PNG in apps/android_demo assets/sample/ and apps/ios_demo Sample/).
SAMPLE_IMAGE = Path(__file__).resolve().parents[1] / "apps" / "android_demo" / "app" / "src" / "main" / "assets" / "sample" / "digit.png"


# ------------------------------------------------------------------------------------ preprocessing
def data_preprocess(ckpt: dict) -> Preprocess:
    """The eval policy of the data that trained the checkpoint: its data.preprocess, stored at
    training time. Checkpoints written before it was stored: the policy of the kind data.spec
    (older: data.name) names; no spec at all -> synthetic."""
    data = ckpt.get("data") or {}
    if isinstance(data.get("preprocess"), dict):
        return Preprocess(**data["preprocess"])
    spec = str(data.get("spec") or data.get("name") or "synthetic")
    return PREPROCESS[spec_kind(spec)]


def preprocessing_policy(ckpt: dict, meta_input: dict) -> dict:
    """The app preprocessing stated once: crop, resize, normalisation, layout and colour polarity.

    crop_fraction: the centred square's side is round(min(H0, W0) * crop_fraction). A cropping eval
    transform (ImageFolder) resizes the short side to int(S / r) and crops S, i.e. keeps
    S / int(S / r) of it; digits, synthetic and shapes images are stored at S, uncropped (1.0).
    """
    size = int(meta_input["shape"][-1])
    pre = data_preprocess(ckpt)
    if pre.crop_ratio < 1.0:
        resize = int(size / pre.crop_ratio)
        frac = size / resize
        eval_tf = f"Resize({resize}, bilinear, antialias) + CenterCrop({size})"
    else:
        frac = 1.0
        eval_tf = f"{pre.kind} images are stored at {size}x{size}: no crop or resize"
    return {
        "resize": RESIZE, "crop": "center-square", "crop_fraction": frac, "interpolation": "bilinear",
        "align_corners": False, "antialias": True, "scale": SCALE, "mean": list(meta_input["mean"]),
        "std": list(meta_input["std"]), "layout": meta_input["layout"],
        "baked_in": bool(meta_input["preprocessing_baked_in"]),
        # light-on-dark (digits): a photo of dark ink on paper must be inverted (the apps offer the
        # switch and say so).
        "polarity": pre.polarity,
        "eval_transform": eval_tf,
    }


# ------------------------------------------------------------------------------------ parity set
def to_rgb8(raw: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) floats in [0, 255] -> (N, H, W, 3) uint8, rounded."""
    return raw.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def model_input(rgb8: np.ndarray, mean, std, baked: bool) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 as the app computes it for a model-size image."""
    x = torch.as_tensor(np.array(rgb8)).permute(0, 3, 1, 2).float()  # (N, 3, H, W) in [0, 255] (a copy: rgb8 may be read-only)
    if baked:
        return x
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (x / SCALE - m) / s


def parity_set(wrapper: nn.Module, images: EvalImages, meta_input: dict, precision: str,
               count: int = PARITY_SET_IMAGES) -> dict:
    """``count`` evenly spaced eval images as RGB bytes with the PyTorch outputs on them."""
    if images.raw.shape[1] != 3:
        raise MvmoeError(f"the apps feed RGB; the model takes {images.raw.shape[1]} channels")
    idx = spread(len(images.raw), count)
    rgb8 = to_rgb8(images.raw[idx])  # (n, H, W, 3)
    x = model_input(rgb8, meta_input["mean"], meta_input["std"], meta_input["preprocessing_baked_in"])
    entries = []
    with torch.no_grad():
        for i in range(len(rgb8)):
            outs = wrapper(x[i : i + 1])  # (1, N) [, (1, E)]
            e = {"rgb": base64.b64encode(rgb8[i].tobytes()).decode("ascii"),
                 "label": int(images.labels[idx[i]]) if images.labels is not None else None,
                 "logits": [float(v) for v in outs[0][0]]}
            if len(outs) > 1:
                e["expert_probs"] = [float(v) for v in outs[1][0]]
            entries.append(e)
    return {"encoding": "rgb8-base64", "height": int(rgb8.shape[1]), "width": int(rgb8.shape[2]),
            "source": images.source, "max_abs_diff_tol": PARITY_SET_TOL.get(precision), "images": entries}


# ------------------------------------------------------------------------------------ sample check
def app_preprocess(rgb8: np.ndarray, meta_input: dict, crop_fraction: float) -> torch.Tensor:
    """(H0, W0, 3) uint8 -> (1, 3, H, W) float32, the apps' preprocessing (docs/apps.md): centred
    square of round(min(H0, W0) * crop_fraction), antialiased bilinear resize (half-pixel centres),
    then x / scale, (x - mean) / std unless baked in. Computed in float64, like the apps."""
    h0, w0 = rgb8.shape[:2]
    short = min(h0, w0)
    side = short if crop_fraction == 1.0 else max(1, min(short, int(np.floor(short * crop_fraction + 0.5))))
    top, left = (h0 - side) // 2, (w0 - side) // 2
    h, w = int(meta_input["shape"][2]), int(meta_input["shape"][3])  # exports are NCHW
    x = torch.from_numpy(rgb8[top:top + side, left:left + side].astype(np.float64)).permute(2, 0, 1)[None]
    x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)  # (1, 3, h, w)
    if not meta_input["preprocessing_baked_in"]:
        m = torch.tensor(meta_input["mean"], dtype=torch.float64).view(1, -1, 1, 1)
        s = torch.tensor(meta_input["std"], dtype=torch.float64).view(1, -1, 1, 1)
        x = (x / SCALE - m) / s
    return x.float()


def sample_check(wrapper: nn.Module, meta_input: dict, policy: dict, precision: str,
                 image: Path = SAMPLE_IMAGE) -> dict | None:
    """The apps' bundled sample at full size with PyTorch's outputs after the app preprocessing:
    {image, width, height, rgb_sha256, logits, top5, max_abs_diff_tol}. An app decodes its copy,
    checks the bytes' SHA-256, runs its own crop + resize + normalisation and compares. None when
    the sample is not beside the code (an installed package without apps/)."""
    if not image.is_file():
        return None
    rgb8 = decode_image(str(image), mode=ImageReadMode.RGB).permute(1, 2, 0).contiguous().numpy()  # (H0, W0, 3)
    with torch.no_grad():
        logits = wrapper(app_preprocess(rgb8, meta_input, policy["crop_fraction"]))[0][0]  # (N,)
    return {"image": image.name, "width": int(rgb8.shape[1]), "height": int(rgb8.shape[0]),
            "rgb_sha256": hashlib.sha256(rgb8.tobytes()).hexdigest(), "logits": [float(v) for v in logits],
            "top5": [int(i) for i in torch.topk(logits, min(5, len(logits))).indices],
            "max_abs_diff_tol": PARITY_SET_TOL.get(precision)}


# ------------------------------------------------------------------------------------ runtime, file
def runtime_requirement(target: str, backend: str | None, split: bool = False) -> dict:
    """{name, min_version, backend, platforms}: the runtime release an app needs to load the artifact
    (converters.targets). A runtime without a Python package (Core ML): the iOS deployment target the
    artifact was converted for (a split package is multifunction: 18). Else the exporter's own
    release line (a runtime promises to read artifacts of its own and older releases only)."""
    record = T.find(target, backend)
    if record.runtime_package is None:
        version = record.split_min_ios if split else record.min_ios
    else:
        version = _version(record.runtime_package)
    return {"name": record.runtime, "min_version": version, "backend": backend, "platforms": list(record.platforms)}


def _version(package: str) -> str | None:
    try:
        return md.version(package)
    except md.PackageNotFoundError:
        return None


def app_metadata(ckpt: dict, wrapper: nn.Module, images: EvalImages, meta: dict) -> dict:
    """The keys this module adds to an artifact's .json (``meta``: build_metadata's dict, with the
    artifact's size and hash already in it)."""
    policy = preprocessing_policy(ckpt, meta["input"])
    return {
        "preprocessing": policy,
        "parity_set": parity_set(wrapper, images, meta["input"], meta["precision"]),
        "sample_check": sample_check(wrapper, meta["input"], policy, meta["precision"]),
        "runtime": runtime_requirement(meta["target"], meta["backend"], split=meta.get("expert_layout") == "split"),
        "artifact_file": {"bytes": meta["artifact_size"], "sha256": meta["artifact_sha256"]},
    }
