"""Model configuration: one dataclass, validated on construction.

Every field can be overridden from the command line with ``--set KEY=VALUE``; ``parse_overrides``
turns those strings into typed values and ``ModelConfig.replace`` applies them with validation.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

ROUTINGS = ("image", "token")
DISPATCHES = ("auto", "gather", "dense", "grouped")
ROUTER_INPUTS = ("cls", "mean")


@dataclass(frozen=True)
class ModelConfig:
    """A ViT, optionally with mixture-of-experts MLPs in its last ``moe_blocks`` blocks.

    num_experts == 0 gives a dense ViT. With routing == "image" (Mobile V-MoE) one router runs once
    per image on the representation after the last dense block and every MoE block uses its top-k
    choice. With routing == "token" (V-MoE, Riquelme et al. 2021) each MoE block routes every token
    on its own, with an expert capacity and batch-priority routing.
    """

    name: str = "custom"
    img_size: int = 224
    patch_size: int = 32
    in_chans: int = 3
    num_classes: int = 1000
    depth: int = 12
    width: int = 192
    heads: int = 3
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_path: float = 0.0  # stochastic depth rate at the last block (linearly increasing)
    dropout: float = 0.0  # dropout before the head
    # --- mixture of experts ---
    num_experts: int = 0  # 0 = dense
    top_k: int = 1
    moe_blocks: int = 2  # the last N blocks have MoE MLPs
    expert_mlp_ratio: float = 0.0  # hidden size of one expert / width; 0 = same as mlp_ratio
    routing: str = "image"  # image | token
    router_input: str = "cls"  # per-image router reads the class token or the mean patch token
    dispatch: str = "auto"  # auto | gather | dense | grouped (see models/experts.py)
    num_superclasses: int = 0  # router targets; 0 = num_experts (one superclass per expert)
    # per-token (V-MoE) routing only
    capacity_ratio: float = 1.05  # expert buffer = ceil(ratio * k * tokens / E) per image
    batch_priority: bool = True  # fill buffers in order of router confidence (BPR)
    router_noise: float = 1.0  # std of routing noise = router_noise / E during training

    def __post_init__(self) -> None:
        errors = self.problems()
        if errors:
            raise ValueError("invalid model config: " + "; ".join(errors))

    # ------------------------------------------------------------------ checks
    def problems(self) -> list[str]:
        p: list[str] = []
        for name in ("img_size", "patch_size", "in_chans", "num_classes", "depth", "width", "heads"):
            v = getattr(self, name)
            if not isinstance(v, int) or v <= 0:
                p.append(f"{name}={v!r} must be a positive integer")
        if p:
            return p
        if self.width % self.heads:
            p.append(f"width={self.width} is not divisible by heads={self.heads}")
        if self.img_size % self.patch_size:
            p.append(f"img_size={self.img_size} is not divisible by patch_size={self.patch_size}")
        if self.mlp_ratio <= 0:
            p.append(f"mlp_ratio={self.mlp_ratio} must be > 0")
        if not 0.0 <= self.drop_path < 1.0:
            p.append(f"drop_path={self.drop_path} must be in [0, 1)")
        if not 0.0 <= self.dropout < 1.0:
            p.append(f"dropout={self.dropout} must be in [0, 1)")
        if self.routing not in ROUTINGS:
            p.append(f"routing={self.routing!r} must be one of {ROUTINGS}")
        if self.dispatch not in DISPATCHES:
            p.append(f"dispatch={self.dispatch!r} must be one of {DISPATCHES}")
        if self.router_input not in ROUTER_INPUTS:
            p.append(f"router_input={self.router_input!r} must be one of {ROUTER_INPUTS}")
        if self.num_experts < 0 or self.num_experts == 1:
            p.append(f"num_experts={self.num_experts} must be 0 (dense) or at least 2")
        if self.num_experts:
            if not 1 <= self.top_k <= self.num_experts:
                p.append(f"top_k={self.top_k} must be between 1 and num_experts={self.num_experts}")
            if not 1 <= self.moe_blocks <= self.depth:
                p.append(f"moe_blocks={self.moe_blocks} must be between 1 and depth={self.depth}")
            if self.routing == "image" and self.moe_blocks == self.depth:
                p.append(
                    f"moe_blocks={self.moe_blocks} equals depth={self.depth}: per-image routing "
                    "needs at least one dense block before the router"
                )
            if self.expert_mlp_ratio < 0:
                p.append(f"expert_mlp_ratio={self.expert_mlp_ratio} must be >= 0")
            if self.num_superclasses < 0:
                p.append(f"num_superclasses={self.num_superclasses} must be >= 0")
            if self.capacity_ratio <= 0:
                p.append(f"capacity_ratio={self.capacity_ratio} must be > 0")
            if self.router_noise < 0:
                p.append(f"router_noise={self.router_noise} must be >= 0")
        return p

    # ------------------------------------------------------------ derived values
    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def grid(self) -> int:
        return self.img_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        """Patches plus the class token."""
        return self.grid**2 + 1

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def mlp_hidden(self) -> int:
        return int(self.width * self.mlp_ratio)

    @property
    def expert_hidden(self) -> int:
        return int(self.width * (self.expert_mlp_ratio or self.mlp_ratio))

    @property
    def router_classes(self) -> int:
        """How many outputs the per-image router has: one logit per expert."""
        return self.num_experts

    @property
    def first_moe_block(self) -> int:
        """Index of the first MoE block (== depth for a dense model)."""
        return self.depth - self.moe_blocks if self.is_moe else self.depth

    def is_moe_block(self, i: int) -> bool:
        return self.is_moe and i >= self.first_moe_block

    def expert_capacity(self, tokens: int | None = None) -> int:
        """Per-token routing: buffer slots per expert per image, ceil(ratio * k * T / E)."""
        import math

        t = self.num_tokens if tokens is None else tokens
        return max(1, math.ceil(self.capacity_ratio * self.top_k * t / self.num_experts))

    # ------------------------------------------------------------- conversion
    def replace(self, **changes: Any) -> "ModelConfig":
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ValueError(f"unknown model config key(s): {', '.join(unknown)}; known: {', '.join(field_names())}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        known = set(field_names())
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model config key(s): {', '.join(unknown)}")
        return cls(**d)


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(ModelConfig)]


def _coerce(key: str, text: str, kind: type) -> Any:
    if kind is bool:
        low = text.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"--set {key}={text}: expected true or false")
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"--set {key}={text}: expected {kind.__name__}") from None


def parse_overrides(items: list[str] | None, cls: type = ModelConfig) -> dict[str, Any]:
    """Turn ``["depth=6", "top_k=2"]`` into typed ``{"depth": 6, "top_k": 2}`` for ``cls``'s fields."""
    types = {f.name: f.type for f in dataclasses.fields(cls)}
    pytypes = {"int": int, "float": float, "str": str, "bool": bool}
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        key, text = item.split("=", 1)
        key = key.strip()
        if key not in types:
            raise ValueError(f"--set {key}: unknown key; known: {', '.join(types)}")
        t = types[key]
        kind = pytypes.get(t if isinstance(t, str) else getattr(t, "__name__", "str"), str)
        out[key] = _coerce(key, text.strip(), kind)
    return out


__all__ = ["ModelConfig", "parse_overrides", "field_names", "field", "ROUTINGS", "DISPATCHES"]
