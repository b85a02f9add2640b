"""The ``graded`` benchmark: spec, determinism, balance, class structure, superclass recovery; and
``shapes`` left as it was."""

import colorsys
import hashlib

import numpy as np
import pytest
import torch

from mobile_vmoe.data import build_data, graded, spec_kind
from mobile_vmoe.data.superclasses import cluster_superclasses, planted_ari
from mobile_vmoe.errors import MvmoeError


def test_spec_parsing_and_errors():
    assert graded.parse_graded_spec("graded") == (500, 10, 100, 0.5)
    assert graded.parse_graded_spec("graded:40:4") == (40, 4, 100, 0.5)
    assert graded.parse_graded_spec("graded:40:4:30:0.25") == (40, 4, 30, 0.25)
    assert graded.graded_spec(40, 4, 30, 0.25) == "graded:40:4:30:0.25" and spec_kind("graded:40:4") == "graded"
    for bad in ("graded:40", "graded:40:1", "graded:3:4", "graded:40:4:2", "graded:40:4:30:-1", "graded:40:4:30:x",
                "graded:5000:10"):
        with pytest.raises(MvmoeError, match="bad graded spec"):
            graded.parse_graded_spec(bad)


def test_deterministic_and_balanced():
    a = build_data("graded:20:4:6:0.5", augment="none", seed=1)
    ta, va = a.train.images.clone(), a.val.images.clone()
    graded._CACHE.clear()  # build again from nothing
    b = build_data("graded:20:4:6:0.5", augment="none", seed=1)
    assert torch.equal(ta, b.train.images) and torch.equal(va, b.val.images)
    c = build_data("graded:20:4:6:0.5", augment="none", seed=2)
    assert not torch.equal(ta, c.train.images)  # another seed, other images ...
    assert c.class_names == a.class_names  # ... of the same classes
    assert a.train.images.shape == (120, 3, 32, 32) and 0 <= float(ta.min()) and float(ta.max()) <= 1
    assert torch.bincount(a.train.labels).tolist() == [6] * 20  # balanced
    assert torch.bincount(a.val.labels).tolist() == [20] * 20  # eval: at least 20 per class
    assert a.planted_superclasses == [c % 4 for c in range(20)] and a.class_names[5] == "p1.01"
    assert a.spec == a.name == "graded:20:4:6:0.5" and a.preprocess.kind == "graded"


def test_level_changes_the_images_not_the_labels():
    _, attrs = graded.structure(20, 4)
    x0, y0 = graded.make_split(attrs, 2, 0.0, 32, 0)
    x1, y1 = graded.make_split(attrs, 2, 1.0, 32, 0)
    assert torch.equal(y0, y1)
    # the noise std alone goes 0.02 -> 0.14: the clean set is far smoother pixel to pixel
    assert (x1.diff(dim=-1).abs().mean() > 2 * x0.diff(dim=-1).abs().mean())


def test_class_structure():
    protos, attrs = graded.structure(500, 10)
    S = 10
    assert len({tuple(r) for r in attrs.tolist()}) == 500  # every class distinct
    for s in range(S):
        for t in range(s):
            assert int((protos[s] != protos[t]).sum()) >= graded.MIN_PROTOTYPE_DISTANCE
    d_proto = (attrs[:, None, :] != protos[None, :, :]).sum(-1)  # (N, S)
    own = d_proto[torch.arange(500), torch.arange(500) % S]
    assert set(own.tolist()) <= set(graded.CHANGES)  # 1 or 2 changes of its prototype
    others = d_proto.clone()
    others[torch.arange(500), torch.arange(500) % S] = 99
    assert bool((own < others.min(dim=1).values).all())  # strictly closest to its own prototype
    # no single attribute separates superclasses: no value of any attribute belongs to one superclass
    for k in range(graded.K):
        for v in set(attrs[:, k].tolist()):
            assert len({c % S for c in range(500) if int(attrs[c, k]) == v}) >= 2, (graded.ATTRIBUTES[k], v)
    # colours are the superclass's: they never vary inside it
    for k in graded.COLOURS:
        assert bool((attrs[:, k] == protos[torch.arange(500) % S, k]).all())
    dist = graded.attribute_distance(500, 10)
    same = (torch.arange(500) % S)[:, None] == (torch.arange(500) % S)[None, :]
    off = ~torch.eye(500, dtype=torch.bool)
    assert int(dist[same & off].max()) <= 3 and float(dist[~same].float().mean()) > 4.5


