"""Evaluation: top-1 / top-5, router superclass top-1 and expert usage (every MoE model).

Distributed: every rank evaluates its shard (``distributed.shard``: items rank, rank + world, ...)
and the integer counts are summed over ranks (``reduce``), so the result is the single-process one
exactly: each image is counted once, and per-image models compute each image's output alone.
(Per-token routing with buffers shared by the whole batch depends on which images share a batch,
in one process as in several.)"""

from __future__ import annotations

import contextlib
import math

import torch

from ..errors import MvmoeError


class ExpertUsage:
    """How often each expert is used on the evaluation set, so a collapsed router shows.

    Per-image routing counts images per expert (each of an image's k choices counts once) and,
    given ``class_to_superclass`` (N,), the (S, E) matrix of images of superclass s whose top expert
    is e (superclass i is trained towards expert i, so a good router is diagonal). Per-token
    routing counts the tokens each expert processed (kept choices, summed over the MoE blocks) and
    the share of token choices dropped for lack of capacity.
    """

    def __init__(self, cfg, class_to_superclass: torch.Tensor | None = None):
        self.cfg = cfg
        E = cfg.num_experts
        self.counts = torch.zeros(E, dtype=torch.int64)  # (E,)
        self.c2s = class_to_superclass.long().cpu() if class_to_superclass is not None else None
        self.matrix = None
        if cfg.is_per_image and self.c2s is not None:
            self.matrix = torch.zeros(int(self.c2s.max()) + 1, E, dtype=torch.int64)  # (S, E)
        self.router_correct = 0
        self.choices = self.dropped = 0

    def pack(self) -> torch.Tensor:
        """Every count as one int64 vector, to sum over ranks (``unpack`` reads it back)."""
        matrix = self.matrix.flatten() if self.matrix is not None else torch.zeros(0, dtype=torch.int64)
        return torch.cat([torch.tensor([self.router_correct, self.choices, self.dropped]), self.counts, matrix])

    def unpack(self, v: torch.Tensor) -> None:
        E = self.cfg.num_experts
        self.router_correct, self.choices, self.dropped = (int(x) for x in v[:3])
        self.counts = v[3:3 + E].clone()
        if self.matrix is not None:
            self.matrix = v[3 + E:].view_as(self.matrix).clone()

    def add(self, out, labels: torch.Tensor) -> None:
        E = self.cfg.num_experts
        if out.expert_index is not None:  # per-image
            index = out.expert_index.cpu()  # (B, k)
            self.counts += torch.bincount(index.flatten(), minlength=E)
            if self.matrix is not None:
                sc = self.c2s[labels]  # (B,)
                self.router_correct += int((out.router_logits.float().argmax(dim=-1).cpu() == sc).sum())
                self.matrix += torch.bincount(sc * E + index[:, 0], minlength=self.matrix.numel()).view_as(self.matrix)
        for r in out.token_routes:  # per-token, one route per MoE block
            kept = r.kept.cpu()  # (G, N, k)
            self.counts += torch.bincount(r.index.cpu()[kept], minlength=E)
            self.choices += kept.numel()
            self.dropped += int((~kept).sum())

    def summary(self, images: int) -> dict:
        total = int(self.counts.sum())
        p = self.counts.double() / max(total, 1)
        entropy = float(-(p[p > 0] * p[p > 0].log()).sum())  # nats
        out = {"expert_usage_unit": "images" if self.cfg.is_per_image else "tokens",
               "expert_counts": self.counts.tolist(), "expert_entropy": entropy,
               "expert_entropy_max": math.log(self.cfg.num_experts),
               "expert_usage": self.matrix.tolist() if self.matrix is not None else None,
               "router_superclass_top1": 100.0 * self.router_correct / images if self.matrix is not None else None}
        if not self.cfg.is_per_image:
            out["token_drop_fraction"] = self.dropped / max(self.choices, 1)
        return out


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, *, class_to_superclass: torch.Tensor | None = None,
             device: torch.device | str = "cpu", amp_dtype: torch.dtype | None = None, reduce=None) -> dict:
    """Metrics of ``model`` (a MobileVMoE, not DDP-wrapped) on ``loader``.

    top1/top5 in percent; top5 is None (n/a) with 5 classes or fewer, where it is 100 % by construction.
    MoE models add expert usage (``ExpertUsage``);
    per-image MoE with ``class_to_superclass`` (N,) adds ``router_superclass_top1``, the percentage
    of images whose router argmax is the superclass of their true class. reduce: sums an int64
    tensor over ranks (``functools.partial(distributed.all_reduce_sum, info=info)``) when ``loader``
    holds this rank's shard; every rank then gets the metrics of the whole set.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    cfg = model.cfg
    k5 = min(5, cfg.num_classes)
    n = correct1 = correct5 = 0
    usage = ExpertUsage(cfg, class_to_superclass) if cfg.is_moe else None
    autocast = (torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext())
    for images, labels in loader:
        images = images.to(device, non_blocking=True)
        labels = torch.as_tensor(labels).long()
        with autocast:
            out = model.forward_with_routing(images)
        top = out.logits.float().cpu().topk(k5, dim=-1).indices  # (B, k5)
        correct1 += int((top[:, 0] == labels).sum())
        correct5 += int((top == labels[:, None]).any(dim=-1).sum())
        n += len(labels)
        if usage is not None:
            usage.add(out, labels)
    model.train(was_training)
    if reduce is not None:
        counts = reduce(torch.cat([torch.tensor([n, correct1, correct5]),
                                   usage.pack() if usage is not None else torch.zeros(0, dtype=torch.int64)]))
        n, correct1, correct5 = (int(x) for x in counts[:3])
        if usage is not None:
            usage.unpack(counts[3:])
    if n == 0:
        raise MvmoeError("evaluation set is empty")
    top5 = 100.0 * correct5 / n if cfg.num_classes > 5 else None  # every class is in the top 5: no information
    metrics = {"top1": 100.0 * correct1 / n, "top5": top5, "router_superclass_top1": None,
               "expert_usage": None, "images": n}
    return {**metrics, **(usage.summary(n) if usage is not None else {})}
