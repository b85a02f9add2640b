"""``shapes``: a generated benchmark where the superclass is coarse structure and the class is detail.

Built so that model capacity binds (a dense ViT gets clearly better with width) and so that the
detail that tells classes apart depends on the superclass, the situation per-image experts are
for::

    superclass s (S <= 10)  -> the outline of one object: disk, square, triangle, ring, cross,
                               horizontal bar, vertical bar, diamond, X, half-disk
    class c in s (<= 10)    -> a detail inside the object, of a kind that depends on s (s % 3):
                               0 texture:       stripes at one of 5 angles x 2 frequencies
                               1 small part:    a small square at one of 5 places x 2 colours
                               2 colour layout: the object split in one of 5 ways x 2 colours
    every image             -> random position (+-25 % of the image), scale, rotation jitter,
                               object colour, muted background with a gradient, pixel noise

``shapes-disjoint`` (``disjoint=True``) is built FOR the mechanism instead: every superclass owns a
salient cue, its outline plus its own hue band (object hue in the middle 60 % of band s of S equal
bands), and its own family of class details, shared with no other superclass::

    disk: stripes (5 angles x 2 frequencies)    square: small square (5 places)   triangle: split (5 ways)
    ring: an arc (5 angles)                     cross: a dot (5 places)           hbar: a notch (5 places)
    vbar: bands (5 frequencies)                 diamond: a tip (5 places)         x: an arm (5 places)
    halfdisk: a wedge (5 angles)                the second factor of 2 is light/dark (stripes: frequency)

so an expert per superclass needs detectors no other superclass uses, the regime where per-image
experts should help; ``shapes`` (details shared by 3-4 outlines through ``s % 3``) stays as the
negative control. Both have the same nuisances and sizes.

Class c belongs to superclass ``c % S`` and is variant ``c // S`` of its detail (interleaved, as
``synthetic``). The default is 100 classes in 10 superclasses, 60 training and 20 evaluation
images per class at 32 px (6,000 / 2,000 images, generated in about a second). Generation is
deterministic given ``seed``; nothing is downloaded. Flips are off in training: a mirrored
triangle or stripe angle is another class.
"""

from __future__ import annotations

import colorsys
import math

import torch

from ..errors import MvmoeError
from .bundle import DataBundle, split_class_spec
from .in_memory import tensor_bundle
from .transforms import PREPROCESS, check_augment

SHAPES = ("disk", "square", "triangle", "ring", "cross", "hbar", "vbar", "diamond", "x", "halfdisk")
CUES = ("texture", "part", "layout")
FAMILIES = ("stripes", "square", "split", "arc", "dot", "notch", "bands", "tip", "arm", "wedge")  # shapes-disjoint
VARIANTS = 10  # details per superclass: 5 placements/angles x 2 colours/frequencies
TRAIN_PER_CLASS = 60
VAL_PER_CLASS = 20
NOISE_STD = 0.08
DETAIL_COLOURS = torch.tensor([[0.95, 0.95, 0.95], [0.05, 0.05, 0.05]])  # (2, 3) light / dark


def parse_shapes_size(spec: str, name: str = "shapes") -> tuple[int, int, int]:
    """"shapes:N:S:P" -> (N, S, P): P training images per class (default 60; eval gets P / 3)."""
    parts = spec.split(":")
    if len(parts) != 4:
        return (*parse_shapes_spec(spec, name), TRAIN_PER_CLASS)
    try:
        per_class = int(parts[3])
    except ValueError:
        per_class = 0
    if per_class < 3:
        raise MvmoeError(f"bad {name} spec {spec!r}: the 4th field is training images per class, an integer >= 3")
    return (*parse_shapes_spec(":".join(parts[:3]), name), per_class)


def shapes_spec(name: str, n: int, s: int, per_class: int) -> str:
    """The canonical spec: the per-class count appears only when it is not the default."""
    return f"{name}:{n}:{s}" + ("" if per_class == TRAIN_PER_CLASS else f":{per_class}")


def parse_shapes_spec(spec: str, name: str = "shapes") -> tuple[int, int]:
    """"shapes" -> (100, 10); "shapes:N:S" -> (N, S) with S <= 10 and N <= 10 S (``name`` =
    "shapes-disjoint" likewise)."""
    n, s = split_class_spec(spec, name, (100, 10), f"{name}:100:10")
    if not 1 <= s <= len(SHAPES) or not max(2, s) <= n <= VARIANTS * s:
        raise MvmoeError(f"bad {name} spec {spec!r}: need 1 <= superclasses <= {len(SHAPES)} and "
                         f"superclasses <= classes <= {VARIANTS} x superclasses (and classes >= 2)")
    return n, s


