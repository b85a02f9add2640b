"""AdamW with the usual ViT parameter groups, and a per-step warmup + cosine learning rate.

No weight decay on 1-D parameters (LayerNorm weights and biases, linear biases), on the experts'
stacked biases b1/b2 (2-D only because they are stacked per expert), on the position embedding
and on the class token (DeiT / timm ``no_weight_decay``).
"""

from __future__ import annotations

import math

import torch

NO_DECAY_NAMES = ("pos_embed", "cls_token")
NO_DECAY_SUFFIXES = (".b1", ".b2", ".bias")


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name in NO_DECAY_NAMES or name.endswith(NO_DECAY_SUFFIXES):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.999)) -> torch.optim.AdamW:
    fused = all(p.is_cuda for p in model.parameters())
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, fused=fused or None)


def lr_factor(step: int, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """Multiplier of the peak lr at optimizer step ``step`` (0-based).

    Linear warmup from 1/warmup to 1 over ``warmup_steps`` steps, then a cosine from 1 down to
    ``min_ratio`` at ``total_steps``. E.g. warmup 2, total 6: steps 0..5 -> 0.5, 1.0, then the
    cosine over 4 steps 1.0, 0.854, 0.5, 0.146 (min_ratio 0).
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int,
                    min_ratio: float) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR stepped once per optimizer step; its state_dict is only the step counter."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, warmup_steps, min_ratio))
