"""Resume state that must survive torch.load(weights_only=True): RNG states as tensors and ints.

Python's ``random.getstate()`` is a tuple of ints (allowed as is); numpy's MT19937 state holds an
ndarray, stored here as an int64 tensor; torch's CPU (and CUDA) states are uint8 tensors.
"""

from __future__ import annotations

import random

import numpy as np
import torch


def capture_rng() -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The RNG seed of one epoch on one process: augmentation, mixup, drop path, router noise.

    Reseeding at each epoch start makes an epoch's randomness independent of what ran before, so a
    run resumed at an epoch boundary draws exactly what the uninterrupted run drew.
    """
    return (seed * 1_000_003 + epoch * 10_007 + rank) % 2**63
