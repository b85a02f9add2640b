"""``graded``: a generated benchmark of many classes in planted superclasses, similar by degree.

Built so that a small dense ViT is short of capacity (hundreds of classes, each told from its
neighbours by a few attributes under nuisances) and so that classes are confused mostly, and by
degree, with the other classes of their superclass, the situation per-image experts are for::

    an image is a vector of K = 6 attributes, each one of V = 8 values:
        outline     disk, square, triangle, ring, cross, diamond, half-disk, horizontal bar
        body hue    8 hues, evenly spaced
        texture     stripes at 4 angles x 2 frequencies
        part        a small square at 4 places x light / dark
        background  8 muted hues
        satellite   a dot beside the object at one of 8 angles
    superclass s   -> a prototype: body hue and background drawn so that every value a prototype
                      uses is used by another prototype too (pairs), the 4 detail attributes
                      (outline, texture, part, satellite) at random, prototypes differing
                      pairwise in at least MIN_PROTOTYPE_DISTANCE attributes; and its own
                      VARIABLE = 3 of the 4 detail attributes, a random subset: the axes along
                      which its classes differ
    class c in s   -> the prototype with 1 or 2 of its variable attributes changed (CHANGES),
                      strictly closer to its own prototype than to any other; every class distinct

Two classes of one superclass differ in 1 to 3 detail attributes and share their colours;
classes of different superclasses mostly differ in 4 to 6 attributes: confusions are graded and
dense inside a superclass, and what tells classes apart depends on the superclass. Colours are
superclass-level on purpose: a trained model never confuses a hue it sees easily, so a colour
that varied inside a superclass would cut its classes into groups that are never confused with
each other (an exploratory dense 6x32 on an earlier draft, with colours among the variable
attributes, made 85 % of its errors inside superclasses yet gave ARI 0.24-0.31). No attribute
separates superclasses outright: every hue and background value is shared by two prototypes,
and every detail value occurs in several superclasses.

Nuisances, their size set by ``level`` (0 = nearly clean; the study's calibration picks it)::

    shift      object centre within +-(0.05 + 0.25 level) of the half-width
    scale      object radius 0.5 x (1 +- 0.3 level) of the half-width
    rotation   +-(3 + 22 level) degrees (stripe angles are 45 degrees apart)
    colour     body and background hue +-(0.06 level) (hues are 0.125 apart), brightness
               +-(0.05 + 0.2 level)
    noise      Gaussian, std 0.02 + 0.12 level
    occluders  with probability min(1, level), one rectangle of random colour, side 20-45 % of the image

The class structure (prototypes, classes) is fixed by STRUCTURE_SEED for given N and S; the data
seed draws the images only, so class c means the same in every seed. Class c belongs to
superclass ``c % S`` (interleaved, as ``shapes``). The default ``graded`` is 500 classes in 10
superclasses, 100 training and 20 evaluation images per class at 32 px, level 0.5. Generation is
deterministic given seed and spec; nothing is stored: images are drawn in memory (about 60,000 in
a few seconds on one core) and the last set built is kept in memory for the next ``build_graded``
of the same spec in this process. Flips are off in training: a mirrored stripe or part is another
class.
"""

from __future__ import annotations

import functools
import itertools
import math

import torch

from ..errors import MvmoeError
from .bundle import DataBundle
from .in_memory import tensor_bundle
from .shapes import outline
from .transforms import PREPROCESS, check_augment

NAME = "graded"
ATTRIBUTES = ("outline", "hue", "texture", "part", "background", "satellite")
OUTLINES = (0, 1, 2, 3, 4, 7, 9, 5)  # shapes.outline ids: disk square triangle ring cross diamond halfdisk hbar
K, V = len(ATTRIBUTES), 8
CHANGES = (1, 2)  # attributes a class changes in its prototype
VARIABLE = 3  # attributes a superclass's classes may change (its own random subset of DETAILS)
COLOURS = (1, 4)  # hue, background: set per superclass, each value shared by two prototypes
DETAILS = (0, 2, 3, 5)  # outline, texture, part, satellite: what classes change
MIN_PROTOTYPE_DISTANCE = 4
STRUCTURE_SEED = 20261207
NUM_CLASSES, NUM_SUPERCLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS, LEVEL = 500, 10, 100, 20, 0.5
MAX_SUPERCLASSES = 20
CHUNK = 4096  # images drawn at a time (bounds the (B, H, W) temporaries)
_CACHE: dict = {}  # the last (spec, seed, size) built: {key: (train, val)}


