"""Exponential moving average of the weights, with torch.optim.swa_utils.

``use_buffers=True`` averages buffers too, so the EMA model is a complete model for evaluation.
Checkpoints keep the EMA as a plain state_dict of the inner model (what ``model_from_checkpoint``
loads) plus the number of updates.
"""

from __future__ import annotations

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


def build_ema(model: torch.nn.Module, decay: float) -> AveragedModel | None:
    """An AveragedModel of ``model`` (the unwrapped one, not DDP) or None when decay == 0."""
    if decay <= 0:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def ema_state(ema: AveragedModel) -> tuple[dict, int]:
    return ema.module.state_dict(), int(ema.n_averaged)


def load_ema_state(ema: AveragedModel, state: dict, n_averaged: int) -> None:
    ema.module.load_state_dict(state)
    ema.n_averaged.fill_(n_averaged)
