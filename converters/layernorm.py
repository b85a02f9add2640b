"""``--layer-norm decomposed``: LayerNorm spelled in ops the ExecuTorch XNNPACK delegate takes, and
which export jobs it applies to (the target records' ``decomposed_layernorm``)."""

from __future__ import annotations

import torch
import torch.nn as nn

from mobile_vmoe.models.vit import layer_norm_by_means

from . import targets as T


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