# -------------------------------------------------------------------------------- spec
def parse_graded_spec(spec: str) -> tuple[int, int, int, float]:
    """"graded[:N:S[:P[:L]]]" -> (N classes, S superclasses, P training images per class, level L)."""
    parts = str(spec).split(":")
    if parts[0] != NAME or len(parts) not in (1, 3, 4, 5):
        raise MvmoeError(f"bad {NAME} spec {spec!r}: use {NAME}[:<classes>:<superclasses>[:<train per class>"
                         f"[:<level>]]], e.g. {NAME}:500:10:100:0.5")
    n, s, p, level = NUM_CLASSES, NUM_SUPERCLASSES, TRAIN_PER_CLASS, LEVEL
    try:
        if len(parts) >= 3:
            n, s = int(parts[1]), int(parts[2])
        if len(parts) >= 4:
            p = int(parts[3])
        if len(parts) == 5:
            level = float(parts[4])
    except ValueError:
        raise MvmoeError(f"bad {NAME} spec {spec!r}: classes, superclasses and images per class are integers, "
                         "the level a number") from None
    if not 2 <= s <= MAX_SUPERCLASSES or not s <= n <= s * max_classes_per_superclass():
        raise MvmoeError(f"bad {NAME} spec {spec!r}: need 2 <= superclasses <= {MAX_SUPERCLASSES} and superclasses "
                         f"<= classes <= {max_classes_per_superclass()} x superclasses")
    if p < 3:
        raise MvmoeError(f"bad {NAME} spec {spec!r}: training images per class must be >= 3")
    if not (math.isfinite(level) and 0.0 <= level <= 4.0):
        raise MvmoeError(f"bad {NAME} spec {spec!r}: the nuisance level must be in [0, 4]")
    return n, s, p, level


def graded_spec(n: int, s: int, per_class: int, level: float) -> str:
    """The canonical spec (every field written: the level is part of what the data is)."""
    return f"{NAME}:{n}:{s}:{per_class}:{level:g}"


