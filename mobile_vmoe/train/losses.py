"""Losses of Mobile V-MoE training.

total = CE(logits, smoothed soft class target)
      + router_weight * CE(router_logits, superclass target)      per-image MoE with superclasses
      + aux_weight * (importance + load losses)                      per-token (V-MoE) routing, and a
                                                                     per-image router without superclasses

Targets are always soft (B, N) rows that sum to 1: hard labels become one-hot, MixUp/CutMix give
mixtures, and the superclass target of a mixed image is exactly ``soft @ onehot(class_to_superclass)``
(mobile_vmoe.data.superclass_targets), so ``F.cross_entropy`` with probability targets covers every
case. Logits are cast to fp32 first, so the loss is fp32 under bf16 autocast.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class LossParts:
    total: torch.Tensor
    cls: torch.Tensor
    router: torch.Tensor | None = None
    aux: torch.Tensor | None = None

    def as_floats(self) -> dict[str, float]:
        out = {"loss": float(self.total.detach()), "loss_cls": float(self.cls.detach())}
        if self.router is not None:
            out["loss_router"] = float(self.router.detach())
        if self.aux is not None:
            out["loss_aux"] = float(self.aux.detach())
        return out


def mvmoe_loss(logits: torch.Tensor, router_logits: torch.Tensor | None, aux_loss: torch.Tensor | None,
               class_target: torch.Tensor, superclass_target: torch.Tensor | None, *,
               label_smoothing: float, router_weight: float, aux_weight: float) -> LossParts:
    """The training loss of one batch from the model's outputs (see ``ModelOutput``).

    logits (B, N); router_logits (B, E) or None; aux_loss () or None. class_target (B, N) soft; superclass_target (B, S) soft with S == E, or None (dense model,
    no superclasses, or per-token routing). The router term is computed (and logged) whenever a
    target exists, and enters the total with ``router_weight`` (0 = end-to-end router).
    """
    # probability targets (B, N); label_smoothing mixes them with uniform: (1 - eps) t + eps / N
    cls = F.cross_entropy(logits.float(), class_target, label_smoothing=label_smoothing)
    total = cls
    router = aux = None
    if router_logits is not None and superclass_target is not None:
        router = F.cross_entropy(router_logits.float(), superclass_target)
        if router_weight > 0:
            total = total + router_weight * router
    if aux_loss is not None:  # balancing: for routers that have no superclass target
        aux = aux_loss.float()
        if aux_weight > 0 and superclass_target is None:
            total = total + aux_weight * aux
    return LossParts(total=total, cls=cls, router=router, aux=aux)
