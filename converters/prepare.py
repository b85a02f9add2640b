"""Everything the four converters share: the export wrapper, the static-shape audit, example and
calibration images, pt2e quantization, parity and the metadata .json (docs/formats.md).

``prepare_for_export`` never touches the training model: it deep-copies it, puts the copy in eval
mode, picks the dispatch (``gather``: the top-k index selects k expert weight stacks of a fixed
shape; ``dense``: every expert runs, for backends that cannot gather) and the attention form, and
wraps it so the graph has the app's interface::

    image (1, 3, H, W) float32  ->  logits (1, N) [, expert_probs (1, E)]

With ``bake_preprocessing`` the input is raw RGB in [0, 255] and ``(x / 255 - mean) / std`` runs
inside the graph, so an app only resizes.
"""

from __future__ import annotations

import copy
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from mobile_vmoe.checkpoint import config_from_checkpoint
from mobile_vmoe.data import build_data
from mobile_vmoe.errors import MvmoeError
from mobile_vmoe.fileio import file_sha256
from mobile_vmoe.provenance import versions
from mobile_vmoe.models.vit import layer_norm_by_means

from . import targets as T
from .interrupt import check

SCALE = 255.0
RESIZE = "center-crop-then-bilinear"


class ExportWrapper(nn.Module):
    """The exported interface: image -> (logits, expert_probs) for per-image MoE, else (logits,).

    ``expert_probs`` is the softmax of the router logits: expert i <-> superclass i, so the app can
    show an image's superclass without a second model.
    """

    def __init__(self, model: nn.Module, mean=None, std=None, bake_preprocessing: bool = False):
        super().__init__()
        self.model = model
        self.bake_preprocessing = bake_preprocessing
        self.per_image_moe = model.router is not None
        self.preprocess = BakedNormalize(mean, std) if bake_preprocessing else nn.Identity()

    @property
    def output_names(self) -> list[str]:
        return ["logits", "expert_probs"] if self.per_image_moe else ["logits"]

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feats, route, _ = self.model.forward_features(self.preprocess(image))  # (1, T, D)
        logits = self.model.forward_head(feats)  # (1, N)
        if route is None:
            return (logits,)
        return logits, route.logits.softmax(dim=-1)  # (1, N), (1, E)


