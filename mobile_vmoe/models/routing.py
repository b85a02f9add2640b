"""Routers: which experts see which input.

PerImageRouter (Mobile V-MoE): one decision per image, made once on the representation after the
last dense block and shared by every MoE block.

PerTokenRouter (V-MoE, Riquelme et al. 2021): one decision per token in every MoE block, with a fixed
expert capacity and batch-priority routing (BPR) over a group of tokens; tokens that do not fit are
dropped (their MoE output is zero, so only the residual carries them on). As in V-MoE the group
pools the tokens of several images (``token_group_size``, default the whole batch), so confident
tokens of one image can take buffer room another image leaves free: compute per image adapts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..config import expert_capacity


@dataclass
class ImageRoute:
    """Output of the per-image router for a batch of B images and top-k of E experts."""

    logits: torch.Tensor  # (B, E) router logits, trained against superclass labels
    index: torch.Tensor  # (B, k) int64 chosen experts, best first
    gates: torch.Tensor  # (B, k) combine weights
    aux_loss: torch.Tensor | None = None  # () balancing loss, used when the router has no superclass target


def topk_gates(probs: torch.Tensor, k: int, unit: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k experts of ``probs`` (..., E) and their gates (..., k).

    k > 1: gates renormalised to sum to 1. k == 1: the raw probability is kept as the gate (as in
    V-MoE and Switch), so the classification loss still sends a gradient to the router; with a
    renormalised k=1 gate (always 1.0) an end-to-end router could not learn.

    ``unit=True`` (ModelConfig.gate == "unit"): the gates sum to 1 for every k. For k == 1 the gate
    is p / stop_gradient(p): its value is exactly 1 (x / x is exact in IEEE arithmetic) and its
    gradient is that of log p, so the router still learns from the classification loss. An MoE
    whose experts are copies of one MLP then computes that MLP whatever the routing (upcycling).
    E.g. probs [0.2, 0.5, 0.3], k 1: prob gate 0.5, unit gate 1.0, both for expert 1.
    """
    gates, index = probs.topk(k, dim=-1)
    if k > 1:
        gates = gates / gates.sum(dim=-1, keepdim=True)
    elif unit:
        gates = gates / gates.detach() if torch.is_grad_enabled() else torch.ones_like(gates)
    return gates, index


class PerImageRouter(nn.Module):
    """LayerNorm -> Linear(D, E) on one vector per image, softmax, top-k."""

    def __init__(self, dim: int, num_experts: int, top_k: int, router_input: str = "cls", unit_gate: bool = False):
        super().__init__()
        self.top_k = top_k
        self.unit_gate = unit_gate
        self.router_input = router_input
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.proj = nn.Linear(dim, num_experts)

    def forward(self, x: torch.Tensor) -> ImageRoute:
        """x: (B, T, D) tokens after the last dense block; token 0 is the class token."""
        v = x[:, :1].flatten(1) if self.router_input == "cls" else x[:, 1:].mean(dim=1)  # (B, D)
        logits = self.proj(self.norm(v))  # (B, E)
        probs = logits.softmax(dim=-1)  # (B, E)
        gates, index = topk_gates(probs, self.top_k, self.unit_gate)  # (B, k), (B, k)
        aux = None
        if self.training:
            aux = importance_loss(probs) + switch_load_loss(probs, index[:, 0])
        return ImageRoute(logits=logits, index=index, gates=gates, aux_loss=aux)


@dataclass
class TokenRoute:
    """Output of the per-token router for B images of T tokens, E experts with C slots each."""

    logits: torch.Tensor  # (B, T, E) clean router logits
    index: torch.Tensor  # (B, T, k) chosen experts per token, best first
    gates: torch.Tensor  # (B, T, k) combine weights (0 where the token was dropped)
    slot: torch.Tensor  # (B, T, k) flat buffer slot e*C + position, or E*C where dropped
    kept: torch.Tensor  # (B, T, k) bool: the choice fit in the expert's buffer
    capacity: int  # C
    aux_loss: torch.Tensor  # () importance + load balancing loss


def importance_loss(probs: torch.Tensor) -> torch.Tensor:
    """Squared coefficient of variation of per-expert importance (sum of gate probabilities).

    probs: (N, E) router softmax over N tokens.
    """
    imp = probs.sum(dim=0)  # (E,)
    return (imp.std(unbiased=False) / imp.mean().clamp_min(1e-9)) ** 2


def switch_load_loss(probs: torch.Tensor, choice: torch.Tensor) -> torch.Tensor:
    """Switch Transformer load balancing: E * sum_e f_e * P_e, with f_e the share of inputs whose
    top choice is e and P_e their mean router probability for e. 1 when both are uniform; the
    gradient flows through P_e. probs (N, E), choice (N,) int64.

    E.g. E = 2, probs [[0.9, 0.1], [0.6, 0.4]], both choose 0: f = [1, 0], P = [0.75, 0.25] -> 1.5.
    """
    E = probs.shape[-1]
    ones = torch.ones_like(choice, dtype=probs.dtype)
    f = torch.zeros(E, dtype=probs.dtype, device=probs.device).scatter_add(0, choice, ones) / choice.numel()  # (E,)
    # (scatter_add rather than bincount: CUDA's bincount reads the maximum back to the host)
    return E * (f * probs.mean(dim=0)).sum()