def test_hsv_matches_colorsys():
    h, v = torch.tensor([0.0, 0.13, 0.5, 0.77, 0.99]), torch.tensor([0.3, 0.6, 0.9, 0.5, 0.7])
    got = graded._hsv(h, 0.75, v)
    want = torch.tensor([colorsys.hsv_to_rgb(float(a), 0.75, float(b)) for a, b in zip(h, v)])
    assert torch.allclose(got, want, atol=1e-6)


def _simulated_confusions(N: int, S: int, beta: float, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray, float]:
    """A classifier that knows the attributes but not the superclasses: its logit for class j on an
    image of class i is -beta * (weighted attribute distance) + Gaussian noise, each attribute
    weighted by a random salience in [0.3, 1] (a real model sees some attributes better). ->
    (counts, soft mass, top-1) on ``per_class`` held-out images per class."""
    g = torch.Generator().manual_seed(seed)
    _, attrs = graded.structure(N, S)
    w = 0.3 + 0.7 * torch.rand(graded.K, generator=g)  # (K,)
    dist = ((attrs[:, None, :] != attrs[None, :, :]).float() * w).sum(-1)  # (N, N)
    labels = torch.arange(N).repeat(per_class)
    logits = -beta * dist[labels] + 1.5 * torch.randn(len(labels), N, generator=g)
    pred = logits.argmax(1)
    counts, soft = np.zeros((N, N)), np.zeros((N, N))
    np.add.at(counts, (labels.numpy(), pred.numpy()), 1)
    np.add.at(soft, labels.numpy(), logits.softmax(1).numpy())
    return counts, soft, float((pred == labels).float().mean())


@pytest.mark.parametrize("seed", [0, 1])
def test_planted_superclasses_recoverable_from_graded_confusions(seed):
    """At 40-90 % top-1 and 10 held-out images per class, the balanced clustering of the soft
    confusion recovers the planted superclasses (ARI > 0.7) of 200 classes in 8 superclasses; the
    argmax counts, sparser, fall behind as the model gets better; a model whose errors ignore the
    attributes recovers nothing."""
    N, S = 200, 8
    planted = [c % S for c in range(N)]
    for beta in (3.0, 4.0):
        counts, soft, top1 = _simulated_confusions(N, S, beta=beta, per_class=10, seed=seed)
        assert 0.35 < top1 < 0.9  # the salience draw moves it
        ari_soft = planted_ari(planted, cluster_superclasses(soft, S, seed=0).tolist())
        ari_counts = planted_ari(planted, cluster_superclasses(counts, S, seed=0).tolist())
        assert ari_soft > 0.7
    assert ari_counts < ari_soft  # at the higher accuracy: few errors, a sparse count graph
    rng = np.random.default_rng(seed)  # control: errors spread at random
    noise = rng.poisson(0.05, size=(N, N)).astype(float) + np.eye(N) * 5
    assert abs(planted_ari(planted, cluster_superclasses(noise, S, seed=0).tolist())) < 0.1


def test_shapes_data_unchanged():
    """The generated shapes sets are byte for byte what they were before graded was added."""
    want = {"shapes:20:4": "937364e1a843e2934666852a4f78ebf4bf8ab5d9ae04dd5a35e9b1c08491aaa1",
            "shapes-disjoint:20:4": "41c974140c4b0c79c9076852d036102c6e151c453aed500ea9373d6309858827"}
    for spec, digest in want.items():
        b = build_data(spec, augment="none", seed=1)
        x, v = b.train.images[:16].contiguous(), b.val.images[:16].contiguous()
        assert hashlib.sha256(x.numpy().tobytes() + v.numpy().tobytes()).hexdigest() == digest, spec