class BakedNormalize(nn.Module):
    """Raw RGB [0, 255] (1, C, H, W) -> normalised: (x / 255 - mean) / std == x * scale + shift,
    one mul and one add in the graph."""

    def __init__(self, mean, std):
        super().__init__()
        mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)  # (1, C, 1, 1)
        std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.register_buffer("scale", 1.0 / (SCALE * std), persistent=False)
        self.register_buffer("shift", -mean / std, persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return image * self.scale + self.shift


def prepare_for_export(model: nn.Module, *, dispatch: str = "gather", fused_attention: bool = False,
                       bake_preprocessing: bool = False, mean=None, std=None) -> ExportWrapper:
    """A deep copy of ``model`` in eval mode, ready for torch.export. The original is untouched.

    fused_attention=False spells attention as slice -> bmm -> softmax -> bmm, which XNNPACK, LiteRT and
    Core ML take whole (see docs/export.md for the measurements behind the default).
    """
    if dispatch not in ("gather", "dense"):
        raise MvmoeError(f"export dispatch {dispatch!r}: expected gather (static top-k) or dense (all experts)")
    m = copy.deepcopy(model).eval()
    if m.cfg.is_per_image:
        m.set_dispatch(dispatch)
    m.set_fused_attention(fused_attention)
    for p in m.parameters():
        p.requires_grad_(False)
    if bake_preprocessing and (mean is None or std is None):
        raise MvmoeError("bake_preprocessing needs the dataset mean and std")
    return ExportWrapper(m, mean, std, bake_preprocessing).eval()


class DecomposedLayerNorm(nn.Module):
    """LayerNorm from ops the XNNPACK delegate takes: mean over the last dim as a 4-D mean.dim
    (XNNPACK global average pooling), then sub, mul, rsqrt, add. Same numbers as nn.LayerNorm
    (to ~1e-6); shares its weight and bias. x (..., D) -> (..., D)."""

    def __init__(self, ln: nn.LayerNorm):
        super().__init__()
        self.eps, self.weight, self.bias = ln.eps, ln.weight, ln.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return layer_norm_by_means(x, self)  # (..., D); bias None: a LayerNorm built with bias=False


def decompose_layernorm(module: nn.Module) -> nn.Module:
    """Swap every nn.LayerNorm inside ``module`` for a DecomposedLayerNorm, in place.

    For ExecuTorch XNNPACK (``mvmoe export --layer-norm decomposed``): native_layer_norm has no
    XNNPACK kernel, so every LayerNorm splits the delegated graph (26 subgraphs for
    vmoe-12x192-p32). Decomposed, the whole model but the router's top-k and expert gather is one
    subgraph. Measured here it is a trade, not a free win: 5-9% faster for vmoe-12x192-p32 at
    224 px, 10-15% slower for the 32-px default model (docs/export.md), so it is opt-in.
    """
    for name, child in list(module.named_children()):
        if isinstance(child, nn.LayerNorm):
            setattr(module, name, DecomposedLayerNorm(child))
        else:
            decompose_layernorm(child)
    return module


def layernorm_option_applies(target: str, backend: str | None, precision: str) -> bool:
    """--layer-norm decomposed is for the precisions a target's record lists (ExecuTorch XNNPACK at
    fp32: int8 keeps the native op, which the pt2e XNNPACK quantizer handles as a unit; other
    targets have their own LayerNorm)."""
    record = T.find(target, backend)
    return record is not None and precision in record.decomposed_layernorm


# ---------------------------------------------------------------------------- static-shape audit
# Higher-order ops that mean data-dependent control flow, and ops whose output shape depends on
# values. The per-image router's topk is fine: its output shape is (B, k) whatever the values.
CONTROL_FLOW_OPS = ("cond", "while_loop", "map_impl", "scan")
DATA_DEPENDENT_OPS = ("nonzero", "masked_select", "unique", "_unique2", "item", "_local_scalar_dense",
                      "repeat_interleave")


def _is_symbolic(val: Any) -> bool:
    if isinstance(val, (torch.SymInt, torch.SymFloat, torch.SymBool)):
        return True
    if isinstance(val, torch.Tensor):
        return any(isinstance(s, torch.SymInt) for s in val.shape)
    if isinstance(val, (list, tuple)):
        return any(_is_symbolic(v) for v in val)
    return False


def audit_static(ep: torch.export.ExportedProgram) -> dict:
    """Check that an ExportedProgram has fixed shapes and no data-dependent control flow.

    Raises MvmoeError naming the offending nodes; returns {"nodes", "aten_ops": {op: count}}.
    """
    problems, ops = [], {}
    for node in ep.graph.nodes:
        if _is_symbolic(node.meta.get("val")):
            problems.append(f"{node.name} has a symbolic shape {node.meta['val'].shape if isinstance(node.meta['val'], torch.Tensor) else node.meta['val']}")
        if node.op != "call_function":
            continue
        name = getattr(node.target, "__name__", str(node.target))
        base = name.split(".")[0]
        if base in CONTROL_FLOW_OPS:
            problems.append(f"{node.name} is data-dependent control flow ({name})")
        elif base in DATA_DEPENDENT_OPS:
            problems.append(f"{node.name} has a value-dependent output shape ({name})")
        ops[name] = ops.get(name, 0) + 1
    if ep.range_constraints:
        problems.append(f"symbolic shape ranges {sorted(map(str, ep.range_constraints))}")
    if problems:
        raise MvmoeError("exported graph is not static: " + "; ".join(problems[:4])
                         + (f" (+{len(problems) - 4} more)" if len(problems) > 4 else ""))
    return {"nodes": sum(ops.values()), "aten_ops": dict(sorted(ops.items()))}


def export_static(wrapper: nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    """torch.export with a fixed input shape, then ``audit_static``."""
    with torch.no_grad():
        ep = torch.export.export(wrapper, (example,), strict=False)
    audit_static(ep)
    return ep


# --------------------------------------------------------------------------------- eval images
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


# ---------------------------------------------------------------------------------- quantization
def as_args(example) -> tuple:
    """One input tensor or a tuple of them -> the argument tuple."""
    return example if isinstance(example, tuple) else (example,)


def calibration_args(calibration) -> list[tuple]:
    """Calibration data -> one argument tuple per call: images (n, C, H, W) give n calls of one image
    (artifacts have batch 1); a list of argument tuples (e.g. a split tail's (stream, gate)) is used as is."""
    if isinstance(calibration, torch.Tensor):
        return [(calibration[i : i + 1],) for i in range(len(calibration))]
    return list(calibration)


def pt2e_quantize(wrapper: nn.Module, example, calibration, quantizer, **convert_kw) -> torch.fx.GraphModule:
    """pt2e static quantization: export on ``example`` (a tensor or a tuple of them), insert
    ``quantizer``'s observers, run every call of ``calibration`` (``calibration_args``), convert.
    ``convert_kw`` goes to convert_pt2e."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    prepared = prepare_pt2e(torch.export.export(wrapper, as_args(example), strict=False).module(), quantizer)
    with torch.no_grad():
        for args in calibration_args(calibration):
            check()
            prepared(*args)
    return convert_pt2e(prepared, **convert_kw)


# ---------------------------------------------------------------------------------------- parity
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


# -------------------------------------------------------------------------------------- metadata
def tree_sha256(path: str | Path) -> tuple[int, str]:
    """(size in bytes, sha256) of a file, or of a folder (.mlpackage) as its files' relative
    paths and contents in sorted order."""
    path = Path(path)
    if not path.is_dir():
        return path.stat().st_size, file_sha256(path)
    h, size = hashlib.sha256(), 0
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f.relative_to(path).as_posix().encode() + b"\0" + file_sha256(f).encode())
        size += f.stat().st_size
    return size, h.hexdigest()


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
