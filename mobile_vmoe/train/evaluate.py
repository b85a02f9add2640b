"""Evaluation: top-1 / top-5, router superclass top-1 and expert usage per superclass."""

from __future__ import annotations

import contextlib

import torch

from ..errors import MvmoeError


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, *, class_to_superclass: torch.Tensor | None = None,
             device: torch.device | str = "cpu", amp_dtype: torch.dtype | None = None) -> dict:
    """Metrics of ``model`` (a MobileVMoE, not DDP-wrapped) on ``loader``.

    top1/top5 in percent (top5 = top-min(5, N)). Per-image MoE only: ``router_superclass_top1``
    is the percentage of images whose router argmax is the superclass of their true class (needs
    ``class_to_superclass`` (N,)), and ``expert_usage`` the (S, E) counts of images of superclass s
    whose top expert is e (superclass i is trained towards expert i, so a good router is diagonal).
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    cfg = model.cfg
    per_image = cfg.is_per_image
    k5 = min(5, cfg.num_classes)
    n = correct1 = correct5 = router_correct = 0
    usage = None
    if per_image and class_to_superclass is not None:
        c2s = class_to_superclass.long().cpu()
        usage = torch.zeros(int(c2s.max()) + 1, cfg.num_experts, dtype=torch.int64)
    autocast = (torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext())
    for images, labels in loader:
        images = images.to(device, non_blocking=True)
        labels = torch.as_tensor(labels).long()
        with autocast:
            out = model.forward_with_routing(images)
        logits = out.logits.float().cpu()  # (B, N)
        top = logits.topk(k5, dim=-1).indices  # (B, k5)
        correct1 += int((top[:, 0] == labels).sum())
        correct5 += int((top == labels[:, None]).any(dim=-1).sum())
        n += len(labels)
        if usage is not None:
            sc = c2s[labels]  # (B,)
            router_correct += int((out.router_logits.float().argmax(dim=-1).cpu() == sc).sum())
            expert = out.expert_index[:, 0].cpu()  # (B,) top expert
            usage += torch.bincount(sc * cfg.num_experts + expert, minlength=usage.numel()).view_as(usage)
    model.train(was_training)
    if n == 0:
        raise MvmoeError("evaluation set is empty")
    return {
        "top1": 100.0 * correct1 / n,
        "top5": 100.0 * correct5 / n,
        "router_superclass_top1": 100.0 * router_correct / n if usage is not None else None,
        "expert_usage": usage.tolist() if usage is not None else None,
        "images": n,
    }