def load_loss(logits: torch.Tensor, noisy_logits: torch.Tensor, noise_std: float, k: int) -> torch.Tensor:
    """V-MoE load loss: squared CV of each expert's probability of being selected under the noise.

    logits, noisy_logits: (N, E). For each token the selection threshold is its k-th largest noisy
    logit; expert e is selected when its clean logit plus fresh noise beats that threshold.
    """
    threshold = noisy_logits.topk(k, dim=-1).values[:, -1:]  # (N, 1)
    z = (threshold - logits) / noise_std  # (N, E) noise needed to win
    p = 1.0 - torch.special.ndtr(z)  # (N, E)
    load = p.mean(dim=0)  # (E,)
    return (load.std(unbiased=False) / load.mean().clamp_min(1e-9)) ** 2


class PerTokenRouter(nn.Module):
    """Linear(D, E) per token, noisy top-k, fixed capacity per expert, batch-priority routing.

    Takes groups (G, N, D): N tokens share the expert buffers of their group (the caller reshapes
    images into groups). Static shapes throughout: capacity C = ceil(ratio * k * N / E) per group,
    positions by cumulative sums, so the layer exports like the rest of the model. ``ratio`` is
    ``capacity_ratio`` in training and ``eval_capacity_ratio`` (when > 0) in eval mode.
    """

    def __init__(self, dim: int, num_experts: int, top_k: int, capacity_ratio: float,
                 batch_priority: bool = True, noise: float = 1.0, eval_capacity_ratio: float = 0.0,
                 unit_gate: bool = False):
        super().__init__()
        self.unit_gate = unit_gate
        self.num_experts = num_experts
        self.top_k = top_k
        self.capacity_ratio = capacity_ratio
        self.eval_capacity_ratio = eval_capacity_ratio
        self.batch_priority = batch_priority
        self.noise_std = noise / num_experts
        self.proj = nn.Linear(dim, num_experts, bias=False)

    def capacity(self, tokens: int) -> int:
        ratio = self.capacity_ratio
        if not self.training and self.eval_capacity_ratio > 0:
            ratio = self.eval_capacity_ratio
        return expert_capacity(tokens, self.top_k, self.num_experts, ratio)

    def forward(self, x: torch.Tensor) -> TokenRoute:
        """x: (B, T, D) normalised tokens, B groups of T tokens each."""
        B, T, _ = x.shape
        E, k = self.num_experts, self.top_k
        logits = self.proj(x)  # (B, T, E)
        noisy = logits
        if self.training and self.noise_std > 0:
            noisy = logits + self.noise_std * torch.randn_like(logits)
        probs = noisy.softmax(dim=-1)  # (B, T, E)
        if self.unit_gate:  # (B, T, k) summing to 1 (see topk_gates)
            gates, index = topk_gates(probs, k, unit=True)
        else:
            gates, index = probs.topk(k, dim=-1)  # (B, T, k) raw probabilities, as in V-MoE
        C = self.capacity(T)
        slot, kept = assign_slots(index, gates[..., 0], E, C, self.batch_priority)
        gates = gates * kept.to(gates.dtype)
        flat_logits = logits.reshape(B * T, E)
        aux = importance_loss(probs.reshape(B * T, E))
        if self.training and self.noise_std > 0:
            aux = 0.5 * (aux + load_loss(flat_logits, noisy.reshape(B * T, E), self.noise_std, k))
        return TokenRoute(logits=logits, index=index, gates=gates, slot=slot, kept=kept, capacity=C, aux_loss=aux)


def assign_slots(index: torch.Tensor, priority: torch.Tensor, num_experts: int, capacity: int,
                 batch_priority: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Give each (token, choice) a slot in its expert's buffer of ``capacity`` per image.

    index: (B, T, k) chosen experts; priority: (B, T), higher goes first when ``batch_priority``,
    otherwise tokens go in their natural order. All first choices are placed before any second
    choice (V-MoE). Returns slot (B, T, k) = e * C + position, or E * C where the buffer was full,
    and kept (B, T, k) bool.
    """
    B, T, k = index.shape
    E, C = num_experts, capacity
    if batch_priority:
        order = priority.topk(T, dim=1).indices  # (B, T) most confident first (topk: in core ATen, unlike a stable sort)
    else:
        order = torch.arange(T, device=index.device).expand(B, T)
    sorted_index = index.gather(1, order.unsqueeze(-1).expand(B, T, k))  # (B, T, k)
    # (B, T, k, E); a compare rather than F.one_hot, whose range assert LiteRT cannot lower
    onehot = (sorted_index.unsqueeze(-1) == torch.arange(E, device=index.device)).to(torch.int64)
    onehot = onehot.transpose(1, 2).reshape(B, k * T, E)  # choice-major: all 1st choices first
    position = onehot.cumsum(dim=1) - 1  # (B, k*T, E) rank within the expert
    position = (position * onehot).sum(dim=-1)  # (B, k*T)
    position = position.reshape(B, k, T).transpose(1, 2)  # (B, T, k) in priority order
    ranks = torch.arange(T, device=index.device)
    # (B, T): where each token sits in ``order``; a compare and a sum (no scatter: it converts to Core ML and LiteRT)
    inverse = ((order.unsqueeze(2) == ranks.view(1, 1, T)).long() * ranks.view(1, T, 1)).sum(1)
    position = position.gather(1, inverse.unsqueeze(-1).expand(B, T, k))  # natural token order
    kept = position < C
    slot = torch.where(kept, index * C + position, torch.full_like(position, E * C))
    return slot, kept
