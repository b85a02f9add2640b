"""MobileVMoE: dense blocks -> (per-image router) -> MoE blocks -> head.

One class covers the whole family: ``num_experts == 0`` is a plain ViT, ``routing == "image"`` is
Mobile V-MoE (Daxberger et al. 2023), ``routing == "token"`` is V-MoE (Riquelme et al. 2021).

``forward(x)`` returns logits only (what gets exported); ``forward_with_routing(x)`` returns a
``ModelOutput`` with the router logits, chosen experts, gates and auxiliary losses for training
and analysis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..config import ModelConfig
from ..errors import MvmoeError
from .dispatch import IMAGE_DISPATCH, token_dispatch
from .experts import ExpertBank
from .routing import ImageRoute, PerImageRouter, PerTokenRouter, TokenRoute
from .vit import Attention, Block, Mlp, PatchEmbed


@dataclass
class ModelOutput:
    logits: torch.Tensor  # (B, num_classes)
    router_logits: torch.Tensor | None = None  # (B, E) per-image router
    expert_index: torch.Tensor | None = None  # (B, k) per-image choice
    gates: torch.Tensor | None = None  # (B, k)
    aux_loss: torch.Tensor | None = None  # () per-token balancing losses, summed over MoE blocks
    token_routes: list[TokenRoute] = field(default_factory=list)  # per-token routing, one per MoE block


class MoEMlp(nn.Module):
    """The MLP of one MoE block: an ExpertBank plus how to dispatch to it.

    Per-image routing receives the route from the model; per-token routing owns its router.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.routing = cfg.routing
        self.dispatch = cfg.dispatch
        self.experts = ExpertBank(cfg.num_experts, cfg.width, cfg.expert_hidden, bias=cfg.bias)
        self.router = None
        if cfg.routing == "token":
            self.router = PerTokenRouter(cfg.width, cfg.num_experts, cfg.top_k, cfg.capacity_ratio,
                                         cfg.batch_priority, cfg.router_noise, cfg.eval_capacity_ratio,
                                         unit_gate=cfg.gate == "unit")
        self.group_size = cfg.token_group_size

    def resolve_dispatch(self, batch: int, k: int) -> str:
        """``auto``: gather when exporting/tracing or for small batches, grouped otherwise (grouped
        has no host sync, so torch.compile keeps it)."""
        if self.dispatch != "auto":
            return self.dispatch
        if torch.compiler.is_exporting() or torch.jit.is_tracing():
            return "gather"
        return "grouped" if batch * k > 2 * self.experts.num_experts else "gather"

    def forward(self, x: torch.Tensor, route: ImageRoute | None = None) -> tuple[torch.Tensor, TokenRoute | None]:
        """x: (B, T, D) normalised tokens -> ((B, T, D), the token route or None for per-image routing).

        Per-token routing routes groups of ``token_group_size`` images (gcd with B; 0 = the whole
        batch): the route's tensors are (B/g, g*T, ...)."""
        if self.router is not None:
            B, T, D = x.shape
            g = math.gcd(B, self.group_size) if self.group_size else B  # images per routing group
            groups = x.reshape(B // g, g * T, D)  # (B/g, g*T, D): a group's tokens share the buffers
            token_route = self.router(groups)
            return token_dispatch(self.experts, groups, token_route).reshape(B, T, D), token_route
        assert route is not None, "per-image MoE block called without a route"
        mode = self.resolve_dispatch(x.shape[0], route.index.shape[1])
        return IMAGE_DISPATCH[mode](self.experts, x, route.index, route.gates), None


class MobileVMoE(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        D = cfg.width
        self.patch_embed = PatchEmbed(cfg.img_size, cfg.patch_size, cfg.in_chans, D)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_tokens, D))
        rates = [cfg.drop_path * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        self.blocks = nn.ModuleList(
            Block(D, cfg.heads, MoEMlp(cfg) if cfg.is_moe_block(i) else Mlp(D, cfg.mlp_hidden, bias=cfg.bias),
                  cfg.use_qkv_bias, rates[i], qk_norm=cfg.qk_norm, parallel=cfg.parallel_block, bias=cfg.bias)
            for i in range(cfg.depth)
        )
        self.router = None
        if cfg.is_per_image:
            self.router = PerImageRouter(D, cfg.num_experts, cfg.top_k, cfg.router_input, unit_gate=cfg.gate == "unit")
        self.norm = nn.LayerNorm(D, eps=1e-6, bias=cfg.bias)
        self.head_drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(D, cfg.num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    # ------------------------------------------------------------------ forward
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> tokens (B, T, D) with class token and position embedding."""
        x = self.patch_embed(x)  # (B, g*g, D)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        return torch.cat([cls, x], dim=1) + self.pos_embed

    def forward_trunk(self, x: torch.Tensor) -> tuple[torch.Tensor, ImageRoute | None]:
        """Images (B, C, H, W) -> tokens after the last dense block (B, T, D) and the per-image
        route (None unless routing == "image"): everything before the first MoE block."""
        x, _ = run_blocks(self.blocks[: self.cfg.first_moe_block], self.embed(x))
        return x, (self.router(x) if self.router is not None else None)  # once per image

    def forward_moe_blocks(self, x: torch.Tensor, route: ImageRoute | None) -> tuple[torch.Tensor, list[TokenRoute]]:
        """Tokens after the last dense block (B, T, D) -> final normalised tokens (B, T, D) and the
        token routes of the per-token MoE blocks; every MoE block uses the one per-image ``route``."""
        kw = {"route": route} if route is not None else {}
        x, token_routes = run_blocks(self.blocks[self.cfg.first_moe_block:], x, **kw)
        return self.norm(x), token_routes

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, ImageRoute | None, list[TokenRoute]]:
        """Images -> final normalised tokens (B, T, D), the per-image route (None if not used) and
        the token routes of the per-token MoE blocks (empty unless routing == "token")."""
        x, route = self.forward_trunk(x)
        x, token_routes = self.forward_moe_blocks(x, route)
        return x, route, token_routes

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens (B, T, D) -> logits (B, num_classes) from the class token."""
        return self.head(self.head_drop(x[:, :1].flatten(1)))  # class token (a slice: delegates take it)

    def forward_with_routing(self, x: torch.Tensor) -> ModelOutput:
        feats, route, token_routes = self.forward_features(x)
        out = ModelOutput(logits=self.forward_head(feats), token_routes=token_routes)
        if route is not None:
            out.router_logits, out.expert_index, out.gates = route.logits, route.index, route.gates
        if token_routes:
            out.aux_loss = torch.stack([r.aux_loss for r in token_routes]).sum()
        elif route is not None:
            out.aux_loss = route.aux_loss  # per-image balancing (training only)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats, _, _ = self.forward_features(x)
        return self.forward_head(feats)

    # ------------------------------------------------------------ adjustments
    def set_dispatch(self, mode: str) -> "MobileVMoE":
        """Dispatch for every per-image MoE block: auto | gather | dense | grouped."""
        if mode not in ("auto", *IMAGE_DISPATCH):
            raise MvmoeError(f"dispatch={mode!r} must be one of auto, {', '.join(IMAGE_DISPATCH)}")
        self.cfg = self.cfg.replace(dispatch=mode)  # the config keeps describing the model
        for m in self.modules():
            if isinstance(m, MoEMlp):
                m.dispatch = mode
        return self

    def set_capacity_ratio(self, ratio: float) -> "MobileVMoE":
        """Per-token routing: the expert capacity ratio used in eval mode (V-MoE's knob that trades
        compute for accuracy at inference); the config keeps describing the model."""
        if not self.cfg.is_moe or self.cfg.routing != "token":
            raise MvmoeError("set_capacity_ratio: only per-token (routing=token) models have an expert capacity")
        self.cfg = self.cfg.replace(eval_capacity_ratio=ratio)
        for m in self.modules():
            if isinstance(m, PerTokenRouter):
                m.eval_capacity_ratio = ratio
        return self

    def set_fused_attention(self, fused: bool) -> "MobileVMoE":
        for m in self.modules():
            if isinstance(m, Attention):
                m.fused = fused
        return self

    # ------------------------------------------------------------------ counts
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def num_active_params(self) -> int:
        """Parameters one image uses (see ``count_active_params``)."""
        return count_active_params(self, self.cfg)


def run_blocks(blocks, x: torch.Tensor, **route) -> tuple[torch.Tensor, list[TokenRoute]]:
    """x (B, T, D) through ``blocks`` in order; ``route`` (``route=`` the per-image route, or what a
    block's MLP takes) goes to every block's MLP. -> ((B, T, D), the token routes the blocks made)."""
    token_routes: list[TokenRoute] = []
    for block in blocks:
        x, token_route = block(x, **route)
        if token_route is not None:
            token_routes.append(token_route)
    return x, token_routes


def count_active_params(module: nn.Module, cfg: ModelConfig) -> int:
    """Parameters of ``module`` (the model or a part of it) that one image uses. Per-image MoE:
    k of the E experts of each MoE block. Per-token routing: every expert can receive tokens of
    one image, so all parameters count."""
    total = sum(p.numel() for p in module.parameters())
    if not cfg.is_per_image:
        return total
    for m in module.modules():
        if isinstance(m, MoEMlp):
            total -= (cfg.num_experts - cfg.top_k) * m.experts.params_per_expert()
    return total
