"""Run by tests/test_scale.py under ``torchrun --nproc_per_node 2`` (gloo): the sharded evaluation
and confusion matrix of a fixed tiny model, written by rank 0 to the JSON file named in argv[1].

``case()`` builds the same model and data in the test process, for the single-process reference.
"""

from __future__ import annotations

import functools
import json
import sys

import torch
from torch.utils.data import DataLoader, TensorDataset

from mobile_vmoe.config import ModelConfig
from mobile_vmoe.models import MobileVMoE

NUM_CLASSES, NUM_IMAGES = 6, 21  # 21: an odd count, so the two shards differ in size (11 and 10)


def case():
    """-> (model, dataset, class_to_superclass): a per-image MoE with weights large enough that
    its predictions and routes vary, 21 random 16-px images."""
    torch.manual_seed(0)
    cfg = ModelConfig(name="t", img_size=16, patch_size=4, num_classes=NUM_CLASSES, depth=2, width=32, heads=2,
                      mlp_ratio=2.0, num_experts=3, moe_blocks=1, router_input="mean")
    model = MobileVMoE(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(std=0.3)
        model.router.proj.bias.zero_()  # so that the image, not the bias, picks the expert
        model.router.proj.weight.normal_(std=1.0)
    g = torch.Generator().manual_seed(1)
    images = torch.randn(NUM_IMAGES, 3, 16, 16, generator=g) + 3 * torch.randn(NUM_IMAGES, 3, 1, 1, generator=g)
    labels = torch.randint(0, NUM_CLASSES, (NUM_IMAGES,), generator=g)
    c2s = torch.tensor([0, 0, 1, 1, 2, 2])
    return model, TensorDataset(images, labels), c2s


def run(model, dataset, c2s, info=None) -> dict:
    """Evaluation metrics and confusion matrix, sharded when ``info`` has several ranks."""
    from mobile_vmoe.data.superclasses import confusion_matrix
    from mobile_vmoe.train.distributed import DistInfo, all_reduce_sum, shard
    from mobile_vmoe.train.evaluate import evaluate

    info = info or DistInfo()
    reduce = functools.partial(all_reduce_sum, info=info)
    loader = DataLoader(shard(dataset, info), batch_size=4)
    metrics = evaluate(model, loader, class_to_superclass=c2s, reduce=reduce)
    conf = confusion_matrix(model, loader, NUM_CLASSES, reduce=reduce)
    return {"metrics": metrics, "confusion": conf.tolist(), "shard": len(loader.dataset)}


def main() -> None:
    from mobile_vmoe.train.distributed import cleanup, setup_distributed

    torch.set_num_threads(1)
    info = setup_distributed(timeout_min=2.0)
    out = run(*case(), info=info)
    shards = [None] * info.world_size
    torch.distributed.all_gather_object(shards, out["shard"])
    if info.is_main:
        with open(sys.argv[1], "w") as f:
            json.dump({**out, "shards": shards, "world_size": info.world_size}, f)
    cleanup(info)


if __name__ == "__main__":
    main()
