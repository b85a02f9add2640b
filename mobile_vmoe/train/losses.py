"""Losses of Mobile V-MoE training.

total = (1 - distill_weight) * CE(logits, smoothed soft class target)     with a teacher (else 1 x CE)
      + distill_weight * distillation(logits, teacher logits)              soft (KL, tau) or hard (DeiT)
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
    distill: torch.Tensor | None = None

    def as_floats(self) -> dict[str, float]:
        out = {"loss": float(self.total.detach()), "loss_cls": float(self.cls.detach())}
        if self.router is not None:
            out["loss_router"] = float(self.router.detach())
        if self.aux is not None:
            out["loss_aux"] = float(self.aux.detach())
        if self.distill is not None:
            out["loss_distill"] = float(self.distill.detach())
        return out


def distillation_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, kind: str, tau: float) -> torch.Tensor:
    """Student logits (B, N) against a teacher's (B, N).

    soft: tau^2 x KL(softmax(teacher / tau) || softmax(student / tau)), batch mean (Hinton et al.;
    the tau^2 keeps gradient scale independent of tau). hard: CE(student, argmax teacher) (DeiT's
    hard distillation, here on the class head).
    """
    s, t = logits.float(), teacher_logits.float()
    if kind == "hard":
        return F.cross_entropy(s, t.argmax(dim=-1))
    return F.kl_div(F.log_softmax(s / tau, dim=-1), F.log_softmax(t / tau, dim=-1), reduction="batchmean",
                    log_target=True) * tau * tau


@dataclass
class Distill:
    """How a teacher enters the loss: ``kind`` soft | hard, ``weight`` in [0, 1], ``tau`` > 0."""

    teacher_logits: torch.Tensor  # (B, N), no gradient
    kind: str = "soft"
    weight: float = 0.5
    tau: float = 1.0


def mvmoe_loss(logits: torch.Tensor, router_logits: torch.Tensor | None, aux_loss: torch.Tensor | None,
               class_target: torch.Tensor, superclass_target: torch.Tensor | None, *,
               label_smoothing: float, router_weight: float, aux_weight: float,
               distill: Distill | None = None) -> LossParts:
    """The training loss of one batch from the model's outputs (see ``ModelOutput``).

    logits (B, N); router_logits (B, E) or None; aux_loss () or None. class_target (B, N) soft; superclass_target (B, S) soft with S == E, or None (dense model,
    no superclasses, or per-token routing). The router term is computed (and logged) whenever a
    target exists, and enters the total with ``router_weight`` (0 = end-to-end router). With
    ``distill``, the class term becomes (1 - w) x CE + w x the distillation loss.
    """
    # probability targets (B, N); label_smoothing mixes them with uniform: (1 - eps) t + eps / N
    cls = F.cross_entropy(logits.float(), class_target, label_smoothing=label_smoothing)
    total = cls
    router = aux = dist = None
    if distill is not None:
        dist = distillation_loss(logits, distill.teacher_logits, distill.kind, distill.tau)
        total = (1.0 - distill.weight) * cls + distill.weight * dist
    if router_logits is not None and superclass_target is not None:
        router = F.cross_entropy(router_logits.float(), superclass_target)
        if router_weight > 0:
            total = total + router_weight * router
    if aux_loss is not None:  # balancing: for routers that have no superclass target
        aux = aux_loss.float()
        if aux_weight > 0 and superclass_target is None:
            total = total + aux_weight * aux
    return LossParts(total=total, cls=cls, router=router, aux=aux, distill=dist)
