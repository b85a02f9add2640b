"""Weights in and out: pretrained ViTs from timm / DeiT / torchvision, upcycling, safetensors.

Reading (``load_pretrained(model, path)``, what ``mvmoe train --init`` and
``create_model(..., pretrained=PATH)`` call):

1. ``read_weights(path)``: a state dict from an mvmoe checkpoint (``model.pt``, EMA weights when
   present), a ``.safetensors`` file (ours, with ``config.json`` beside it, or anyone's), or a torch
   file (``.pth`` / ``.pt`` / ``.bin``) holding a state dict, bare or under ``model`` /
   ``state_dict`` (DeiT's and timm's release files). Torch files are read with
   ``torch.load(weights_only=True)``: loading never runs code from the file.
2. ``to_mvmoe_names(state)``: timm's VisionTransformer already uses this project's names
   (``patch_embed.proj``, ``cls_token``, ``pos_embed``, ``blocks.N.attn.qkv``, ``attn.q_norm`` /
   ``k_norm``, ``attn.proj``, ``blocks.N.mlp.fc1`` / ``fc2``, ``norm``, ``head``); torchvision's
   ``vit_*`` is renamed key by key (``TORCHVISION_NAMES``). DeiT's distillation token is dropped.
3. ``fit_state(state, model)``: what differs on purpose is adapted, each with one line: position
   embeddings resampled to another grid (as timm's ``resample_abs_pos_embed``: bicubic, antialiased,
   the class token's entry kept), a head of another class count left at its fresh initialisation,
   a 3-channel patch embedding summed to 1 channel. A dense MLP loaded into an MoE block is
   **upcycled**: every expert becomes a copy of it (Komatsuzaki et al., ICLR 2023); the router keeps
   its fresh initialisation. Anything else (a missing key, a shape that cannot be adapted) is one
   MvmoeError naming the first such key.

Writing (``save_pretrained(out_dir, ...)``): ``model.safetensors`` (the tensors, nothing executable)
plus ``config.json`` (``model_config`` and the labels) — the layout a Hugging Face Hub model repo
uses, so the folder can be uploaded as it is.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from ..config import ModelConfig
from ..errors import MvmoeError
from ..fileio import atomic_write_bytes, atomic_write_json

WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
SAFETENSORS_NAME, CONFIG_NAME = "model.safetensors", "config.json"
CONFIG_FORMAT = "mvmoe-config"
CHECKPOINT_FORMAT = "mvmoe-checkpoint"  # the "format" entry of this project's .pt checkpoints (checkpoint.py)

# torchvision's VisionTransformer -> this project's names (per block: encoder.layers.encoder_layer_N.*)
TORCHVISION_NAMES = {
    "class_token": "cls_token",
    "conv_proj.weight": "patch_embed.proj.weight",
    "conv_proj.bias": "patch_embed.proj.bias",
    "encoder.pos_embedding": "pos_embed",
    "encoder.ln.weight": "norm.weight",
    "encoder.ln.bias": "norm.bias",
    "heads.head.weight": "head.weight",
    "heads.head.bias": "head.bias",
}
TORCHVISION_BLOCK_NAMES = {
    "ln_1": "norm1",
    "ln_2": "norm2",
    "self_attention.in_proj_weight": "attn.qkv.weight",
    "self_attention.in_proj_bias": "attn.qkv.bias",
    "self_attention.out_proj.weight": "attn.proj.weight",
    "self_attention.out_proj.bias": "attn.proj.bias",
    "mlp.0": "mlp.fc1",  # torchvision >= 0.13
    "mlp.3": "mlp.fc2",
    "mlp.linear_1": "mlp.fc1",  # older torchvision files
    "mlp.linear_2": "mlp.fc2",
}
_TV_BLOCK = re.compile(r"encoder\.layers\.encoder_layer_(\d+)\.(.+)")
# keys of timm models that have no counterpart here (a different architecture, not a different size)
_UNSUPPORTED = {
    "reg_token": "register tokens",
    "fc_norm.weight": "average pooling with fc_norm (this model reads the class token)",
    "ls1.gamma": "LayerScale",
    "attn.norm.weight": "a norm after attention",
    "in_proj.weight": "timm's fused parallel blocks (ParallelScalingBlock)",
    "head.fc.weight": "a multi-layer head",
    "heads.pre_logits.weight": "torchvision's representation layer (pre_logits)",
}


@dataclass
class Loaded:
    """A state dict read from a file and what the file said about itself."""

    state: dict[str, torch.Tensor]
    source: str  # "mvmoe" | "timm" | "torchvision" | "safetensors" (someone else's)
    config: ModelConfig | None = None  # the model config the file carries (mvmoe checkpoint / config.json)
    meta: dict[str, Any] = field(default_factory=dict)  # class_names, superclasses, data of an mvmoe file


@dataclass
class FitReport:
    """What ``fit_state`` adapted, one sentence each (printed by ``--init``)."""

    notes: list[str] = field(default_factory=list)
    upcycled_blocks: list[int] = field(default_factory=list)
    fresh: list[str] = field(default_factory=list)  # parameters left at their initialisation (router, head)


# ------------------------------------------------------------------------------------ reading
def read_weights(path: str | os.PathLike) -> Loaded:
    """The tensors of ``path`` under this project's names (see the module docstring)."""
    path = Path(path)
    if not path.exists():
        raise MvmoeError(f"--init {path}: no such file")
    if path.is_dir():
        if (path / SAFETENSORS_NAME).is_file():
            return read_weights(path / SAFETENSORS_NAME)
        raise MvmoeError(f"--init {path} is a folder without {SAFETENSORS_NAME}; give a weights file")
    if path.suffix not in WEIGHT_SUFFIXES:
        raise MvmoeError(f"--init {path}: expected a {', '.join(WEIGHT_SUFFIXES)} file")
    loaded = _read_safetensors(path) if path.suffix == ".safetensors" else _read_torch(path)
    bad = next((k for k, v in loaded.state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)
    if bad is not None:
        raise MvmoeError(f"{path}: weight {bad} holds NaN or Inf")
    return loaded


def _read_safetensors(path: Path) -> Loaded:
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise MvmoeError(f"{path} is not a readable safetensors file ({str(e).splitlines()[0][:120]})") from None
    config_file = path.with_name(CONFIG_NAME)
    if config_file.is_file():
        cfg, meta = read_config_json(config_file)
        return Loaded(state, "mvmoe", cfg, meta)
    return _named(state, path)


def _read_torch(path: Path) -> Loaded:
    if not zipfile.is_zipfile(path):
        raise MvmoeError(f"{path} is not a PyTorch weights file (not a zip archive: truncated, or saved in the "
                         "legacy format; re-save it with torch.save)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a pickle that needs code, a damaged archive
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise MvmoeError(f"{path} cannot be read as weights ({reason})") from None
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:  # an mvmoe checkpoint
        state = obj.get("ema") if obj.get("ema") is not None else obj.get("model")
        try:
            cfg = ModelConfig.from_dict(obj["model_config"])
        except (KeyError, TypeError, ValueError, MvmoeError) as e:
            raise MvmoeError(f"{path}: an mvmoe checkpoint without a valid model config ({e})") from None
        if not _is_state_dict(state):
            raise MvmoeError(f"{path}: an mvmoe checkpoint without weights")
        meta = {k: obj.get(k) for k in ("class_names", "superclasses", "data")}
        return Loaded(dict(state), "mvmoe", cfg, meta)
    if isinstance(obj, dict):
        for key in ("model_ema", "state_dict_ema", "model", "state_dict"):  # DeiT / timm training checkpoints
            if isinstance(obj.get(key), dict) and _is_state_dict(obj[key]):
                return _named(obj[key], path)
    if not _is_state_dict(obj):
        raise MvmoeError(f"{path} holds no state dict (expected name -> tensor, bare or under 'model' / 'state_dict')")
    return _named(obj, path)


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                       for k, v in obj.items())


def _named(state: dict[str, torch.Tensor], path: Path) -> Loaded:
    state = {k.removeprefix("module."): v for k, v in state.items()}  # saved from DDP
    if "class_token" in state or "conv_proj.weight" in state:
        return Loaded(torchvision_to_mvmoe(state), "torchvision")
    if "patch_embed.proj.weight" in state:
        return Loaded(timm_to_mvmoe(state), "timm")
    first = next(iter(state))
    raise MvmoeError(f"{path}: not a ViT state dict this project reads (first key {first!r}; expected timm's "
                     "patch_embed.proj.weight or torchvision's conv_proj.weight)")


def timm_to_mvmoe(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm's VisionTransformer names are this project's; check for what this model does not have,
    and drop DeiT's distillation token and head (the distilled model's extra prefix token)."""
    for key in state:
        for suffix, what in _UNSUPPORTED.items():
            if key == suffix or key.endswith("." + suffix):
                raise MvmoeError(f"{key}: {what} is not part of this model family; cannot load it")
    out = {k: v for k, v in state.items() if not k.startswith(("dist_token", "head_dist."))}
    if "dist_token" in state:  # pos_embed holds [cls, dist, patches...]
        out["pos_embed"] = torch.cat([state["pos_embed"][:, :1], state["pos_embed"][:, 2:]], dim=1)
    return out


def torchvision_to_mvmoe(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        if key in TORCHVISION_NAMES:
            out[TORCHVISION_NAMES[key]] = value
            continue
        m = _TV_BLOCK.fullmatch(key)
        rest = m and next((k for k in TORCHVISION_BLOCK_NAMES if m.group(2) == k or m.group(2).startswith(k + ".")), None)
        if not rest:
            raise MvmoeError(f"{key}: a torchvision key with no counterpart in this model family")
        out[f"blocks.{m.group(1)}.{TORCHVISION_BLOCK_NAMES[rest]}{m.group(2)[len(rest):]}"] = value
    return out


# ------------------------------------------------------------------------------------ fitting
def resample_pos_embed(pos: torch.Tensor, grid: int, prefix: int = 1) -> torch.Tensor:
    """(1, prefix + g*g, D) -> (1, prefix + grid*grid, D): the patch part resized bicubically with
    antialiasing (timm's ``resample_abs_pos_embed``), the prefix (class token) entries kept."""
    old = math.isqrt(pos.shape[1] - prefix)
    if old * old != pos.shape[1] - prefix:
        raise MvmoeError(f"pos_embed has {pos.shape[1] - prefix} patch positions: not a square grid")
    head, body = pos[:, :prefix], pos[:, prefix:]
    D = pos.shape[-1]
    body = body.float().reshape(1, old, old, D).permute(0, 3, 1, 2)  # (1, D, g, g)
    body = F.interpolate(body, size=(grid, grid), mode="bicubic", antialias=True, align_corners=False)
    body = body.permute(0, 2, 3, 1).reshape(1, grid * grid, D).to(pos.dtype)
    return torch.cat([head, body], dim=1)


def upcycle_mlp(fc1_w: torch.Tensor, fc1_b: torch.Tensor | None, fc2_w: torch.Tensor, fc2_b: torch.Tensor | None,
                num_experts: int) -> dict[str, torch.Tensor]:
    """A dense MLP (nn.Linear weights: fc1 (H, D), fc2 (D, H)) as ``num_experts`` identical experts
    in ExpertBank layout: w1 (E, D, H), b1 (E, H), w2 (E, H, D), b2 (E, D)."""
    E = num_experts
    out = {"w1": fc1_w.t().unsqueeze(0).repeat(E, 1, 1), "w2": fc2_w.t().unsqueeze(0).repeat(E, 1, 1)}
    if fc1_b is not None:
        out["b1"] = fc1_b.unsqueeze(0).repeat(E, 1)
    if fc2_b is not None:
        out["b2"] = fc2_b.unsqueeze(0).repeat(E, 1)
    return out


def _upcycle_blocks(state: dict[str, torch.Tensor], cfg: ModelConfig, report: FitReport) -> dict[str, torch.Tensor]:
    """Every MoE block of ``cfg`` whose MLP ``state`` holds as a dense MLP gets it as E experts."""
    state = dict(state)
    for i in range(cfg.first_moe_block, cfg.depth):
        p = f"blocks.{i}.mlp."
        if p + "fc1.weight" not in state:
            continue
        parts = [state.pop(p + n, None) for n in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")]
        for name, t in upcycle_mlp(*parts, cfg.num_experts).items():
            state[p + "experts." + name] = t
        report.upcycled_blocks.append(i)
    if report.upcycled_blocks:
        report.notes.append(f"upcycled: the dense MLP of block(s) {', '.join(map(str, report.upcycled_blocks))} "
                            f"copied into each of the {cfg.num_experts} experts")
    return state


def fit_state(state: dict[str, torch.Tensor], model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], FitReport]:
    """``state`` (this project's names) made to fit ``model``: a complete state dict for it, and
    what was adapted. One MvmoeError naming the first key that cannot fit."""
    cfg: ModelConfig = model.cfg
    report = FitReport()
    want = model.state_dict()
    if cfg.is_moe:
        state = _upcycle_blocks(state, cfg, report)
    elif any(".mlp.experts." in k for k in state):
        raise MvmoeError("the weights are an MoE's; a dense model cannot start from them (give a dense checkpoint)")
    out: dict[str, torch.Tensor] = {}
    for key, target in want.items():
        if key not in state:
            if key.startswith("router.") or ".mlp.router." in key:  # a new router: Komatsuzaki et al. start it fresh
                out[key] = target
                report.fresh.append(key)
                continue
            raise MvmoeError(f"missing key {key} (shape {list(target.shape)}) in the weights")
        out[key] = _fit_tensor(key, state[key], target, cfg, report)
    extra = [k for k in state if k not in want]  # in the file's order
    if extra:
        raise MvmoeError(f"unexpected key {extra[0]} (shape {list(state[extra[0]].shape)}) in the weights: "
                         f"not part of {cfg.name} (check depth, qk_norm, bias, num_experts)")
    return out, report


def _fit_tensor(key: str, got: torch.Tensor, target: torch.Tensor, cfg: ModelConfig, report: FitReport) -> torch.Tensor:
    if got.shape == target.shape:
        return got.to(target.dtype)
    if key == "pos_embed" and got.dim() == 3 and got.shape[-1] == target.shape[-1]:
        if got.shape[1] == target.shape[1] - 1:  # timm's no_embed_class: no class-token entry; zero adds nothing
            got = torch.cat([got.new_zeros(1, 1, got.shape[-1]), got], dim=1)
            if got.shape == target.shape:
                return got.to(target.dtype)
        old = math.isqrt(got.shape[1] - 1)
        report.notes.append(f"pos_embed resampled from a {old}x{old} to a {cfg.grid}x{cfg.grid} grid (bicubic, as timm)")
        return resample_pos_embed(got, cfg.grid).to(target.dtype)
    if key in ("head.weight", "head.bias") and got.shape[1:] == target.shape[1:]:
        if key == "head.weight":
            report.notes.append(f"head re-initialised: the weights have {got.shape[0]} classes, the model "
                                f"{target.shape[0]}")
            report.fresh += ["head.weight", "head.bias"]
        return target
    if key == "patch_embed.proj.weight" and got.shape[0] == target.shape[0] and got.shape[2:] == target.shape[2:] \
            and got.shape[1] == 3 and target.shape[1] == 1:
        report.notes.append("patch embedding summed over its 3 input channels for 1-channel images (as timm)")
        return got.sum(dim=1, keepdim=True).to(target.dtype)
    raise MvmoeError(f"{key} has shape {tuple(got.shape)} in the weights, {tuple(target.shape)} in {cfg.name}")


def load_pretrained(model: torch.nn.Module, path: str | os.PathLike,
                    say: Callable[[str], None] | None = print) -> FitReport:
    """Load ``path`` into ``model`` (in place): read, rename, fit (resample, re-initialise the
    head, upcycle), ``load_state_dict(strict=True)``. Prints one line per adaptation via ``say``."""
    loaded = read_weights(path)
    state, report = fit_state(loaded.state, model)
    model.load_state_dict(state, strict=True)
    if say is not None:
        for note in report.notes:
            say(f"init {Path(path).name}: {note}")
    return report


def is_dense_weights(path: str | os.PathLike) -> bool:
    """True when ``path``'s weights are a dense ViT's (no expert bank). A run asks this of its
    ``--init`` file several times while it plans its stages: the file is read once per version."""
    if not Path(path).is_file():  # a folder (its model.safetensors) or a missing file: read_weights says which
        return _is_dense.__wrapped__(str(path), 0, 0)
    st = Path(path).stat()
    return _is_dense(str(Path(path).resolve()), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=8)
def _is_dense(path: str, mtime_ns: int, size: int) -> bool:  # (mtime, size): a rewritten file is read again
    return not any(".mlp.experts." in k for k in read_weights(path).state)


# ------------------------------------------------------------------------------------ writing
def config_dict(cfg: ModelConfig, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """config.json: the model config plus the labels and input facts of a trained model."""
    meta = meta or {}
    return {"format": CONFIG_FORMAT, "version": 1, "library": "mvmoe", "model_config": cfg.to_dict(),
            "class_names": meta.get("class_names"), "superclasses": meta.get("superclasses"), "data": meta.get("data")}


def read_config_json(path: str | os.PathLike) -> tuple[ModelConfig, dict[str, Any]]:
    path = Path(path)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise MvmoeError(f"{path} is not readable JSON ({e})") from None
    if not isinstance(d, dict) or d.get("format") != CONFIG_FORMAT or not isinstance(d.get("model_config"), dict):
        raise MvmoeError(f"{path} is not an mvmoe config.json (no 'format: {CONFIG_FORMAT}' and 'model_config')")
    try:
        cfg = ModelConfig.from_dict(d["model_config"])
    except (TypeError, ValueError) as e:
        raise MvmoeError(f"{path}: invalid model_config ({e})") from None
    return cfg, {k: d.get(k) for k in ("class_names", "superclasses", "data")}


def save_pretrained(out_dir: str | os.PathLike, cfg: ModelConfig, state: dict[str, torch.Tensor],
                    meta: dict[str, Any] | None = None) -> Path:
    """``out_dir/model.safetensors`` + ``out_dir/config.json``, both written atomically; returns the
    safetensors path. Tensors are made contiguous and unshared (safetensors stores no views)."""
    bad = next((k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)
    if bad is not None:
        raise MvmoeError(f"weight {bad} holds NaN or Inf; not saving it")
    out = Path(out_dir)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    data = save(tensors, metadata={"format": "pt", "library": "mvmoe", "model": cfg.name})
    path = atomic_write_bytes(out / SAFETENSORS_NAME, lambda f: f.write(data))
    atomic_write_json(out / CONFIG_NAME, config_dict(cfg, meta))
    return path
