"""A per-image MoE with k = 1 as separate programs: one trunk and one tail per expert.

    Trunk(image (B, C, H, W))         -> stream (B, T, D), expert_index (B, 1) int32, gate (B, 1),
                                         expert_probs (B, E)
    ExpertTail e(stream (B, T, D), gate (B, 1)) -> logits (B, N)

The trunk is ``MobileVMoE.forward_trunk`` (patch embedding, the dense blocks, the router), behind an
optional preprocessing module. Tail ``e`` is ``run_blocks`` over every block from the first MoE block
on, with expert ``e`` as a plain two-layer MLP whose output is scaled by the gate, then the model's
final norm and ``forward_head``. Per-image routing picks one choice for all MoE blocks, so with
k = 1 ``tail_<expert_index>(trunk(image))`` computes what the model computes. The converters export
these programs one by one (``--experts split``).
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from .experts import ExpertBank
from .vmoe import MobileVMoE, MoEMlp, run_blocks


class OneExpert(nn.Module):
    """Expert ``e`` of an ExpertBank as a plain MLP, its output scaled by the image's gate: the MoE
    MLP of a tail. Takes the gate as the keyword a Block passes its MLP."""

    def __init__(self, bank: ExpertBank, e: int):
        super().__init__()
        D, H = bank.dim, bank.hidden
        self.fc1, self.fc2 = nn.Linear(D, H, bias=bank.bias), nn.Linear(H, D, bias=bank.bias)
        with torch.no_grad():
            self.fc1.weight.copy_(bank.w1[e].T)  # (H, D)
            self.fc2.weight.copy_(bank.w2[e].T)  # (D, H)
            if bank.bias:
                self.fc1.bias.copy_(bank.b1[e])
                self.fc2.bias.copy_(bank.b2[e])

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """x (B, T, D), gate (B, 1) -> (B, T, D)."""
        return self.fc2(F.gelu(self.fc1(x))) * gate.view(-1, 1, 1)


class Trunk(nn.Module):
    """image -> (stream, expert_index int32, gate, expert_probs): everything before the MoE blocks."""

    def __init__(self, model: MobileVMoE, preprocess: nn.Module | None = None):
        super().__init__()
        self.model, self.preprocess = model, preprocess or nn.Identity()

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        stream, route = self.model.forward_trunk(self.preprocess(image))  # (B, T, D); index, gates (B, 1)
        return stream, route.index.to(torch.int32), route.gates, route.logits.softmax(dim=-1)


class ExpertTail(nn.Module):
    """(stream, gate) -> logits through every block from the first MoE block on, with expert ``e``.
    Holds copies of those blocks (expert ``e`` only), the final norm and the head."""

    def __init__(self, model: MobileVMoE, e: int):
        super().__init__()
        tail = model.blocks[model.cfg.first_moe_block:]
        self.blocks = nn.ModuleList(_block_with_mlp(b, OneExpert(b.mlp.experts, e)) for b in tail)
        self.norm, self.head = copy.deepcopy(model.norm), copy.deepcopy(model.head)
        self.head_drop = copy.deepcopy(model.head_drop)

    def forward(self, stream: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        x, _ = run_blocks(self.blocks, stream, gate=gate)  # (B, T, D)
        return MobileVMoE.forward_head(self, self.norm(x))  # the model's own head on this module's copies


def _block_with_mlp(block: nn.Module, mlp: nn.Module) -> nn.Module:
    """A copy of ``block`` (attention and norms) whose MLP is ``mlp``; the original is untouched."""
    assert isinstance(block.mlp, MoEMlp), "the blocks from the first MoE block on are MoE blocks"
    original = block.mlp
    block.mlp = nn.Identity()  # do not deep-copy all E experts
    try:
        new = copy.deepcopy(block)
    finally:
        block.mlp = original
    new.mlp = mlp
    return new


def trunk_and_tails(model: MobileVMoE, example: torch.Tensor, preprocess: nn.Module | None = None
                    ) -> dict[str, tuple[nn.Module, tuple]]:
    """{name: (module, example args)}: ``trunk`` on ``example`` and ``tail_<e>`` on its stream."""
    trunk = Trunk(model, preprocess).eval()
    with torch.no_grad():
        stream, _, gate, _ = trunk(example)
    out = {"trunk": (trunk, (example,))}
    for e in range(model.cfg.num_experts):
        out[f"tail_{e}"] = (ExpertTail(model, e).eval(), (stream, gate))
    return out