def val_per_class(per_class: int) -> int:
    return max(VAL_PER_CLASS, per_class // 5)


def max_classes_per_superclass() -> int:
    """A bound on the classes one superclass holds: of its 3 x 7 + 3 x 49 = 168 neighbours some are
    closer to another prototype (``structure`` says so when a superclass runs short)."""
    return 100


# --------------------------------------------------------------------------- structure
@functools.lru_cache(maxsize=4)
def structure(num_classes: int, num_superclasses: int) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (prototypes (S, K) int64, class attributes (N, K) int64); class c in superclass c % S."""
    S = num_superclasses
    g = torch.Generator().manual_seed(STRUCTURE_SEED + 1000 * S)
    P = torch.zeros(S, K, dtype=torch.long)
    for k in COLOURS:  # each value a prototype uses, at least one other prototype uses too
        values = torch.randperm(V, generator=g)[(torch.arange(S) // 2) % V]  # (S,) pairs of values
        P[:, k] = values[torch.randperm(S, generator=g)]
    for s in range(S):  # details: random, until the prototype is far enough from the earlier ones
        while True:
            P[s, list(DETAILS)] = torch.randint(V, (len(DETAILS),), generator=g)
            if all(int((P[s] != P[t]).sum()) >= MIN_PROTOTYPE_DISTANCE for t in range(s)):
                break
    variable = [sorted(torch.tensor(DETAILS)[torch.randperm(len(DETAILS), generator=g)[:VARIABLE]].tolist())
                for _ in range(S)]
    per = [len(range(s, num_classes, num_superclasses)) for s in range(num_superclasses)]
    chosen: list[list[torch.Tensor]] = []
    seen: set[tuple] = set()
    for s in range(num_superclasses):
        cands = neighbours(P, s, variable[s])  # (M, K), in a fixed order
        order = torch.randperm(len(cands), generator=g)
        picks = []
        for i in order.tolist():
            key = tuple(cands[i].tolist())
            if key not in seen:
                seen.add(key)
                picks.append(cands[i])
            if len(picks) == per[s]:
                break
        if len(picks) < per[s]:
            raise MvmoeError(f"{NAME}: superclass {s} has room for only {len(picks)} classes, {per[s]} asked")
        chosen.append(picks)
    attrs = torch.stack([chosen[c % num_superclasses][c // num_superclasses] for c in range(num_classes)])
    return P, attrs


def neighbours(P: torch.Tensor, s: int, variable: list[int]) -> torch.Tensor:
    """Attribute vectors CHANGES away from prototype s in its ``variable`` attributes and strictly
    closer to it than to any other prototype (M, K)."""
    out = []
    for m in CHANGES:
        for where in itertools.combinations(variable, m):
            for values in itertools.product(range(V - 1), repeat=m):
                v = P[s].clone()
                for k, d in zip(where, values):
                    v[k] = (int(P[s, k]) + 1 + d) % V  # any value but the prototype's
                dist = (P != v).sum(dim=1)  # (S,)
                if int(dist[s]) < int(torch.cat([dist[:s], dist[s + 1:]]).min()):
                    out.append(v)
    return torch.stack(out)


def class_names(attrs: torch.Tensor, num_superclasses: int) -> list[str]:
    """"p3.07": superclass (prototype) 3, its class 7; class c is f"p{c % S}.{c // S:02d}"."""
    return [f"p{c % num_superclasses}.{c // num_superclasses:02d}" for c in range(len(attrs))]


# ----------------------------------------------------------------------------- drawing
def _hsv(h: torch.Tensor, s: float, v: torch.Tensor) -> torch.Tensor:
    """Vectorised HSV -> RGB: h, v (B,) -> (B, 3) (colorsys.hsv_to_rgb's formula)."""
    h = torch.remainder(h, 1.0)
    i = torch.floor(h * 6)
    f = h * 6 - i
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    i = i.long() % 6
    table = torch.stack([torch.stack(c, dim=-1) for c in
                         ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))])  # (6, B, 3)
    return table[i, torch.arange(len(h))]


