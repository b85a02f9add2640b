"""FLOPs and parameter counts from the ops a forward actually executes.

torch.utils.flop_counter.FlopCounterMode counts every executed matmul / convolution (2*m*n*k per
matmul). Two consequences worth knowing:

- On the gather path only the k chosen experts run, so only they are counted: "active" MACs per
  image come out of the count directly. On the dense (all-experts) path all E are counted, which
  is the real work a backend that cannot gather does.
- In torch 2.14 the CPU kernel of F.scaled_dot_product_attention
  (aten._scaled_dot_product_flash_attention_for_cpu) has no formula; ``flop_counter`` adds the
  standard one to the counters it opens, otherwise the 2*T*T*D attention MACs per block are missed.

Convention: MACs = multiply-accumulates (what papers and fvcore call "FLOPs"); FLOPs =
2 x MACs. Elementwise ops, softmax and norms are not counted.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field

import torch
from torch.utils import flop_counter as fc

from .vmoe import count_active_params

aten = torch.ops.aten


# The CPU SDPA kernels have no formula in torch 2.14: these are the standard ones, passed to each
# FlopCounterMode we open (``custom_mapping``), so importing this module changes nothing global.
EXTRA_FORMULAS = {
    aten._scaled_dot_product_flash_attention_for_cpu:
        lambda q, k, v, *args, out_shape=None, **kw: fc.sdpa_flop_count(q, k, v),
    aten._scaled_dot_product_flash_attention_for_cpu_backward:
        lambda g, q, k, v, *args, out_shape=None, **kw: fc.sdpa_backward_flop_count(g, q, k, v),
}


def flop_counter() -> fc.FlopCounterMode:
    """A FlopCounterMode that also counts the CPU attention kernels."""
    missing = {op: f for op, f in EXTRA_FORMULAS.items() if op not in fc.flop_registry}
    return fc.FlopCounterMode(display=False, custom_mapping=missing)


@dataclass
class BlockCount:
    name: str  # patch_embed, blocks.0 ... blocks.N-1, router, head
    kind: str  # embed | dense | moe | router | head
    macs: int
    params: int
    active_params: int


@dataclass
class FlopsReport:
    model: str
    dispatch: str
    macs: int  # per image
    flops: int  # 2 x macs
    params: int
    active_params: int
    per_block: list[BlockCount] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_macs(model: torch.nn.Module, inputs: torch.Tensor) -> tuple[int, dict[str, int]]:
    """Total MACs of ``model(inputs)`` and MACs per module name (FlopCounterMode's hierarchy)."""
    mode = flop_counter()
    with torch.no_grad(), mode:
        model(inputs)
    per_module = {name: sum(ops.values()) // 2 for name, ops in mode.get_flop_counts().items()}
    return mode.get_total_flops() // 2, per_module


def profile_flops(model, dispatch: str | None = "gather", batch: int = 1) -> FlopsReport:
    """Count MACs per image of a MobileVMoE on a random input of its configured size.

    dispatch: "gather" (what export runs by default; only active experts), "dense" (all experts,
    the fallback path), or None to keep the model's own setting. Works on a deepcopy.
    """
    cfg = model.cfg
    m = copy.deepcopy(model).eval()
    if dispatch is not None and cfg.is_per_image:
        m.set_dispatch(dispatch)
    x = torch.randn(batch, cfg.in_chans, cfg.img_size, cfg.img_size)
    total, per_module = count_macs(m, x)
    root = type(m).__name__

    def macs_of(name: str) -> int:
        return per_module.get(f"{root}.{name}", 0) // batch

    rows = [BlockCount("patch_embed", "embed", macs_of("patch_embed"), _params(m.patch_embed) + m.cls_token.numel() + m.pos_embed.numel(),
                       _params(m.patch_embed) + m.cls_token.numel() + m.pos_embed.numel())]
    for i, blk in enumerate(m.blocks):
        if cfg.first_moe_block == i and m.router is not None:
            rows.append(BlockCount("router", "router", macs_of("router"), _params(m.router), _params(m.router)))
        rows.append(BlockCount(f"blocks.{i}", "moe" if cfg.is_moe_block(i) else "dense", macs_of(f"blocks.{i}"),
                               _params(blk), count_active_params(blk, cfg)))
    head_params = _params(m.head) + _params(m.norm)
    rows.append(BlockCount("head", "head", macs_of("head"), head_params, head_params))
    mode_name = dispatch or getattr(cfg, "dispatch", "auto")
    if cfg.is_moe and cfg.routing == "token":
        mode_name = "token"
    elif not cfg.is_moe:
        mode_name = "none"
    return FlopsReport(model=cfg.name, dispatch=mode_name, macs=total // batch, flops=2 * total // batch,
                       params=m.num_params(), active_params=m.num_active_params(), per_block=rows)


def analytic_macs(cfg) -> int:
    """Closed-form MACs per image of the gather path (for tests and quick tables).

    patch embedding + per block [qkv 3TD^2 + attention 2T^2D + proj TD^2 + MLP 2TDH(*k for MoE,
    + k*T*D for the gate-weighted sum when k > 1)] + per-image router D*E + head D*classes. The per-token V-MoE adds its router T*D*E and computes
    E*C slots instead of T*k tokens. The ViT-22B options (qk_norm, parallel_block, bias) change no
    MACs: norms and bias additions are elementwise, and a parallel block runs the same two branches.
    """
    T, D = cfg.num_tokens, cfg.width
    macs = (cfg.grid**2) * cfg.in_chans * cfg.patch_size**2 * D
    for i in range(cfg.depth):
        macs += 4 * T * D * D + 2 * T * T * D
        if cfg.is_moe_block(i):
            if cfg.routing == "image":
                macs += cfg.top_k * 2 * T * D * cfg.expert_hidden + (cfg.top_k * T * D if cfg.top_k > 1 else 0)
            else:
                macs += T * D * cfg.num_experts + cfg.num_experts * cfg.expert_capacity() * 2 * D * cfg.expert_hidden
        else:
            macs += 2 * T * D * cfg.mlp_hidden
    if cfg.is_per_image:
        macs += D * cfg.num_experts
    return macs + D * cfg.num_classes
