"""Losses of Mobile V-MoE training.

total = CE(logits, smoothed soft class target)
      + router_weight * CE(router_logits, superclass target)      per-image MoE with superclasses
      + aux_weight * (importance + load losses)                      per-token (V-MoE) routing

Targets are always soft (B, N) rows that sum to 1: hard labels become one-hot, MixUp/CutMix give
mixtures, and the superclass target of a mixed image is exactly ``soft @ onehot(class_to_superclass)``
(mobile_vmoe.data.superclass_targets), so one cross-entropy covers every case.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """Mean over the batch of -sum_c t_c log softmax(logits)_c.

    logits (B, N); target (B, N) rows summing to 1. ``smoothing`` eps mixes the target with the
    uniform distribution, t <- (1 - eps) t + eps / N (the same as F.cross_entropy's label_smoothing
    for one-hot targets).
    """
    n = logits.shape[-1]
    if smoothing > 0:
        target = target * (1.0 - smoothing) + smoothing / n
    logp = F.log_softmax(logits.float(), dim=-1)  # (B, N), fp32 even under autocast
    return -(target * logp).sum(dim=-1).mean()


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


def mvmoe_loss(out, class_target: torch.Tensor, superclass_target: torch.Tensor | None, *,
               label_smoothing: float, router_weight: float, aux_weight: float) -> LossParts:
    """The training loss of one batch from a ``ModelOutput``.

    class_target (B, N) soft; superclass_target (B, S) soft with S == E, or None (dense model,
    no superclasses, or per-token routing). The router term is computed (and logged) whenever a
    target exists, and enters the total with ``router_weight`` (0 = end-to-end router).
    """
    cls = soft_cross_entropy(out.logits, class_target, label_smoothing)
    total = cls
    router = aux = None
    if out.router_logits is not None and superclass_target is not None:
        router = soft_cross_entropy(out.router_logits, superclass_target)
        if router_weight > 0:
            total = total + router_weight * router
    if out.aux_loss is not None:
        aux = out.aux_loss.float()
        if aux_weight > 0:
            total = total + aux_weight * aux
    return LossParts(total=total, cls=cls, router=router, aux=aux)
