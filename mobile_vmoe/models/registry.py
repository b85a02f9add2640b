"""Model registry: preset name -> ModelConfig, and ``create_model(name, **overrides)``.

Presets (ImageNet-1k shapes: 224 px, 1000 classes):

- ``vit-<depth>x<width>-p<patch>``  dense ViT, the paper grid depth 12/9/6 x width 384/192/96/64 x
  patch 32/16.
- ``vmoe-<depth>x<width>-p<patch>`` Mobile V-MoE twin: E=10 experts, top-1, per-image routing, the
  last 2 blocks MoE (the paper's best setting).
- ``deit-tiny`` (12 x 192, 3 heads, p16) and ``deit-small`` (12 x 384, 6 heads, p16), dense
  references.

Heads: width 384 -> 6, 192 -> 3 (head dim 64, as DeiT); width 96 -> 3, 64 -> 2 (head dim 32).
"""

from __future__ import annotations

import difflib
import fnmatch
import os
import re
from pathlib import Path
from typing import Any

from ..config import ModelConfig
from ..errors import MvmoeError
from .vmoe import MobileVMoE
from .weights import CONFIG_NAME, load_pretrained, read_config_json

DEPTHS = (12, 9, 6)
WIDTHS = (384, 192, 96, 64)
PATCHES = (32, 16)
HEADS = {384: 6, 192: 3, 96: 3, 64: 2}

_PRESETS: dict[str, ModelConfig] = {}
_GRID_NAME = re.compile(r"(vit|vmoe)-\d+x\d+-p\d+")


def model_name(cfg: ModelConfig) -> str:
    """The grid name of what ``cfg`` builds: vit-<depth>x<width>-p<patch> (dense) or vmoe-...; an
    MoE adds -e<E>, -k<k>, -token where it differs from the preset's E=10, k=1, per-image routing."""
    name = f"{'vmoe' if cfg.is_moe else 'vit'}-{cfg.depth}x{cfg.width}-p{cfg.patch_size}"
    if cfg.is_moe:
        name += "" if cfg.num_experts == 10 else f"-e{cfg.num_experts}"
        name += "" if cfg.top_k == 1 else f"-k{cfg.top_k}"
        name += "-token" if cfg.routing == "token" else ""
    return name


def is_grid_name(name: str) -> bool:
    """True for a plain grid preset name (vit-12x192-p32, vmoe-6x64-p8), the names model_name writes."""
    return _GRID_NAME.fullmatch(name) is not None


def register(cfg: ModelConfig) -> ModelConfig:
    if cfg.name in _PRESETS:
        raise MvmoeError(f"preset {cfg.name!r} is already registered")
    _PRESETS[cfg.name] = cfg
    return cfg


for _d in DEPTHS:
    for _w in WIDTHS:
        for _p in PATCHES:
            _base = dict(depth=_d, width=_w, heads=HEADS[_w], patch_size=_p, img_size=224, num_classes=1000)
            _dense = ModelConfig(name="", **_base)
            _moe = _dense.replace(num_experts=10, top_k=1, moe_blocks=2, routing="image")
            register(_dense.replace(name=model_name(_dense)))
            register(_moe.replace(name=model_name(_moe)))
register(ModelConfig(name="deit-tiny", depth=12, width=192, heads=3, patch_size=16))
register(ModelConfig(name="deit-small", depth=12, width=384, heads=6, patch_size=16))


def list_models(pattern: str | None = None) -> list[str]:
    names = list(_PRESETS)
    return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]


def get_config(name: str, **overrides: Any) -> ModelConfig:
    if name not in _PRESETS:
        close = difflib.get_close_matches(name, _PRESETS, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see `mvmoe models`"
        raise MvmoeError(f"unknown model {name!r}{hint}")
    cfg = _PRESETS[name]
    return cfg.replace(**overrides) if overrides else cfg


def dense_twin(cfg: ModelConfig) -> ModelConfig:
    """The dense model with the same backbone: equal active MACs to a top-1 per-image MoE
    (up to the router), the baseline the paper compares against. A grid-named MoE's twin gets the
    dense grid name (vmoe-6x64-p8-e5 -> vit-6x64-p8)."""
    twin = cfg.replace(num_experts=0, mlp_ratio=cfg.expert_mlp_ratio or cfg.mlp_ratio, expert_mlp_ratio=0.0)
    if cfg.name == model_name(cfg):
        return twin.replace(name=model_name(twin))
    return twin.replace(name=cfg.name.replace("vmoe-", "vit-", 1) if cfg.name.startswith("vmoe-") else f"{cfg.name}-dense")


def create_model(name_or_cfg: str | ModelConfig | os.PathLike, pretrained: str | os.PathLike | None = None,
                 **overrides: Any) -> MobileVMoE:
    """timm-style factory: ``create_model("vmoe-12x192-p32", num_classes=10, img_size=32)``.

    ``name_or_cfg``: a preset name, a ModelConfig, or a ``config.json`` (or the folder holding it)
    written beside ``model.safetensors``. ``pretrained``: weights to start from: a folder or
    ``model.safetensors`` of this project, an mvmoe checkpoint, or a timm / DeiT / torchvision ViT
    state dict (``models.weights.load_pretrained``: position embeddings resampled, a head of
    another class count re-initialised, a dense MLP upcycled into an MoE block's experts).
    """
    if isinstance(name_or_cfg, ModelConfig):
        cfg = name_or_cfg.replace(**overrides) if overrides else name_or_cfg
    elif isinstance(name_or_cfg, os.PathLike) or str(name_or_cfg).endswith(".json") or os.path.isdir(str(name_or_cfg)):
        path = Path(name_or_cfg)
        cfg, _ = read_config_json(path / CONFIG_NAME if path.is_dir() else path)
        cfg = cfg.replace(**overrides) if overrides else cfg
    else:
        cfg = get_config(name_or_cfg, **overrides)
    model = MobileVMoE(cfg)
    if pretrained is not None:
        load_pretrained(model, pretrained, say=None)
    return model
