"""Superclasses from a trained dense model's confusions (the Mobile V-MoE recipe).

1. ``confusion_matrix``: counts (N, N) on held-out data, rows = true class; or, ``mode="soft"``,
   the softmax mass each true class puts on every class (N, N) float: with few held-out images and
   a model that is often right, counts leave most class pairs at zero (a sparse graph that the
   clustering must cut at random), while every image spreads some mass over its near classes.
2. ``cluster_superclasses``: row-normalise (so big classes do not dominate), drop the diagonal
   (correct predictions say nothing about which classes are alike), symmetrise
   A = (C + C.T) / 2, add a small uniform affinity so the graph is connected even when a class
   is never confused. Then, by default (``method="balanced"``), the spectral embedding of that
   graph (sklearn's spectral_embedding, as SpectralClustering uses), k-means centres in it, and a
   size-balanced assignment of classes to centres (scipy's linear_sum_assignment): superclass
   sizes differ by at most one, so the experts they train get balanced load. ``method="spectral"``
   is plain SpectralClustering(affinity="precomputed"), whose clusters may be of any size.
   Cluster ids are renumbered by their smallest class id, so the result is canonical.
3. ``superclass_names``: "sc0: 3/5/8", the members most confused with the rest of their group.
4. ``save_superclasses`` / ``load_superclasses``: the JSON file the trainer and exporter read::

    {"num_superclasses": S, "classes": [...], "class_to_superclass": [...], "names": [...],
     "members": [[...], ...], "sizes": [...], "method": "balanced", "source": "...",
     "fit_on": {"split": "train-holdout", "images": N}}
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import torch

from ..errors import MvmoeError
from ..fileio import atomic_write_json, read_json

UNIFORM_AFFINITY = 1e-3  # relative to the mean off-diagonal affinity; keeps the graph connected


CONFUSIONS = ("counts", "soft")


@torch.no_grad()
def confusion_matrix(model: torch.nn.Module, loader, num_classes: int, device: str | torch.device = "cpu", *,
                     amp_dtype: torch.dtype | None = None, reduce=None, mode: str = "counts") -> np.ndarray:
    """``mode="counts"``: (N, N) int64, entry [t, p] = images of true class t predicted as p.
    ``mode="soft"``: (N, N) float64, entry [t, p] = summed softmax probability of class p over the
    images of true class t (each row sums to that class's image count; row-normalised by the
    clustering, it is the mean softmax mass).

    Distributed: ``loader`` holds this rank's shard and ``reduce`` sums the (N*N,) matrix over the
    ranks, so every rank gets the matrix of the whole set."""
    if mode not in CONFUSIONS:
        raise MvmoeError(f"confusion {mode!r}: use one of {', '.join(CONFUSIONS)}")
    device = torch.device(device)
    was_training = model.training
    model.eval()
    soft = mode == "soft"
    counts = torch.zeros(num_classes * num_classes, dtype=torch.float64 if soft else torch.int64)
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
    for images, labels in loader:
        with autocast:
            logits = model(images.to(device, non_blocking=True))  # (B, N)
        labels = torch.as_tensor(labels).long().cpu()
        if soft:
            probs = logits.float().softmax(dim=-1).cpu().double()  # (B, N)
            counts += torch.zeros(num_classes, num_classes, dtype=torch.float64).index_add_(0, labels, probs).flatten()
        else:
            pred = logits.float().argmax(dim=-1).cpu()
            counts += torch.bincount(labels * num_classes + pred, minlength=num_classes * num_classes)
    model.train(was_training)
    if reduce is not None:
        counts = reduce(counts)
    return counts.view(num_classes, num_classes).numpy()


def confusion_affinity(confusion: np.ndarray) -> np.ndarray:
    """Symmetric affinity (N, N) from a confusion matrix: see the module docstring."""
    c = np.asarray(confusion, dtype=np.float64)
    if c.ndim != 2 or c.shape[0] != c.shape[1]:
        raise MvmoeError(f"confusion matrix must be square, got shape {c.shape}")
    if (c < 0).any():
        raise MvmoeError("confusion matrix has negative entries")
    rows = c.sum(axis=1, keepdims=True)
    c = np.divide(c, rows, out=np.zeros_like(c), where=rows > 0)  # row-normalised
    np.fill_diagonal(c, 0.0)
    a = (c + c.T) / 2.0
    n = a.shape[0]
    off = a.sum() / max(1, n * (n - 1))
    eps = UNIFORM_AFFINITY * (off if off > 0 else 1.0)
    a = a + eps
    np.fill_diagonal(a, 1.0 if a.max() <= 1.0 else a.max())  # self affinity (ignored by the Laplacian)
    return a


def _canonical(labels: np.ndarray) -> np.ndarray:
    """Renumber clusters in order of their smallest member, so equal partitions give equal arrays."""
    order = {}
    for lab in labels.tolist():
        order.setdefault(lab, len(order))
    return np.array([order[lab] for lab in labels.tolist()], dtype=np.int64)


CLUSTERINGS = ("balanced", "spectral")


def cluster_superclasses(confusion: np.ndarray, num_superclasses: int, seed: int = 0,
                         method: str = "balanced") -> np.ndarray:
    """Class -> superclass ids (N,) int64 in [0, S), every superclass non-empty; ``method`` is
    "balanced" (sizes differ by at most one) or "spectral" (see the module docstring)."""
    confusion = np.asarray(confusion)
    n = confusion.shape[0] if confusion.ndim == 2 else -1
    if not isinstance(num_superclasses, (int, np.integer)) or not 1 <= num_superclasses <= n:
        raise MvmoeError(f"num_superclasses must be between 1 and the number of classes ({n}), got {num_superclasses!r}")
    if method not in CLUSTERINGS:
        raise MvmoeError(f"superclass clustering {method!r}: use one of {', '.join(CLUSTERINGS)}")
    affinity = confusion_affinity(confusion)
    if num_superclasses == 1:
        return np.zeros(n, dtype=np.int64)
    if num_superclasses == n:
        return np.arange(n, dtype=np.int64)
    if method == "balanced":
        return _canonical(_balanced_spectral(affinity, num_superclasses, seed))
    return _fill_empty(_spectral(affinity, num_superclasses, seed), affinity, num_superclasses)


def _spectral(affinity: np.ndarray, s: int, seed: int) -> np.ndarray:
    from sklearn.cluster import SpectralClustering

    sc = SpectralClustering(n_clusters=s, affinity="precomputed", random_state=seed, assign_labels="kmeans", n_init=10)
    return _canonical(sc.fit_predict(affinity))


def _fill_empty(labels: np.ndarray, affinity: np.ndarray, s: int) -> np.ndarray:
    """k-means can leave a cluster empty on degenerate graphs: split the largest cluster by moving
    out its member least attached to the rest, until every superclass has a member."""
    while labels.max() + 1 < s:
        big = np.bincount(labels).argmax()
        members = np.flatnonzero(labels == big)
        inside = affinity[np.ix_(members, members)].sum(axis=1) - np.diag(affinity)[members]
        labels[members[inside.argmin()]] = labels.max() + 1
        labels = _canonical(labels)
    return labels


def balanced_sizes(n: int, natural: np.ndarray) -> np.ndarray:
    """Sizes (S,) summing to n that differ by at most one; the clusters that are naturally the
    largest (``natural`` counts, ties to the lower id) get the extra members."""
    s = len(natural)
    sizes = np.full(s, n // s)
    sizes[np.argsort(-natural, kind="stable")[: n % s]] += 1
    return sizes


def balanced_assignment(points: np.ndarray, centers: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Assign N points to S centres, exactly ``sizes[s]`` to centre s, minimising the summed
    squared distance (an N x N assignment problem: centre s repeated sizes[s] times)."""
    from scipy.optimize import linear_sum_assignment

    slots = np.repeat(np.arange(len(centers)), sizes)  # (N,) centre of each slot
    cost = ((points[:, None, :] - centers[slots][None, :, :]) ** 2).sum(-1)  # (N, N)
    rows, cols = linear_sum_assignment(cost)
    labels = np.empty(len(points), dtype=np.int64)
    labels[rows] = slots[cols]
    return labels


