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


class Attention(nn.Module):
    """Multi-head self-attention.

    ``fused=True`` calls F.scaled_dot_product_attention; ``fused=False`` spells the same maths as
    slice -> bmm -> softmax -> bmm with only slices, reshapes and permutes in between: no
    ``select`` or ``expand``, the ops delegates such as XNNPACK do not take (see docs/export.md).
    Both give the same numbers (tested).
    """

    def __init__(self, dim: int, heads: int, qkv_bias: bool = True):
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.fused = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        h, d = self.heads, self.head_dim
        if self.fused:
            qkv = self.qkv(x).reshape(B, T, 3, h, d).permute(2, 0, 3, 1, 4)
            x = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, h, T, d)
            return self.proj(x.transpose(1, 2).reshape(B, T, D))
        qkv = self.qkv(x)  # (B, T, 3D)
        q, k, v = qkv[..., :D], qkv[..., D : 2 * D], qkv[..., 2 * D :]  # each (B, T, D): slices, not split
        q = (q * self.scale).reshape(B, T, h, d).permute(0, 2, 1, 3).reshape(B * h, T, d)
        k = k.reshape(B, T, h, d).permute(0, 2, 3, 1).reshape(B * h, d, T)
        v = v.reshape(B, T, h, d).permute(0, 2, 1, 3).reshape(B * h, T, d)
        attn = torch.bmm(q, k).softmax(dim=-1)  # (B*h, T, T)
        x = torch.bmm(attn, v).reshape(B, h, T, d).permute(0, 2, 1, 3).reshape(B, T, D)
        return self.proj(x)


class Mlp(nn.Module):
    """Linear(D, H) -> GELU -> Linear(H, D)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x)).

    The MLP is an ``Mlp`` or an MoE layer. MoE layers take the per-image route as a keyword
    argument and return ``(y, token_route)``; ``forward`` returns ``(x, token_route)`` for every
    block, with ``token_route`` None unless the MLP routes tokens (V-MoE), so routing information
    leaves the model through return values only.
    """

    def __init__(self, dim: int, heads: int, mlp: nn.Module, qkv_bias: bool = True, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = mlp
        self.drop_path = StochasticDepth(drop_path, mode="row")  # per sample, scaled by 1 / (1 - p)

    def forward(self, x: torch.Tensor, **route):
        """x (B, T, D) -> ((B, T, D), TokenRoute | None)."""
        x = x + self.drop_path(self.attn(self.norm1(x)))
        out = self.mlp(self.norm2(x), **route)
        y, token_route = out if isinstance(out, tuple) else (out, None)
        return x + self.drop_path(y), token_route
