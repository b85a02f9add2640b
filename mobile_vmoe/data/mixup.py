"""MixUp / CutMix (torchvision.transforms.v2) and the superclass targets of mixed images.

A mixed image has a soft class target t (B, N). Its superclass target is exactly
t @ M where M (N, S) is the one-hot class -> superclass matrix: mixing class 1 (superclass 0)
with weight 0.3 and class 4 (superclass 1) with weight 0.7 gives [0.3, 0.7]. Mixing two classes
of the same superclass gives a hard superclass target, as it should.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.transforms import v2


class MixupCutmix:
    """Apply MixUp or CutMix (chosen 50/50 when both are on) to a batch with probability ``prob``.

    __call__(images (B, C, H, W) float, labels (B,) int64) -> (images, soft targets (B, N) float32).
    An alpha of 0 turns that method off; with both off (or when the coin says no) the batch is
    returned unchanged with one-hot targets, so the loss code sees one target format always.
    """

    def __init__(self, num_classes: int, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0, prob: float = 1.0):
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if mixup_alpha < 0 or cutmix_alpha < 0 or not 0.0 <= prob <= 1.0:
            raise ValueError(f"bad mixup settings: mixup_alpha={mixup_alpha}, cutmix_alpha={cutmix_alpha}, prob={prob}")
        self.num_classes = num_classes
        self.prob = prob
        ops = []
        if mixup_alpha > 0:
            ops.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
        if cutmix_alpha > 0:
            ops.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
        self.op = None if not ops else ops[0] if len(ops) == 1 else v2.RandomChoice(ops)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        labels = labels.long()
        if self.op is None or self.prob == 0.0 or (self.prob < 1.0 and torch.rand(()).item() >= self.prob):
            return images, F.one_hot(labels, self.num_classes).to(torch.float32)
        images, targets = self.op(images, labels)  # targets (B, N), rows sum to 1
        return images, targets.to(torch.float32)


def superclass_targets(targets: torch.Tensor, class_to_superclass: torch.Tensor, num_superclasses: int) -> torch.Tensor:
    """Superclass targets (B, S) float from hard labels (B,) or soft class targets (B, N).

    Exact: soft @ one_hot(class_to_superclass) (N, S). Hard labels give one-hot superclasses.
    """
    c2s = class_to_superclass.long().to(targets.device)
    if targets.ndim == 1:
        return F.one_hot(c2s[targets.long()], num_superclasses).to(torch.float32)
    if targets.ndim != 2 or targets.shape[1] != c2s.shape[0]:
        raise ValueError(f"targets {tuple(targets.shape)} do not match {c2s.shape[0]} classes")
    onehot = F.one_hot(c2s, num_superclasses).to(targets.dtype)  # (N, S)
    return targets @ onehot  # (B, S)
