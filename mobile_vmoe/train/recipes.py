"""Named ImageNet-1k recipes for the paper's variants (DeiT-style training).

Every recipe is a model preset plus TrainConfig values, and opens with how to launch it and the
top-1 the paper reports (Daxberger et al. 2023, arXiv 2309.04354, Table/Fig. "dense vs MoE at equal
FLOPs"). None of them has been run here: no ImageNet and no GPU cluster on the build machine. The
code path they use (torchrun, DDP, bf16 autocast, DeiT augmentation, MixUp/CutMix, EMA) is the
one the tests run on generated data with 2 gloo processes.

The shared DeiT recipe (Touvron et al. 2021): AdamW, lr 5e-4 per 512 images (scaled at run time to
the global batch, batch_size x grad_accum: 1e-3 at the recipes' 1024), weight decay
0.05, 300 epochs, 5 warmup epochs, cosine to 1e-5, label smoothing 0.1, RandAugment(2, 9),
MixUp 0.8 / CutMix 1.0, random erasing 0.25, drop path (0.1 for the 12x192 models, 0 for the
small ones, which underfit rather than overfit), gradient clipping off, EMA 0.99996 per step.
The MoE recipes add the router loss weight 0.3 and the superclass stage (dense twin first).

Launch (``--no-python`` runs the ``mvmoe`` console script on every process)::

    # one node, 8 GPUs
    torchrun --standalone --nproc_per_node 8 --no-python mvmoe train --recipe NAME --data /data/imagenet
    # two nodes, 8 GPUs each: run on every node, NODE_RANK = 0 and 1
    torchrun --nnodes 2 --nproc_per_node 8 --node_rank $NODE_RANK --rdzv_backend c10d \
        --rdzv_endpoint $HEAD_NODE:29500 --no-python mvmoe train --recipe NAME --data /data/imagenet --out runs/NAME
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

from ..errors import MvmoeError


@dataclass(frozen=True)
class Recipe:
    name: str
    model: str  # preset name
    train: dict[str, Any]  # TrainConfig values
    model_overrides: dict[str, Any] = field(default_factory=dict)
    paper_top1: float | None = None  # ImageNet-1k top-1 reported by the paper
    doc: str = ""


def deit(global_batch: int = 1024, drop_path: float = 0.0, moe: bool = False) -> tuple[dict, dict]:
    """The DeiT training values for ``global_batch``; lr is per 512 images (the run scales it to
    the global batch: 1e-3 at 1024)."""
    train = dict(epochs=300, batch_size=global_batch, lr=5e-4, min_lr=1e-5, warmup_epochs=5.0,
                 weight_decay=0.05, label_smoothing=0.1, clip_grad=0.0, ema_decay=0.99996, mixup=0.8, cutmix=1.0,
                 mix_prob=1.0, augment="deit", amp="auto", workers=10, dense_epochs=300, log_every=50)
    train["repeated_aug"] = 3  # DeiT's repeated augmentation: each image 3 times an epoch, on different ranks
    if moe:
        train["router_weight"] = 0.3
    return train, {"drop_path": drop_path}


# (depth x width, drop path, paper top-1 of the dense twin, of the MoE, what the paper says).
# 12x192 is the "ViT-Tiny" scale (0.31 GMACs); 6x96 the ~54M-FLOP model (51M MACs here); 6x64 a
# point read off the paper's figure only (26M MACs), so no number is claimed for it.
_TABLE = (
    ("12x192", 0.1, 59.51, 62.90, "+3.39 for the MoE"),
    ("6x96", 0.0, 36.64, 41.30, "+4.66 for the MoE"),
    ("6x64", 0.0, None, None, "figure only, no table entry: no number claimed"),
)


def _build_recipes() -> dict[str, Recipe]:
    recipes = {}
    for size, drop_path, dense_top1, moe_top1, note in _TABLE:
        for moe in (True, False):
            kind = "vmoe" if moe else "vit"
            name = f"imagenet-{kind}-{size}-p32"
            train, model = deit(1024, drop_path=drop_path, moe=moe)
            what = "Mobile V-MoE (E=10, k=1, last 2 blocks MoE; runs dense twin, clustering, MoE)" if moe else "dense ViT"
            paper = moe_top1 if moe else dense_top1
            doc = (f"{what} {size} patch 32.\n\n"
                   f"torchrun --standalone --nproc_per_node 8 --no-python mvmoe train --recipe {name} --data /data/imagenet\n"
                   f"Paper: {f'{paper:.2f}% top-1' if paper is not None else 'no number'} ({note}).")
            recipes[name] = Recipe(name, f"{kind}-{size}-p32", train, model, paper, doc)
    return recipes


# Sparse upcycling (Komatsuzaki et al., ICLR 2023): their upcycled ViTs beat the dense model they
# started from with about 50 % of its pretraining compute more; DeiT-Tiny trained 300 epochs, so
# the MoE stage trains 150. The dense stage is the --init weights themselves (dense_stage=init):
# their confusions on the train holdout give the superclasses, then the MoE's experts are copies
# of their MLPs. The DeiT values are kept (lr not tuned for continued training).
UPCYCLE_EPOCHS = 150


def _upcycle_recipe() -> Recipe:
    name = "imagenet-vmoe-12x192-p16-upcycle"
    train, model = deit(1024, drop_path=0.1, moe=True)
    train.update(epochs=UPCYCLE_EPOCHS, dense_stage="init", moe_init="upcycle")
    doc = ("Mobile V-MoE 12x192 patch 16 (DeiT-Tiny's shape, E=10, k=1) upcycled from DeiT-Tiny weights:\n"
           "superclasses from their confusions, experts = copies of their MLPs, 150 epochs (50 % of DeiT's 300).\n\n"
           f"torchrun --standalone --nproc_per_node 8 --no-python mvmoe train --recipe {name} "
           "--init deit_tiny_patch16_224.pth --data /data/imagenet\n"
           "Paper: no number (the Mobile V-MoE paper trains from scratch at patch 32).")
    return Recipe(name, "vmoe-12x192-p16", train, model, None, doc)


_RECIPES = {**_build_recipes(), "imagenet-vmoe-12x192-p16-upcycle": _upcycle_recipe()}


def list_recipes() -> list[str]:
    return list(_RECIPES)


def get_recipe(name: str) -> Recipe:
    if name not in _RECIPES:
        close = difflib.get_close_matches(name, _RECIPES, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(_RECIPES)}"
        raise MvmoeError(f"unknown recipe {name!r}{hint}")
    return _RECIPES[name]
