"""Named ImageNet-1k recipes for the paper's variants (DeiT-style training).

Every recipe is a model preset plus TrainConfig values, and opens with how to launch it and the
top-1 the paper reports (Daxberger et al. 2023, arXiv 2309.04354, Table/Fig. "dense vs MoE at equal
FLOPs"). None of them has been run here: no ImageNet and no GPU cluster on the build machine. The
code path they use (torchrun, DDP, bf16 autocast, DeiT augmentation, MixUp/CutMix, EMA) is the
one the tests run on generated data with 2 gloo processes.

The shared DeiT recipe (Touvron et al. 2021): AdamW, lr 5e-4 x global_batch / 512, weight decay
0.05, 300 epochs, 5 warmup epochs, cosine to 1e-5, label smoothing 0.1, RandAugment(2, 9),
MixUp 0.8 / CutMix 1.0, random erasing 0.25, drop path (0.1 for the 12x192 models, 0 for the
small ones, which underfit rather than overfit), gradient clipping off, EMA 0.99996 per step.
The MoE recipes add the router loss weight 0.3 and the superclass stage (dense twin first).

Launch (each recipe's docstring has its own line)::

    # one node, 8 GPUs
    torchrun --standalone --nproc_per_node 8 -m mobile_vmoe.train --recipe NAME --data /data/imagenet
    # two nodes, 8 GPUs each: run on every node, NODE_RANK = 0 and 1
    torchrun --nnodes 2 --nproc_per_node 8 --node_rank $NODE_RANK --rdzv_backend c10d \
        --rdzv_endpoint $HEAD_NODE:29500 -m mobile_vmoe.train --recipe NAME --data /data/imagenet --out runs/NAME
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import MvmoeError


@dataclass(frozen=True)
class Recipe:
    name: str
    model: str  # preset name
    train: dict[str, Any]  # TrainConfig values
    model_overrides: dict[str, Any] = field(default_factory=dict)
    paper_top1: float | None = None  # ImageNet-1k top-1 reported by the paper
    doc: str = ""


_RECIPES: dict[str, Callable[[], Recipe]] = {}


def recipe(fn: Callable[[], Recipe]) -> Callable[[], Recipe]:
    _RECIPES[fn.__name__.replace("_", "-")] = fn
    return fn


def deit(global_batch: int = 1024, drop_path: float = 0.0, moe: bool = False) -> tuple[dict, dict]:
    """The DeiT training values for ``global_batch`` (lr scaled linearly from 5e-4 at 512)."""
    train = dict(epochs=300, batch_size=global_batch, lr=5e-4 * global_batch / 512, min_lr=1e-5, warmup_epochs=5.0,
                 weight_decay=0.05, label_smoothing=0.1, clip_grad=0.0, ema_decay=0.99996, mixup=0.8, cutmix=1.0,
                 mix_prob=1.0, augment="deit", amp="auto", workers=10, dense_epochs=300, log_every=50)
    if moe:
        train["router_weight"] = 0.3
    return train, {"drop_path": drop_path}


@recipe
def imagenet_vmoe_12x192_p32() -> Recipe:
    """Mobile V-MoE 12x192 patch 32, E=10, k=1, last 2 blocks MoE ("ViT-Tiny" scale, 0.31 GMACs).

    torchrun --standalone --nproc_per_node 8 -m mobile_vmoe.train --recipe imagenet-vmoe-12x192-p32 --data /data/imagenet
    Paper: 62.90% top-1 (dense twin 59.51%, +3.39). Runs the dense twin, clustering and MoE stages.
    """
    train, model = deit(1024, drop_path=0.1, moe=True)
    return Recipe("imagenet-vmoe-12x192-p32", "vmoe-12x192-p32", train, model, 62.90, imagenet_vmoe_12x192_p32.__doc__)


@recipe
def imagenet_vit_12x192_p32() -> Recipe:
    """Dense ViT 12x192 patch 32, the twin of imagenet-vmoe-12x192-p32 (0.31 GMACs).

    torchrun --standalone --nproc_per_node 8 -m mobile_vmoe.train --recipe imagenet-vit-12x192-p32 --data /data/imagenet
    Paper: 59.51% top-1.
    """
    train, model = deit(1024, drop_path=0.1)
    return Recipe("imagenet-vit-12x192-p32", "vit-12x192-p32", train, model, 59.51, imagenet_vit_12x192_p32.__doc__)


@recipe
def imagenet_vmoe_6x96_p32() -> Recipe:
    """Mobile V-MoE 6x96 patch 32, E=10, k=1: the paper's smallest (~54M FLOPs) model (51M MACs here).

    torchrun --standalone --nproc_per_node 8 -m mobile_vmoe.train --recipe imagenet-vmoe-6x96-p32 --data /data/imagenet
    Paper: 41.30% top-1 (dense twin 36.64%, +4.66).
    """
    train, model = deit(1024, moe=True)
    return Recipe("imagenet-vmoe-6x96-p32", "vmoe-6x96-p32", train, model, 41.30, imagenet_vmoe_6x96_p32.__doc__)


@recipe
def imagenet_vit_6x96_p32() -> Recipe:
    """Dense ViT 6x96 patch 32, the twin of imagenet-vmoe-6x96-p32 (51M MACs).

    torchrun --standalone --nproc_per_node 8 -m mobile_vmoe.train --recipe imagenet-vit-6x96-p32 --data /data/imagenet
    Paper: 36.64% top-1.
    """
    train, model = deit(1024)
    return Recipe("imagenet-vit-6x96-p32", "vit-6x96-p32", train, model, 36.64, imagenet_vit_6x96_p32.__doc__)


@recipe
def imagenet_vmoe_6x64_p32() -> Recipe:
    """Mobile V-MoE 6x64 patch 32, E=10, k=1 (26M MACs), a point on the paper's FLOPs-vs-accuracy curve.

    torchrun --standalone --nproc_per_node 8 -m mobile_vmoe.train --recipe imagenet-vmoe-6x64-p32 --data /data/imagenet
    Paper: read off its figure only (no table entry), so no number is claimed here.
    """
    train, model = deit(1024, moe=True)
    return Recipe("imagenet-vmoe-6x64-p32", "vmoe-6x64-p32", train, model, None, imagenet_vmoe_6x64_p32.__doc__)


@recipe
def imagenet_vit_6x64_p32() -> Recipe:
    """Dense ViT 6x64 patch 32, the twin of imagenet-vmoe-6x64-p32 (26M MACs).

    torchrun --standalone --nproc_per_node 8 -m mobile_vmoe.train --recipe imagenet-vit-6x64-p32 --data /data/imagenet
    Paper: figure only, no number claimed here.
    """
    train, model = deit(1024)
    return Recipe("imagenet-vit-6x64-p32", "vit-6x64-p32", train, model, None, imagenet_vit_6x64_p32.__doc__)


def list_recipes() -> list[str]:
    return list(_RECIPES)


def get_recipe(name: str) -> Recipe:
    if name not in _RECIPES:
        import difflib

        close = difflib.get_close_matches(name, _RECIPES, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(_RECIPES)}"
        raise MvmoeError(f"unknown recipe {name!r}{hint}")
    return _RECIPES[name]()
