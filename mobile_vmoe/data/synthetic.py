"""A generated image dataset with a planted class hierarchy (N classes in S superclasses).

Every image is a coloured sinusoidal grating plus noise::

    superclass s  -> dominant structure: colour (hue s/S), orientation (s * 180/S degrees) and
                     frequency of the grating
    class c in s  -> subtle cue: a faint light spot at one of n_s positions on a ring around the
                     centre (position j = rank of c inside s)
    each image    -> random phase, orientation jitter, spot strength (sometimes barely visible),
                     spot position jitter, contrast, pixel noise

Classes of one superclass share colour, orientation and frequency and differ only in where the
faint spot sits. When the spot drowns in the noise, the best a model can do is guess among the
members of the superclass, so it confuses every class with all classes of its own superclass
(not only with neighbours) and almost never with classes of another superclass. The confusion matrix of a trained
classifier therefore shows the hierarchy, which is what superclass clustering must recover.

Class c belongs to superclass ``c % S`` (interleaved, so a clustering that merely groups
neighbouring class ids scores badly). Generation is deterministic given ``seed``.
"""

from __future__ import annotations

import colorsys
import math

import torch

from ..errors import MvmoeError
from .bundle import DataBundle, split_class_spec
from .in_memory import tensor_bundle
from .transforms import PREPROCESS, check_augment

TRAIN_PER_CLASS = 100
VAL_PER_CLASS = 25
BASE_FREQ = 2.0  # grating cycles per image of superclass 0; + FREQ_STEP per superclass
FREQ_STEP = 0.5
SPOT_RADIUS = 0.09  # gaussian sigma of the class spot, in image widths
SPOT_RING = 0.28  # distance of the spot from the centre, in image widths
SPOT_MAX = 0.45  # spot strength is uniform in [0, SPOT_MAX]: weak spots make classes confusable
ORIENT_JITTER = math.radians(8)
NOISE_STD = 0.12


def parse_synthetic_spec(spec: str) -> tuple[int, int]:
    """"synthetic" -> (20, 4); "synthetic:N:S" -> (N, S), validated."""
    n, s = split_class_spec(spec, "synthetic", (20, 4), "synthetic:20:4")
    if s < 1 or n < s or n < 2:
        raise MvmoeError(f"bad synthetic spec {spec!r}: need classes >= superclasses >= 1 and classes >= 2")
    return n, s


def planted_superclasses(num_classes: int, num_superclasses: int) -> list[int]:
    """The true superclass of each class: c % S."""
    return [c % num_superclasses for c in range(num_classes)]


def class_names(num_classes: int, num_superclasses: int) -> list[str]:
    """Readable names that do NOT reveal the superclass: "c00", "c01", ..."""
    width = max(2, len(str(num_classes - 1)))
    return [f"c{c:0{width}d}" for c in range(num_classes)]


def generate(labels: torch.Tensor, num_classes: int, num_superclasses: int, img_size: int,
             generator: torch.Generator) -> torch.Tensor:
    """Images (B, 3, img_size, img_size) float32 in [0, 1] for class ``labels`` (B,)."""
    b = labels.shape[0]
    s = labels % num_superclasses  # (B,) superclass
    j = labels // num_superclasses  # (B,) rank inside the superclass
    u = lambda: torch.rand(b, generator=generator)  # noqa: E731 - a one-line draw, used three times below
    theta = s.float() * (math.pi / num_superclasses) + (2 * u() - 1) * ORIENT_JITTER  # (B,)
    freq = BASE_FREQ + FREQ_STEP * s.float()  # cycles per image
    per_super = math.ceil(num_classes / num_superclasses) if num_classes else 1
    angle = 2 * math.pi * (j.float() / per_super + s.float() / (num_superclasses * per_super))
    spot_x = 0.5 + SPOT_RING * torch.cos(angle) + 0.03 * (2 * u() - 1)  # (B,)
    spot_y = 0.5 + SPOT_RING * torch.sin(angle) + 0.03 * (2 * u() - 1)
    strength = SPOT_MAX * u()
    phase = 2 * math.pi * u()
    contrast = 0.6 + 0.4 * u()
    coords = (torch.arange(img_size, dtype=torch.float32) + 0.5) / img_size  # (S,) in (0, 1)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")  # (H, W)
    proj = xx[None] * torch.cos(theta)[:, None, None] + yy[None] * torch.sin(theta)[:, None, None]  # (B, H, W)
    wave = torch.sin(2 * math.pi * freq[:, None, None] * proj + phase[:, None, None])  # (B, H, W) in [-1, 1]
    hues = torch.tensor([colorsys.hsv_to_rgb(k / num_superclasses, 0.85, 0.95) for k in range(num_superclasses)])
    bright = hues[s]  # (B, 3) colour of the crests
    dark = 0.15 * torch.ones(b, 3)  # troughs: dark grey for every superclass
    mix = (0.5 + 0.5 * contrast[:, None, None] * wave)[:, None]  # (B, 1, H, W) in [0, 1]
    img = dark[:, :, None, None] + (bright - dark)[:, :, None, None] * mix  # (B, 3, H, W)
    dist2 = (xx[None] - spot_x[:, None, None]) ** 2 + (yy[None] - spot_y[:, None, None]) ** 2  # (B, H, W)
    spot = strength[:, None, None] * torch.exp(-dist2 / (2 * SPOT_RADIUS**2))
    img = img + spot[:, None]  # the same on all channels: a whitish spot
    img = img + NOISE_STD * torch.randn(img.shape, generator=generator)
    return img.clamp_(0.0, 1.0)


def make_split(num_classes: int, num_superclasses: int, per_class: int, img_size: int,
               seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (images (N*per_class, 3, H, W), labels), classes interleaved; deterministic in ``seed``."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_classes).repeat(per_class)  # (N*per_class,) 0,1,..,N-1,0,1,...
    return generate(labels, num_classes, num_superclasses, img_size, g), labels


def build_synthetic(num_classes: int = 20, num_superclasses: int = 4, img_size: int | None = None,
                    augment: str = "default", *, seed: int = 0, train_per_class: int = TRAIN_PER_CLASS,
                    val_per_class: int = VAL_PER_CLASS) -> DataBundle:
    """In-memory synthetic DataBundle. Train and val use different generator streams of ``seed``."""
    img_size = img_size or 32
    check_augment(augment)
    train = make_split(num_classes, num_superclasses, train_per_class, img_size, seed=2 * seed)
    val = make_split(num_classes, num_superclasses, val_per_class, img_size, seed=2 * seed + 1)
    # No flips (tensor_bundle): they keep colour and frequency but mirror the orientation
    # (theta -> 180 - theta), which maps one superclass onto another.
    name = "synthetic" if (num_classes, num_superclasses) == (20, 4) else f"synthetic:{num_classes}:{num_superclasses}"
    return tensor_bundle(name, train, val, class_names(num_classes, num_superclasses), augment, PREPROCESS["synthetic"],
                         planted_superclasses=planted_superclasses(num_classes, num_superclasses), stats={"seed": seed})
