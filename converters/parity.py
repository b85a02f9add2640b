"""Parity of an artifact against PyTorch: logits of both over the same images, their difference and
top-1 agreement, and the pass / fail rule per precision."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from .interrupt import check

Runner = Callable[[np.ndarray], list[np.ndarray]]  # one image (1, C, H, W) -> outputs in wrapper order


def run_all(run: Runner, images: torch.Tensor) -> np.ndarray:
    """Logits (N, classes) of ``run`` over images fed one at a time (artifacts have batch 1)."""
    logits = []
    for i in range(len(images)):
        check()
        logits.append(np.asarray(run(images[i : i + 1].numpy())[0], dtype=np.float32))
    return np.concatenate(logits)


def reference_logits(wrapper: nn.Module, images: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([wrapper(images[i : i + 1])[0] for i in range(len(images))]).numpy()


def parity(ref: np.ndarray, got: np.ndarray, labels: torch.Tensor | None = None) -> dict:
    """max |diff| of logits and top-1 agreement; with labels also both accuracies.

    ``nonfinite``: NaN / Inf logits of the reference and of the artifact. Any makes max_abs_diff
    None (NaN is not JSON) and fails check_parity at every precision.
    """
    nonfinite = {"reference": int((~np.isfinite(ref)).sum()), "artifact": int((~np.isfinite(got)).sum())}
    finite = not any(nonfinite.values())
    out = {"ran": True, "max_abs_diff": float(np.abs(ref - got).max()) if finite else None,
           "top1_agreement": float((ref.argmax(1) == got.argmax(1)).mean()), "images": int(len(ref)), "reason": None,
           "nonfinite": nonfinite}
    if labels is not None:
        y = labels.numpy()
        out["reference_top1"] = float((ref.argmax(1) == y).mean())
        out["artifact_top1"] = float((got.argmax(1) == y).mean())
        out["top1_change"] = out["artifact_top1"] - out["reference_top1"]
    return out


def not_run(reason: str, images: int = 0) -> dict:
    return {"ran": False, "max_abs_diff": None, "top1_agreement": None, "images": images, "reason": reason}


# Default largest loss of top-1 agreement with PyTorch. int8 gets more room: static int8 of a small
# ViT (per-tensor activations) flips 2-3% of digits predictions while its accuracy moves by < 1 point
# (docs/export.md); a broken quantization lands far lower.
MAX_TOP1_DROP = {"fp16": 0.02, "int8": 0.05}


def check_parity(p: dict, precision: str, fp32_tol: float = 1e-4, max_top1_drop: float | None = None) -> str | None:
    """None if parity passes, else why not. fp32: logits within ``fp32_tol``; fp16/int8: top-1
    agreement with PyTorch at least 1 - ``max_top1_drop`` (default MAX_TOP1_DROP[precision]).
    A run that could not happen passes."""
    if not p.get("ran"):
        return None
    bad = p.get("nonfinite") or {}
    if any(bad.values()) or p["max_abs_diff"] is None or not math.isfinite(p["max_abs_diff"]):
        return (f"non-finite logits (NaN/Inf): {bad.get('artifact', '?')} from the artifact, "
                f"{bad.get('reference', '?')} from PyTorch")
    if precision == "fp32" and p["max_abs_diff"] > fp32_tol:
        return f"fp32 logits differ from PyTorch by {p['max_abs_diff']:.2e} > {fp32_tol:g}"
    drop = MAX_TOP1_DROP.get(precision, 0.02) if max_top1_drop is None else max_top1_drop
    if precision != "fp32" and p["top1_agreement"] < 1.0 - drop:
        return (f"{precision} top-1 agrees with PyTorch on {100 * p['top1_agreement']:.1f}% of images, "
                f"below {100 * (1 - drop):.1f}% (--max-top1-drop {drop:g})")
    return None
