"""ViT building blocks: patch embedding, attention, MLP, pre-norm block (drop path from torchvision).

Shapes: B images, T tokens (patches + class token), D width, H MLP hidden, h heads, d = D / h.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import StochasticDepth


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches -> D-dim tokens with one strided convolution."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, dim: int):
        super().__init__()
        self.grid = img_size // patch_size
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)  # (B, D, g, g)
        return x.flatten(2).transpose(1, 2)  # (B, g*g, D)


def layer_norm_by_means(x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
    """``norm`` (a LayerNorm over the last dim) from mean, sub, mul, rsqrt and add only.

    The export form of QK-norm: XNNPACK has no LayerNorm kernel, so a native LayerNorm between
    the qkv projection and the attention matmuls would split the delegated attention in two. The
    mean over the last dim is a 4-D mean over dims (2, 3), which XNNPACK takes. Also every LayerNorm
    of an export with ``--layer-norm decomposed`` (converters.layernorm.DecomposedLayerNorm).
    x (..., d) -> (..., d).
    """
    lead, d = x.shape[:-1], x.shape[-1]
    rows = x.numel() // d

    def mean(t: torch.Tensor) -> torch.Tensor:  # (..., d) -> (..., 1)
        # reshape, not view: QK-norm's input is a strided slice of the qkv output
        return t.reshape(1, rows, d, 1).mean(dim=(2, 3), keepdim=True).reshape(*lead, 1)

    xc = x - mean(x)
    y = xc * torch.rsqrt(mean(xc * xc) + norm.eps) * norm.weight
    return y if norm.bias is None else y + norm.bias


class Attention(nn.Module):
    """Multi-head self-attention, optionally with QK-norm (ViT-22B).

    ``fused=True`` calls F.scaled_dot_product_attention; ``fused=False`` spells the same maths as
    slice -> bmm -> softmax -> bmm with only slices, reshapes and permutes in between: no
    ``select`` or ``expand``, the ops delegates such as XNNPACK do not take (see docs/export.md).
    Both give the same numbers (tested).

    ``qk_norm=True`` puts a LayerNorm over the head dim d on the queries and on the keys (one for
    q, one for k, shared by the heads) before the dot product; the export form computes it with
    ``layer_norm_by_means``, so it stays inside the delegated attention. ``qkv_bias`` / ``proj_bias`` /
    ``norm_bias`` switch the biases of the qkv projection, the output projection and the QK-norms.
    """

    def __init__(self, dim: int, heads: int, qkv_bias: bool = True, qk_norm: bool = False,
                 proj_bias: bool = True, norm_bias: bool = True):
        super().__init__()
        self.heads = heads
        self.qk_norm = qk_norm
        self.head_dim = dim // heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.q_norm = nn.LayerNorm(self.head_dim, eps=1e-6, bias=norm_bias) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim, eps=1e-6, bias=norm_bias) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.fused = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        h, d = self.heads, self.head_dim
        if self.fused:
            qkv = self.qkv(x).reshape(B, T, 3, h, d).permute(2, 0, 3, 1, 4)  # (3, B, h, T, d)
            q, k = self.q_norm(qkv[0]), self.k_norm(qkv[1])  # (B, h, T, d), normalised over d
            x = F.scaled_dot_product_attention(q, k, qkv[2])  # (B, h, T, d)
            return self.proj(x.transpose(1, 2).reshape(B, T, D))
        qkv = self.qkv(x)  # (B, T, 3D)
        q, k, v = qkv[..., :D], qkv[..., D : 2 * D], qkv[..., 2 * D :]  # each (B, T, D): slices, not split
        q, k = q.reshape(B, T, h, d), k.reshape(B, T, h, d)
        if self.qk_norm:  # normalised over d, each head on its own
            q, k = layer_norm_by_means(q, self.q_norm), layer_norm_by_means(k, self.k_norm)
        q = (q * self.scale).permute(0, 2, 1, 3).reshape(B * h, T, d)
        k = k.permute(0, 2, 3, 1).reshape(B * h, d, T)
        v = v.reshape(B, T, h, d).permute(0, 2, 1, 3).reshape(B * h, T, d)
        attn = torch.bmm(q, k).softmax(dim=-1)  # (B*h, T, T)
        x = torch.bmm(attn, v).reshape(B, h, T, d).permute(0, 2, 1, 3).reshape(B, T, D)
        return self.proj(x)


class Mlp(nn.Module):
    """Linear(D, H) -> GELU -> Linear(H, D), with or without biases."""

    def __init__(self, dim: int, hidden: int, bias: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block.

    Sequential (ViT): x = x + attn(norm1(x)), then x + mlp(norm2(x)).
    Parallel (ViT-22B, ``parallel=True``): x + attn(norm1(x)) + mlp(norm1(x)): one shared norm, no
    ``norm2``, and one drop-path mask for the sum of both branches.

    The MLP is an ``Mlp`` or an MoE layer. MoE layers take the per-image route as a keyword
    argument and return ``(y, token_route)``; ``forward`` returns ``(x, token_route)`` for every
    block, with ``token_route`` None unless the MLP routes tokens (V-MoE), so routing information
    leaves the model through return values only. ``parallel=True`` is ViT-22B's parallel block,
    x + attn(norm(x)) + mlp(norm(x)) with one shared norm. ``bias=False`` drops the biases of the
    attention projections and of the LayerNorms (the MLP gets its own ``bias`` from the caller);
    the qkv projection has a bias only if ``bias`` and ``qkv_bias`` are both True.
    """

    def __init__(self, dim: int, heads: int, mlp: nn.Module, qkv_bias: bool = True, drop_path: float = 0.0, *,
                 qk_norm: bool = False, parallel: bool = False, bias: bool = True):
        super().__init__()
        self.parallel = parallel
        self.norm1 = nn.LayerNorm(dim, eps=1e-6, bias=bias)
        self.attn = Attention(dim, heads, qkv_bias=qkv_bias and bias, qk_norm=qk_norm, proj_bias=bias, norm_bias=bias)
        self.norm2 = None if parallel else nn.LayerNorm(dim, eps=1e-6, bias=bias)
        self.mlp = mlp
        self.drop_path = StochasticDepth(drop_path, mode="row")  # per sample, scaled by 1 / (1 - p)

    def forward(self, x: torch.Tensor, **route):
        """x (B, T, D) -> ((B, T, D), TokenRoute | None)."""
        if self.parallel:
            y = self.norm1(x)  # (B, T, D), the input of both branches
            mlp_y, token_route = self._mlp(y, route)
            return x + self.drop_path(self.attn(y) + mlp_y), token_route
        x = x + self.drop_path(self.attn(self.norm1(x)))
        y, token_route = self._mlp(self.norm2(x), route)
        return x + self.drop_path(y), token_route

    def _mlp(self, x: torch.Tensor, route: dict):
        """The MLP branch -> (y, token_route or None): MoE layers return both, an Mlp only y."""
        out = self.mlp(x, **route)
        return out if isinstance(out, tuple) else (out, None)
