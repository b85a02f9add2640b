"""Expert bank: the MLPs of all E experts of one MoE block, stored stacked.

Stacked weights ([E, D, H], [E, H], [E, H, D], [E, D]) are what makes the static-shape gather
possible: indexing the stack with the router's top-k gives per-image weights of a fixed shape, and
one batched matmul applies them. Which rows get computed is the job of ``dispatch.py``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class ExpertBank(nn.Module):
    """E two-layer GELU MLPs, D -> H -> D; ``bias=False`` gives them no biases (b1 = b2 = None)."""

    def __init__(self, num_experts: int, dim: int, hidden: int, bias: bool = True):
        super().__init__()
        self.num_experts, self.dim, self.hidden = num_experts, dim, hidden
        self.w1 = nn.Parameter(torch.empty(num_experts, dim, hidden))  # (E, D, H)
        self.w2 = nn.Parameter(torch.empty(num_experts, hidden, dim))  # (E, H, D)
        self.b1 = nn.Parameter(torch.zeros(num_experts, hidden)) if bias else None  # (E, H)
        self.b2 = nn.Parameter(torch.zeros(num_experts, dim)) if bias else None  # (E, D)
        nn.init.trunc_normal_(self.w1, std=0.02)
        nn.init.trunc_normal_(self.w2, std=0.02)

    @property
    def bias(self) -> bool:
        return self.b1 is not None

    def params_per_expert(self) -> int:
        return 2 * self.dim * self.hidden + (self.hidden + self.dim if self.bias else 0)

    def select(self, index: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        """Weights of the experts in ``index`` (N,): (N, D, H), (N, H), (N, H, D), (N, D); the two
        biases are None without bias.

        index_select keeps the output shape static (N rows whatever the values), so this is the
        whole 'gather' that an exported graph contains.
        """
        if not self.bias:
            return self.w1.index_select(0, index), None, self.w2.index_select(0, index), None
        return (self.w1.index_select(0, index), self.b1.index_select(0, index),
                self.w2.index_select(0, index), self.b2.index_select(0, index))

    @staticmethod
    def batched_mlp(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor | None, w2: torch.Tensor,
                    b2: torch.Tensor | None) -> torch.Tensor:
        """x (N, T, D) with per-row weights (N, D, H), (N, H), (N, H, D), (N, D) -> (N, T, D).
        Biases of None: plain bmm."""
        N = w1.shape[0]
        h = torch.bmm(x, w1) if b1 is None else torch.baddbmm(b1.view(N, 1, -1), x, w1)  # (N, T, H)
        h = F.gelu(h)
        return torch.bmm(h, w2) if b2 is None else torch.baddbmm(b2.view(N, 1, -1), h, w2)  # (N, T, D)

    def grouped_mlp(self, x: torch.Tensor, ends: torch.Tensor, expert: torch.Tensor) -> torch.Tensor:
        """Rows sorted by expert through their expert's MLP with ``F.grouped_mm``.

        x (R*T, D): R groups of T token rows, expert e's rows ending at ``ends[e]`` (int32 (E,));
        expert (R,) int64: the expert of each group (for the biases) -> (R*T, D) in x's dtype."""
        R, H = expert.shape[0], self.hidden
        T = x.shape[0] // max(R, 1)
        h = F.grouped_mm(x, self.w1.to(x.dtype), offs=ends)  # (R*T, H)
        if self.b1 is not None:
            h = (h.view(R, T, H) + self.b1.index_select(0, expert).view(R, 1, H).to(h.dtype)).view(R * T, H)
        y = F.grouped_mm(F.gelu(h), self.w2.to(x.dtype), offs=ends)  # (R*T, D)
        if self.b2 is not None:
            y = (y.view(R, T, -1) + self.b2.index_select(0, expert).view(R, 1, -1).to(y.dtype)).view(R * T, -1)
        return y

    def expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """Expert ``e`` on x (..., D) -> (..., D), with plain matmuls."""
        h = x @ self.w1[e]  # (..., H)
        h = F.gelu(h if self.b1 is None else h + self.b1[e])
        y = h @ self.w2[e]  # (..., D)
        return y if self.b2 is None else y + self.b2[e]

    def all_experts(self, x: torch.Tensor) -> torch.Tensor:
        """Every expert on its own rows: x (E, N, D) -> (E, N, D)."""
        return self.batched_mlp(x, self.w1, self.b1, self.w2, self.b2)
