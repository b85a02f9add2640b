"""Helpers shared by the tests (not part of the library): fixture data written to disk, tiny
models and checkpoints, and readers the library itself never needs."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mobile_vmoe import create_model
from mobile_vmoe.checkpoint import save_checkpoint

def one_line_error(code: int, err: str, *needles: str) -> str:
    """A CLI refusal: exit 1 and one ``error:`` line (warning lines aside) holding every needle; -> that line."""
    lines = [ln for ln in err.strip().splitlines() if ln and not ln.startswith("warning: ")]
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: "), err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


# ------------------------------------------------------------------------------ tiny models

# 3 blocks (the last 2 MoE in a vmoe preset), width 32, 16 px images in 2x2 patches of 8:
# converts and exports in seconds
TINY = dict(depth=3, width=32, heads=2, img_size=16, patch_size=8)
DIGITS = {"name": "digits", "spec": "digits", "seed": 0, "img_size": 16, "in_chans": 3, "mean": [0.5] * 3, "std": [0.5] * 3}


def tiny_moe(num_classes: int = 10, num_experts: int = 2, seed: int | None = None, **kw):
    """A per-image MoE (k=1) of the TINY size; ``kw`` overrides any config field. ``seed`` reseeds
    torch first (None: the test's own seed stream)."""
    if seed is not None:
        torch.manual_seed(seed)
    return create_model("vmoe-6x64-p32", **{**TINY, "num_classes": num_classes, "num_experts": num_experts, **kw})


def save_tiny_checkpoint(path: Path, model, class_names: list[str] | None = None, **extra) -> Path:
    """A checkpoint of ``model`` (classes named "0".."N-1" unless given) plus any other keys."""
    names = class_names or [str(i) for i in range(model.cfg.num_classes)]
    return save_checkpoint(path, {"model_config": model.cfg, "model": model.state_dict(), "class_names": names, **extra})


def tiny_checkpoint(path: Path, data: dict = DIGITS, seed: int = 0) -> Path:
    """The TINY MoE (E=2, k=1), 10 classes named like the digits, trained on nothing."""
    return save_tiny_checkpoint(path, tiny_moe(10, 2, seed=seed), data=data)


class TinyConvNet(nn.Module):
    """A conv stem + linear head: enough ops for every runtime, converts in seconds."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 4, stride=4)
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x):  # (1, 3, 16, 16)
        return self.fc(torch.relu(self.conv(x)).flatten(1))  # (1, 5)


def write_tiny_onnx(m: TinyConvNet, path) -> None:
    """TinyConvNet written with onnx.helper: torch.onnx.export (dynamo) costs ~30 s of import and
    tracing on the shared CI box, and the runners only need a valid ONNX file."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = {k: numpy_helper.from_array(v.detach().numpy(), k) for k, v in
         {"conv_w": m.conv.weight, "conv_b": m.conv.bias, "fc_w": m.fc.weight, "fc_b": m.fc.bias}.items()}
    nodes = [helper.make_node("Conv", ["image", "conv_w", "conv_b"], ["c"], strides=[4, 4], kernel_shape=[4, 4]),
             helper.make_node("Relu", ["c"], ["r"]), helper.make_node("Flatten", ["r"], ["f"], axis=1),
             helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 5])], list(w.values()))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


# ------------------------------------------------------------------------------ files on disk

def write_artifact_meta(path: Path, **keys) -> Path:
    """The .json `mvmoe export` writes beside an artifact: at least its name, size and sha256."""
    from mobile_vmoe.artifact import tree_sha256

    size, sha = tree_sha256(path)
    path.with_suffix(".json").write_text(json.dumps({"artifact": path.name, "artifact_size": size,
                                                     "artifact_sha256": sha, **keys}))
    return path


def run_summary(**kw) -> dict:
    """A training run's summary.json (a per-image MoE on digits); ``kw`` overrides keys."""
    d = {"model": "vmoe-6x64-p8-e5", "dataset": "digits", "top1": 91.25, "top5": 99.5, "router_superclass_top1": 88.0,
         "macs": 5433024, "params": 579343, "active_params": 314639, "epochs": 8, "images_per_sec": 180.0,
         "routing": "image", "num_experts": 5, "top_k": 1, "router_weight": 0.3, "seed": 0,
         "superclass_names": ["sc0: 0/6", "sc1: 1/7", "sc2: 2/3", "sc3: 4/9", "sc4: 5/8"],
         "expert_usage": [[70, 2, 0, 0, 0], [1, 69, 2, 0, 0], [0, 0, 72, 0, 0], [0, 3, 0, 68, 1], [0, 0, 0, 0, 72]],
         "checkpoint": "model.pt"}
    d.update(kw)
    return d



def write_imagefolder(root: str | Path, num_classes: int = 20, num_superclasses: int = 4, img_size: int = 32, *,
                      train_per_class: int = 8, val_per_class: int = 4, seed: int = 0) -> Path:
    """Write the synthetic set as PNGs: root/train/<class>/<i>.png and root/val/<class>/<i>.png
    (the ImageFolder layout). Returns ``root``."""
    from PIL import Image

    from mobile_vmoe.data.synthetic import class_names, make_split

    root = Path(root)
    names = class_names(num_classes, num_superclasses)
    for split, per_class, split_seed in (("train", train_per_class, 2 * seed), ("val", val_per_class, 2 * seed + 1)):
        x, y = make_split(num_classes, num_superclasses, per_class, img_size, split_seed)
        pixels = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()  # (B, H, W, 3)
        for i, (img, label) in enumerate(zip(pixels, y.tolist())):
            d = root / split / names[label]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(d / f"{i:05d}.png")
    return root


def read_coreml_metadata(path: Path) -> dict:
    """The user_defined_metadata of a saved .mlpackage (readable on Linux)."""
    import coremltools as ct

    spec = ct.utils.load_spec(str(path))
    return dict(spec.description.metadata.userDefined)


def decode_rgb8(entry: dict, height: int, width: int) -> np.ndarray:
    """One parity-set entry of an artifact's .json (rgb8-base64) -> (H, W, 3) uint8."""
    raw = base64.b64decode(entry["rgb"])
    assert len(raw) == height * width * 3, f"parity_set image has {len(raw)} bytes, expected {height}x{width}x3"
    return np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3)


def default_run_folder(run: Path) -> Path:
    """What bench/readme_numbers.py reads of a finished default run: summary.json and dense/summary.json."""
    (run / "dense").mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({
        "model": "vmoe-6x64-p8-e5", "top1": 95.5555, "top5": 100.0, "router_superclass_top1": 95.8333,
        "superclass_names": ["sc0: 0/5", "sc1: 1/8"], "superclass_sizes": [2, 2], "expert_counts": [180, 180],
        "expert_entropy": 0.6931, "expert_entropy_max": 0.6931, "num_experts": 2}))
    (run / "dense" / "summary.json").write_text(json.dumps({"model": "vit-6x64-p8", "top1": 80.8333}))
    return run