def _balanced_spectral(affinity: np.ndarray, s: int, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans
    from sklearn.manifold import spectral_embedding

    emb = spectral_embedding(affinity, n_components=s, random_state=seed, drop_first=False)  # (N, S)
    km = KMeans(n_clusters=s, n_init=10, random_state=seed).fit(emb)
    sizes = balanced_sizes(len(emb), np.bincount(km.labels_, minlength=s))
    return balanced_assignment(emb, km.cluster_centers_, sizes)


def superclass_names(class_names: list[str], class_to_superclass, confusion: np.ndarray | None = None,
                     top: int = 3) -> list[str]:
    """Readable names: "sc<i>: a/b/c" with the ``top`` members most confused within the group
    (by class order without a confusion matrix), "+k" when more members are left out."""
    c2s = np.asarray(class_to_superclass, dtype=np.int64)
    affinity = confusion_affinity(confusion) if confusion is not None else None
    names = []
    for s in range(int(c2s.max()) + 1):
        members = np.flatnonzero(c2s == s)
        if affinity is not None and len(members) > 1:
            inside = affinity[np.ix_(members, members)].sum(axis=1) - np.diag(affinity)[members]
            members = members[np.argsort(-inside, kind="stable")]
        shown = "/".join(class_names[i] for i in members[:top])
        more = f" +{len(members) - top}" if len(members) > top else ""
        names.append(f"sc{s}: {shown}{more}")
    return names


def superclasses_from_model(model: torch.nn.Module, loader, class_names: list[str], num_superclasses: int, *,
                            seed: int = 0, device: str | torch.device = "cpu", source: str = "",
                            method: str = "balanced", fit_on: dict | None = None, confusion: str = "counts") -> dict:
    """Confusion on ``loader`` (held-out data) -> clustering -> names, as the dict that
    ``save_superclasses`` writes. ``fit_on``: what the loader holds, e.g. {"split": "train-holdout",
    "images": 144}; ``confusion``: "counts" or "soft" (``confusion_matrix``'s mode)."""
    conf = confusion_matrix(model, loader, len(class_names), device, mode=confusion)
    return superclasses_from_confusion(conf, class_names, num_superclasses, seed=seed, source=source, method=method,
                                       fit_on=fit_on)


def superclasses_from_confusion(conf: np.ndarray, class_names: list[str], num_superclasses: int, *, seed: int = 0,
                                source: str = "", method: str = "balanced", fit_on: dict | None = None) -> dict:
    """A confusion matrix (N, N) -> clustering -> names, as ``superclasses_from_model`` returns."""
    c2s = cluster_superclasses(conf, num_superclasses, seed, method)
    return make_superclasses(class_names, c2s, superclass_names(class_names, c2s, conf), source,
                             confusion=conf, method=method, fit_on=fit_on)


def make_superclasses(class_names: list[str], class_to_superclass, names: list[str] | None = None,
                      source: str = "", confusion: np.ndarray | None = None, method: str | None = None,
                      fit_on: dict | None = None) -> dict:
    c2s = [int(v) for v in np.asarray(class_to_superclass).tolist()]
    s = max(c2s) + 1 if c2s else 0
    out = {
        "num_superclasses": s,
        "classes": list(class_names),
        "class_to_superclass": c2s,
        "names": list(names) if names is not None else superclass_names(list(class_names), c2s),
        "members": [[class_names[i] for i, v in enumerate(c2s) if v == k] for k in range(s)],
        "sizes": [c2s.count(k) for k in range(s)],
        "method": method,
        "source": source,
        "fit_on": fit_on,
    }
    if confusion is not None:
        conf = np.asarray(confusion)
        out["confusion"] = (conf.astype(int).tolist() if np.issubdtype(conf.dtype, np.integer)
                            else np.round(conf.astype(np.float64), 4).tolist())  # soft: summed softmax mass
    return _validate(out, None, "<superclasses>")


def planted_ari(planted: list[int], class_to_superclass: list[int]) -> float:
    """Adjusted Rand index of clustered superclasses against the planted ones (1 = the same
    partition up to renaming, about 0 = chance, negative = worse than chance)."""
    from sklearn.metrics import adjusted_rand_score

    if len(planted) != len(class_to_superclass):
        raise MvmoeError(f"{len(planted)} planted labels for {len(class_to_superclass)} classes")
    return float(adjusted_rand_score(planted, class_to_superclass))


def save_superclasses(path: str | os.PathLike, data: dict) -> dict:
    """Validate and write a superclasses dict (``make_superclasses``) atomically; returns it."""
    data = _validate(data, None, str(path))
    atomic_write_json(path, data)
    return data


def load_superclasses(path: str | os.PathLike, class_names: list[str] | None = None) -> dict:
    """Read and validate a superclasses JSON; with ``class_names``, check it is for these classes."""
    path = Path(path)
    if not path.is_file():
        raise MvmoeError(f"superclasses file not found: {path}")
    return _validate(read_json(path), class_names, str(path))


def _validate(data, class_names: list[str] | None, where: str) -> dict:
    def bad(msg: str):
        raise MvmoeError(f"{where}: {msg}")

    if not isinstance(data, dict):
        bad("expected a JSON object with num_superclasses, classes, class_to_superclass, names")
    for key in ("num_superclasses", "classes", "class_to_superclass", "names"):
        if key not in data:
            bad(f"missing key {key!r}")
    s, classes, c2s, names = data["num_superclasses"], data["classes"], data["class_to_superclass"], data["names"]
    if not isinstance(s, int) or isinstance(s, bool) or s < 1:
        bad(f"num_superclasses must be a positive integer, got {s!r}")
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        bad("classes must be a list of class names")
    if not isinstance(c2s, list) or len(c2s) != len(classes):
        bad(f"class_to_superclass must list one superclass per class ({len(classes)}), got "
            f"{len(c2s) if isinstance(c2s, list) else type(c2s).__name__}")
    for name, v in zip(classes, c2s):
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < s:
            bad(f"class {name!r} has superclass {v!r}, expected an integer in [0, {s})")
    empty = sorted(set(range(s)) - set(c2s))
    if empty:
        bad(f"superclass(es) {empty} have no classes")
    if not isinstance(names, list) or len(names) != s or not all(isinstance(n, str) for n in names):
        bad(f"names must be a list of {s} strings")
    if class_names is not None and list(class_names) != classes:
        missing = [c for c in class_names if c not in classes]
        extra = [c for c in classes if c not in class_names]
        detail = (f"missing {missing[:5]}" if missing else "") + (f" extra {extra[:5]}" if extra else "")
        bad(f"made for other classes than this dataset's {len(class_names)} "
            f"({detail.strip() or 'same names, different order'})")
    data = dict(data)
    data["members"] = [[classes[i] for i, v in enumerate(c2s) if v == k] for k in range(s)]
    data.setdefault("source", "")
    return data
