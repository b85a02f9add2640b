"""Sample images of the ``graded`` benchmark as one small PNG grid (docs/img/graded_samples.png).

    uv run python bench/graded_samples.py [--levels 0 0.5 1] [--out docs/img/graded_samples.png]

Rows: the 10 planted superclasses. Columns, per nuisance level: the first 4 classes of the
superclass (one image each, seed 0), so a row shows how classes of one superclass differ by a few
attributes and how the nuisances grow with the level. Pixels are drawn 2x, nearest neighbour, in
a 64-colour palette (the file stays small; the training images are not quantised).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from PIL import Image

from mobile_vmoe.data import graded

PER_LEVEL = 4
ZOOM = 2
GAP = 4  # pixels between levels


def grid(levels: list[float], num_classes: int = 500, num_superclasses: int = 10, seed: int = 0) -> torch.Tensor:
    """(3, H, W) uint8: superclass rows, PER_LEVEL classes per level."""
    _, attrs = graded.structure(num_classes, num_superclasses)
    S, n = num_superclasses, 32
    blocks = []
    for level in levels:
        labels = torch.tensor([s + S * j for s in range(S) for j in range(PER_LEVEL)])  # class j of superclass s
        imgs = graded.draw(attrs[labels], level, n, torch.Generator().manual_seed(seed))  # (S * PER_LEVEL, 3, n, n)
        rows = imgs.view(S, PER_LEVEL, 3, n, n).permute(2, 0, 3, 1, 4).reshape(3, S * n, PER_LEVEL * n)
        blocks += [rows, torch.ones(3, S * n, GAP)]
    img = torch.cat(blocks[:-1], dim=2)
    img = img.repeat_interleave(ZOOM, 1).repeat_interleave(ZOOM, 2)
    return (img * 255).round().to(torch.uint8)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--levels", type=float, nargs="+", default=[0.0, 0.5, 1.0])
    ap.add_argument("--out", type=Path, default=Path("docs/img/graded_samples.png"))
    a = ap.parse_args(argv)
    arr = grid(a.levels).permute(1, 2, 0).numpy()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).quantize(64).save(a.out, optimize=True)  # 64 colours: a small file for the docs
    print(f"{a.out}: {arr.shape[1]}x{arr.shape[0]} px, levels {a.levels}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
