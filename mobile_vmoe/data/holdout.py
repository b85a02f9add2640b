"""A stratified holdout carved from the training split, seen with the eval transform.

The superclass stage fits its confusion matrix on this holdout, never on the evaluation split that
top-1 is reported on (as big_vision's "minival" is carved from ImageNet's train). The dense model
of that stage trains on the rest of the training split, so the holdout is unseen by it too.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
from torch.utils.data import Subset

from ..errors import MvmoeError
from .bundle import DataBundle

HOLDOUT_SPLIT = "train-holdout"  # what superclasses.json's "fit_on" names


def holdout_indices(labels, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split of train indices -> (rest, holdout), both sorted. ``fraction`` of every
    class (rounded by sklearn, at least one image per class) goes to the holdout."""
    from sklearn.model_selection import train_test_split

    labels = np.asarray(labels)
    n_classes = len(np.unique(labels))
    n_hold = max(int(np.ceil(fraction * len(labels))), n_classes)
    if not 0 < fraction < 1 or n_hold >= len(labels) - n_classes + 1:
        raise MvmoeError(f"superclass_holdout={fraction}: need 0 < fraction < 1 leaving images of every class on "
                         f"both sides ({len(labels)} training images, {n_classes} classes)")
    idx = np.arange(len(labels))
    try:
        rest, hold = train_test_split(idx, test_size=n_hold, random_state=seed, stratify=labels)
    except ValueError as e:  # a class with a single image cannot be stratified
        raise MvmoeError(f"cannot carve a stratified superclass holdout: {e}") from None
    return np.sort(rest), np.sort(hold)


def split_for_superclasses(bundle: DataBundle, fraction: float, seed: int) -> tuple[DataBundle, Subset]:
    """-> (the bundle with ``train`` = the rest, the holdout dataset with the eval transform)."""
    rest, hold = holdout_indices(bundle.train.labels, fraction, seed)
    train_as_eval = copy.copy(bundle.train)  # same images, the deterministic eval transform
    train_as_eval.transform = bundle.val.transform
    rest_bundle = dataclasses.replace(bundle, train=Subset(bundle.train, rest.tolist()))
    return rest_bundle, Subset(train_as_eval, hold.tolist())
