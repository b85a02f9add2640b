"""Dispatch: route inputs to experts and combine their outputs.

Per-image routing (index and gates of shape (B, k)), three paths with the same numbers:

- ``gather``: index the stacked weights with the top-k (static shape: (B*k, D, H) whatever the
  choice), then one batched matmul. The export default: no data-dependent shapes or control flow.
- ``dense``: run every expert on every image and combine with the sparse gate vector. E times the
  MLP work; the fallback for backends that cannot gather.
- ``grouped``: the (image, choice) rows sorted by expert, then one ``F.grouped_mm`` per expert
  layer runs each expert's contiguous block against that expert's weights. Offsets are computed on
  the device (searchsorted), so there is no host sync and no data-dependent shape: it compiles
  with ``fullgraph=True``. No per-image weight copies, so it is the training path at large batch.
  Where grouped_mm does not run (CUDA before sm80, fp16, fp32 on CUDA) it falls back to the
  static gather.

Per-token routing (V-MoE) has one path, ``token_dispatch``: slots of a fixed capacity per expert,
filled by index gathers, so it exports too.
"""

from __future__ import annotations

import torch

from .experts import ExpertBank
from .routing import TokenRoute


def gather_dispatch(bank: ExpertBank, x: torch.Tensor, index: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
    """x (B, T, D), index (B, k), gates (B, k) -> (B, T, D)."""
    B, T, D = x.shape
    k = index.shape[1]
    w1, b1, w2, b2 = bank.select(index.reshape(B * k))  # (B*k, D, H) ...
    # Row b*k + j is image b for its j-th expert. Written with cat, view and bmm (no expand,
    # unsqueeze or sum) so that all of it but the index_select runs inside an XNNPACK delegate.
    xk = x if k == 1 else torch.cat([x] * k, dim=1).view(B * k, T, D)  # (B*k, T, D)
    y = bank.batched_mlp(xk, w1, b1, w2, b2)  # (B*k, T, D)
    g = gates.to(y.dtype)
    if k == 1:
        return y * g.view(B, 1, 1)
    return torch.bmm(g.view(B, 1, k), y.view(B, k, T * D)).view(B, T, D)  # gate-weighted sum over k


def sparse_gate_vector(index: torch.Tensor, gates: torch.Tensor, num_experts: int) -> torch.Tensor:
    """(B, k) index and gates -> (B, E) with gates at the chosen experts and zeros elsewhere."""
    experts = torch.arange(num_experts, device=index.device)
    onehot = (index.unsqueeze(-1) == experts).to(gates.dtype)  # (B, k, E)
    return (onehot * gates.unsqueeze(-1)).sum(dim=1)  # (B, E)


def dense_dispatch(bank: ExpertBank, x: torch.Tensor, index: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
    """Every expert on every image, x (B, T, D) -> (B, T, D)."""
    B, T, D = x.shape
    E = bank.num_experts
    xe = x.reshape(1, B * T, D).expand(E, B * T, D)  # (E, B*T, D)
    y = bank.all_experts(xe).view(E, B, T, D)
    combine = sparse_gate_vector(index, gates, E).to(y.dtype)  # (B, E)
    return torch.einsum("ebtd,be->btd", y, combine)


def grouped_mm_dtype(bank: ExpertBank, x: torch.Tensor) -> torch.dtype | None:
    """The dtype ``F.grouped_mm`` runs the experts in for ``x``, or None where it does not run:
    x's fp32 or bf16 on CPU (fp32 not under torch.compile: the op's meta kernel takes 16-bit types
    only); bf16 on CUDA sm80+ under bf16 autocast (or for bf16 inputs). Its kernels also need rows
    of D and H values to be multiples of 16 bytes."""
    if x.device.type == "cpu":
        dtype = x.dtype if x.dtype in (torch.float32, torch.bfloat16) and not torch.is_autocast_enabled("cpu") else None
        if dtype == torch.float32 and torch.compiler.is_compiling():
            dtype = None
    elif x.device.type != "cuda" or torch.cuda.get_device_capability(x.device) < (8, 0):
        dtype = None
    else:
        bf16 = x.dtype == torch.bfloat16 or (torch.is_autocast_enabled("cuda") and
                                             torch.get_autocast_dtype("cuda") == torch.bfloat16)
        dtype = torch.bfloat16 if bf16 else None
    if dtype is None or (bank.dim * dtype.itemsize) % 16 or (bank.hidden * dtype.itemsize) % 16:
        return None
    return dtype


def grouped_dispatch(bank: ExpertBank, x: torch.Tensor, index: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
    """Each expert runs once on the images that picked it. x (B, T, D) -> (B, T, D).

    The B*k (image, choice) rows are sorted by expert, so the images of one expert are one
    contiguous block; ``ends`` (E,) says where each block ends, found with searchsorted on the
    device. One gather in, two grouped matmuls, one gather out: static shapes, no host sync."""
    dtype = grouped_mm_dtype(bank, x)
    if dtype is None:
        return gather_dispatch(bank, x, index, gates)
    B, T, D = x.shape
    k = index.shape[1]
    R = B * k  # row b*k + j: image b's j-th choice
    expert, order = index.reshape(R).sort(stable=True)  # (R,) experts ascending; order: the row of each
    experts = torch.arange(bank.num_experts, device=x.device)
    ends = torch.searchsorted(expert, experts, right=True)  # (E,) end of each expert's block, in rows
    xs = x.index_select(0, order // k).reshape(R * T, D).to(dtype)  # (R*T, D) sorted by expert
    y = bank.grouped_mlp(xs, (ends * T).to(torch.int32), expert).view(R, T, D)
    y = y * gates.reshape(R)[order].view(R, 1, 1).to(y.dtype)
    place = torch.empty_like(order).scatter_(0, order, torch.arange(R, device=x.device))  # sorted position of each row
    y = y.index_select(0, place)  # (R, T, D) back in row order
    return y if k == 1 else y.view(B, k, T, D).sum(dim=1)


IMAGE_DISPATCH = {"gather": gather_dispatch, "dense": dense_dispatch, "grouped": grouped_dispatch}


def slot_tokens(slot: torch.Tensor, T: int, k: int, slots: int, compare: bool = False) -> torch.Tensor:
    """Which token fills each buffer slot: slot (B, T*k) in [0, slots] (``slots`` = dropped) ->
    (B, slots) token ids, T for an empty slot (the zero row). Training scatters the ids; under
    export (``compare``) it is a compare and a sum instead, which Core ML and LiteRT convert (their
    scatter lowering fails on integer data) but which builds a (B, T*k, slots) mask: fine at batch 1,
    tens of MB per block at training batches."""
    B = slot.shape[0]
    token = torch.arange(T, device=slot.device).view(1, T, 1).expand(B, T, k).reshape(B, T * k)
    if compare:
        hit = slot.unsqueeze(2) == torch.arange(slots, device=slot.device).view(1, 1, slots)  # (B, T*k, slots)
        return (hit.long() * (token - T).unsqueeze(2)).sum(1) + T  # at most one token per slot
    out = torch.full((B, slots + 1), T, dtype=token.dtype, device=slot.device)  # column ``slots``: the dropped
    return out.scatter_(1, slot, token)[:, :slots]


def token_dispatch(bank: ExpertBank, x: torch.Tensor, route: TokenRoute) -> torch.Tensor:
    """Per-token routing with capacity. x (B, T, D) -> (B, T, D); dropped tokens give zeros."""
    B, T, D = x.shape
    E, C = bank.num_experts, route.capacity
    k = route.slot.shape[-1]
    slot = route.slot.reshape(B, T * k)  # (B, T*k) in [0, E*C]; E*C = dropped
    exporting = torch.compiler.is_exporting() or torch.jit.is_tracing()
    token_of_slot = slot_tokens(slot, T, k, E * C, compare=exporting)  # (B, E*C)
    x_pad = torch.cat([x, x.new_zeros(B, 1, D)], dim=1)  # (B, T+1, D)
    buf = x_pad.gather(1, token_of_slot.unsqueeze(-1).expand(B, E * C, D))  # (B, E*C, D)
    buf = buf.view(B, E, C, D).transpose(0, 1).reshape(E, B * C, D)
    y = bank.all_experts(buf)  # (E, B*C, D)
    y = y.view(E, B, C, D).transpose(0, 1).reshape(B, E * C, D)
    y_pad = torch.cat([y, y.new_zeros(B, 1, D)], dim=1)  # (B, E*C+1, D)
    out = y_pad.gather(1, slot.unsqueeze(-1).expand(B, T * k, D)).view(B, T, k, D)
    return (out * route.gates.unsqueeze(-1).to(out.dtype)).sum(dim=2)