def class_names(num_classes: int, num_superclasses: int, disjoint: bool = False) -> list[str]:
    """"disk.texture3" (shapes) or "ring.arc3" (shapes-disjoint): superclass object, detail, variant."""
    S = num_superclasses
    return [f"{SHAPES[c % S]}.{FAMILIES[c % S] if disjoint else CUES[(c % S) % 3]}{c // S}" for c in range(num_classes)]


def outline(s: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mask of object ``s`` in object coordinates (x, y), about [-1, 1] (B, H, W) -> bool."""
    ax, ay, r2 = x.abs(), y.abs(), x * x + y * y
    return {
        0: lambda: r2 < 1.0,
        1: lambda: torch.maximum(ax, ay) < 0.8,
        2: lambda: (y > -0.7) & (y < 0.9) & (ax < 0.6 * (0.9 - y)),
        3: lambda: (r2 < 1.0) & (r2 > 0.45),
        4: lambda: ((ax < 0.32) & (ay < 0.95)) | ((ay < 0.32) & (ax < 0.95)),
        5: lambda: (ay < 0.38) & (ax < 1.0),
        6: lambda: (ax < 0.38) & (ay < 1.0),
        7: lambda: ax + ay < 1.05,
        8: lambda: (((x - y).abs() < 0.36) | ((x + y).abs() < 0.36)) & (torch.maximum(ax, ay) < 0.9),
        9: lambda: (r2 < 1.0) & (y < 0.15),
    }[s]()


def detail(kind: int, v: int, x: torch.Tensor, y: torch.Tensor, phase: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Where variant ``v`` of detail ``kind`` paints the second colour -> (bool (B, H, W), colour id)."""
    place, second = v % 5, v // 5
    if kind == 0:  # stripes: angle place x 36 degrees, 2.5 or 4.5 cycles across the object
        a = math.radians(36 * place)
        f = (2.5, 4.5)[second]
        return torch.sin(math.pi * f * (x * math.cos(a) + y * math.sin(a)) + phase) > 0, 1
    if kind == 1:  # a small square at one of 5 places, light or dark
        cx, cy = ((0.0, 0.0), (0.45, 0.45), (-0.45, 0.45), (0.45, -0.45), (-0.45, -0.45))[place]
        return torch.maximum((x - cx).abs(), (y - cy).abs()) < 0.24, second
    # colour layout: the object split in two, the second part light or dark
    split = (x > 0, y > 0, x > y, x > -y, x * x + y * y < 0.3)[place]
    return split, second


def disjoint_detail(s: int, v: int, x: torch.Tensor, y: torch.Tensor, phase: torch.Tensor) -> tuple[torch.Tensor, int]:
    """shapes-disjoint: superclass ``s``'s own detail family, variant ``v`` -> (bool (B, H, W), colour id).
    Families 0-2 are ``detail``'s three kinds; the others sit inside their own outline."""
    if s < 3:
        return detail(s, v, x, y, phase)
    place, second = v % 5, v // 5
    ang = torch.atan2(y, x)  # (B, H, W) radians
    r = (x * x + y * y).sqrt()

    def near_angle(a_deg: float, half_width_deg: float):  # angular sector around a_deg
        d = torch.remainder(ang - math.radians(a_deg) + math.pi, 2 * math.pi) - math.pi
        return d.abs() < math.radians(half_width_deg)

    if s == 3:  # ring: an arc of 72 degrees centred at one of 5 angles
        return near_angle(72 * place + 18, 36), second
    if s == 4:  # cross: a dot at the end of one arm or the centre
        cx, cy = ((0.0, 0.62), (0.62, 0.0), (0.0, -0.62), (-0.62, 0.0), (0.0, 0.0))[place]
        return (x - cx) ** 2 + (y - cy) ** 2 < 0.28 ** 2, second
    if s == 5:  # hbar: a vertical notch at one of 5 positions along the bar
        return (x - (-0.64 + 0.32 * place)).abs() < 0.14, second
    if s == 6:  # vbar: horizontal bands, 1-3 cycles along the bar (5 frequencies)
        return torch.sin(math.pi * (1.0 + 0.5 * place) * y + phase) > 0, second
    if s == 7:  # diamond: one of its 4 tips or its centre
        return (x > 0.5, y > 0.5, x < -0.5, y < -0.5, x.abs() + y.abs() < 0.4)[place], second
    if s == 8:  # x: one of its 4 arms or its centre
        return ((x > 0.25) & (y > 0.25), (x < -0.25) & (y > 0.25), (x < -0.25) & (y < -0.25),
                (x > 0.25) & (y < -0.25), r < 0.35)[place], second
    # halfdisk (y < 0.15): a wedge of 50 degrees at one of 5 angles of the lower half
    return near_angle(-162 + 36 * place, 25), second


def generate(labels: torch.Tensor, num_superclasses: int, img_size: int, g: torch.Generator,
             disjoint: bool = False) -> torch.Tensor:
    """Images (B, 3, H, W) in [0, 1] for ``labels`` (B,); ``disjoint``: the shapes-disjoint variant
    (same random draws, so the nuisances of image i are those of ``shapes``)."""
    B = labels.shape[0]

    def rand(*shape):
        return torch.rand(*shape, generator=g)

    lin = (torch.arange(img_size) + 0.5) / img_size * 2 - 1  # pixel centres in [-1, 1]
    v, u = torch.meshgrid(lin, lin, indexing="ij")  # (H, W): row -> v, column -> u
    cx, cy = (rand(B, 1, 1) - 0.5) * 0.5, (rand(B, 1, 1) - 0.5) * 0.5
    scale = 0.45 + 0.25 * rand(B, 1, 1)
    theta = (rand(B, 1, 1) - 0.5) * math.radians(20)
    x = ((u - cx) * torch.cos(theta) + (v - cy) * torch.sin(theta)) / scale  # (B, H, W) object coordinates
    y = (-(u - cx) * torch.sin(theta) + (v - cy) * torch.cos(theta)) / scale
    hue = rand(B)
    if disjoint:  # superclass s: hue in the middle 60 % of band s of S
        hue = ((labels % num_superclasses).float() + 0.2 + 0.6 * hue) / num_superclasses
    body = torch.tensor([colorsys.hsv_to_rgb(float(h), 0.8, 0.45 + 0.3 * float(w)) for h, w in zip(hue, rand(B))])
    bg = torch.tensor([colorsys.hsv_to_rgb(float(h), 0.25, 0.3 + 0.4 * float(w)) for h, w in zip(rand(B), rand(B))])
    tilt = (rand(B, 2, 1, 1) - 0.5) * 0.3  # background gradient
    img = bg.view(B, 3, 1, 1) + tilt[:, :1] * u + tilt[:, 1:] * v  # (B, 3, H, W)
    phase = rand(B, 1, 1) * 2 * math.pi
    for s in range(num_superclasses):
        for variant in labels[labels % num_superclasses == s].div(num_superclasses, rounding_mode="floor").unique():
            idx = torch.nonzero((labels % num_superclasses == s) & (labels // num_superclasses == variant)).flatten()
            xs, ys = x[idx], y[idx]
            obj = outline(s, xs, ys).unsqueeze(1)  # (b, 1, H, W)
            if disjoint:
                where, colour = disjoint_detail(s, int(variant), xs, ys, phase[idx])
            else:
                where, colour = detail(s % 3, int(variant), xs, ys, phase[idx])
            paint = torch.where(where.unsqueeze(1), DETAIL_COLOURS[colour].view(1, 3, 1, 1),
                                body[idx].view(-1, 3, 1, 1))  # (b, 3, H, W)
            img[idx] = torch.where(obj, paint, img[idx])
    img = img + NOISE_STD * torch.randn(img.shape, generator=g)
    return img.clamp_(0.0, 1.0)


def make_split(num_classes: int, num_superclasses: int, per_class: int, img_size: int,
               seed: int, disjoint: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_classes).repeat(per_class)  # (N * per_class,)
    return generate(labels, num_superclasses, img_size, g, disjoint), labels


def build_shapes(num_classes: int = 100, num_superclasses: int = 10, img_size: int | None = None,
                 augment: str = "default", *, seed: int = 0, train_per_class: int = TRAIN_PER_CLASS,
                 val_per_class: int = VAL_PER_CLASS, disjoint: bool = False) -> DataBundle:
    """In-memory ``shapes`` (or, ``disjoint``, ``shapes-disjoint``) DataBundle; train and val use
    different generator streams of ``seed``. ``planted_superclasses`` holds class -> superclass."""
    img_size = img_size or 32
    check_augment(augment)
    train = make_split(num_classes, num_superclasses, train_per_class, img_size, 2 * seed, disjoint)
    val = make_split(num_classes, num_superclasses, val_per_class, img_size, 2 * seed + 1, disjoint)
    base = "shapes-disjoint" if disjoint else "shapes"
    name = shapes_spec(base, num_classes, num_superclasses, train_per_class)
    name = base if name == f"{base}:100:10" else name
    return tensor_bundle(name, train, val, class_names(num_classes, num_superclasses, disjoint), augment,
                         PREPROCESS[base], planted_superclasses=[c % num_superclasses for c in range(num_classes)],
                         stats={"seed": seed})