def draw(attrs: torch.Tensor, level: float, img_size: int, g: torch.Generator) -> torch.Tensor:
    """Images (B, 3, H, W) in [0, 1] for per-image attribute vectors ``attrs`` (B, K)."""
    B = attrs.shape[0]
    a_out, a_hue, a_tex, a_part, a_bg, a_sat = attrs.unbind(1)  # (B,) each

    def u(*shape):  # uniform in [-1, 1]
        return torch.rand(*shape, generator=g) * 2 - 1

    lin = (torch.arange(img_size) + 0.5) / img_size * 2 - 1  # pixel centres in [-1, 1]
    yy, xx = torch.meshgrid(lin, lin, indexing="ij")  # (H, W)
    cx, cy = (u(B, 1, 1) * (0.05 + 0.25 * level) for _ in range(2))
    scale = 0.5 * (1 + 0.3 * level * u(B, 1, 1))
    theta = u(B, 1, 1) * math.radians(3 + 22 * level)
    x = ((xx - cx) * torch.cos(theta) + (yy - cy) * torch.sin(theta)) / scale  # (B, H, W) object coordinates
    y = (-(xx - cx) * torch.sin(theta) + (yy - cy) * torch.cos(theta)) / scale
    body = _hsv(a_hue / V + 0.06 * level * u(B), 0.75, 0.6 + (0.05 + 0.2 * level) * u(B))  # (B, 3)
    bg = _hsv(a_bg / V + 0.06 * level * u(B), 0.3, 0.45 + (0.05 + 0.2 * level) * u(B))  # (B, 3)
    img = bg.view(B, 3, 1, 1).expand(B, 3, img_size, img_size).clone()
    # texture: stripes at 45-degree steps, 2 or 4 cycles across the object, darker than the body
    ang = (a_tex % 4).float().view(B, 1, 1) * (math.pi / 4)
    freq = torch.where(a_tex < 4, 2.0, 4.0).view(B, 1, 1)
    phase = torch.rand(B, 1, 1, generator=g) * 2 * math.pi
    stripes = torch.sin(math.pi * freq * (x * torch.cos(ang) + y * torch.sin(ang)) + phase) > 0  # (B, H, W)
    paint = torch.where(stripes.unsqueeze(1), 0.55 * body.view(B, 3, 1, 1), body.view(B, 3, 1, 1))
    # part: a small square at one of 4 places, light or dark
    px = torch.tensor([0.4, -0.4, -0.4, 0.4])[a_part % 4].view(B, 1, 1)
    py = torch.tensor([0.4, 0.4, -0.4, -0.4])[a_part % 4].view(B, 1, 1)
    part = torch.maximum((x - px).abs(), (y - py).abs()) < 0.28
    part_col = torch.where(a_part < 4, 0.95, 0.05).view(B, 1, 1, 1).expand(B, 3, 1, 1)
    paint = torch.where(part.unsqueeze(1), part_col, paint)
    mask = torch.zeros(B, img_size, img_size, dtype=torch.bool)
    for v, s in enumerate(OUTLINES):
        idx = torch.nonzero(a_out == v).flatten()
        if len(idx):
            mask[idx] = outline(s, x[idx], y[idx])
    img = torch.where(mask.unsqueeze(1), paint, img)
    # satellite: a dot at one of 8 angles, just outside the object, in the body colour's complement
    sa = a_sat.float().view(B, 1, 1) * (math.pi / 4)
    sat = (x - 1.35 * torch.cos(sa)) ** 2 + (y - 1.35 * torch.sin(sa)) ** 2 < 0.3 ** 2
    img = torch.where(sat.unsqueeze(1), (1 - body).view(B, 3, 1, 1), img)
    # occluder: a rectangle of random colour, with probability min(1, level)
    occ = torch.rand(B, generator=g) < min(1.0, level)
    w, h = (0.4 + 0.5 * torch.rand(B, generator=g) for _ in range(2))  # side in [-1, 1] units: 20-45 %
    ox, oy = u(B), u(B)
    box = (((xx - ox.view(B, 1, 1)).abs() < w.view(B, 1, 1) / 2) & ((yy - oy.view(B, 1, 1)).abs() < h.view(B, 1, 1) / 2)
           & occ.view(B, 1, 1))
    img = torch.where(box.unsqueeze(1), torch.rand(B, 3, 1, 1, generator=g), img)
    img = img + (0.02 + 0.12 * level) * torch.randn(img.shape, generator=g)
    return img.clamp_(0.0, 1.0)


def make_split(attrs: torch.Tensor, per_class: int, level: float, img_size: int,
               seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N * per_class, 3, H, W), labels): every class ``per_class`` times, interleaved."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(len(attrs)).repeat(per_class)
    images = torch.empty(len(labels), 3, img_size, img_size)
    for i in range(0, len(labels), CHUNK):
        images[i:i + CHUNK] = draw(attrs[labels[i:i + CHUNK]], level, img_size, g)
    return images, labels


def build_graded(spec: str = NAME, img_size: int | None = None, augment: str = "default", *,
                 seed: int = 0) -> DataBundle:
    """In-memory ``graded`` DataBundle; train and val use different generator streams of ``seed``.
    ``planted_superclasses`` holds class -> superclass."""
    n, s, p, level = parse_graded_spec(spec)
    img_size = img_size or 32
    check_augment(augment)
    key = (n, s, p, level, img_size, seed)
    if key not in _CACHE:
        _CACHE.clear()  # keep one set: a study process moves from seed to seed
        _, attrs = structure(n, s)
        _CACHE[key] = (make_split(attrs, p, level, img_size, 2 * seed),
                       make_split(attrs, val_per_class(p), level, img_size, 2 * seed + 1))
    train, val = _CACHE[key]
    name = graded_spec(n, s, p, level)
    bundle = tensor_bundle(name, train, val, class_names(structure(n, s)[1], s), augment, PREPROCESS[NAME],
                           planted_superclasses=[c % s for c in range(n)], stats={"seed": seed, "level": level})
    bundle.spec, bundle.seed = name, seed
    return bundle


def attribute_distance(num_classes: int, num_superclasses: int) -> torch.Tensor:
    """(N, N) int64: attributes in which classes i and j differ (what the confusions should follow)."""
    _, attrs = structure(num_classes, num_superclasses)
    return (attrs[:, None, :] != attrs[None, :, :]).sum(-1)

