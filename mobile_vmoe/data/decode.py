"""Decoded images to 8-bit RGB, high bit depths scaled rather than clipped.

Pillow opens a 16-bit grayscale PNG as mode ``I;16`` (``I;16B`` big-endian, or ``I`` in older
releases) and ``convert("RGB")`` clips every value above 255 to 255: a normal 16-bit photo turns
almost all white. ``to_rgb8`` maps the full range instead:

    I;16, I;16B, I;16L, I;16N, I   v in [0, 65535]  ->  round(v / 257)   (0 -> 0, 65535 -> 255)
                                   (I: values outside [0, 65535] are clipped to it first)
    F (32-bit float)               max <= 1: v in [0, 1] -> round(255 v); else v in [0, 255] -> round(v)
                                   (clipped; NaN -> 0)
    anything else (L, P, RGB, RGBA, CMYK, LA, 1, ...)  Pillow's convert("RGB"); 16-bit RGB(A) PNGs
                                   already arrive as 8-bit RGB(A) (Pillow keeps the high byte)

Every image-loading path of the project goes through it (ImageFolder decoding).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def gray_to_uint8(a: np.ndarray, mode: str) -> np.ndarray:
    """(H, W) pixel values of a high-bit-depth ``mode`` -> (H, W) uint8, by the table above."""
    a = np.asarray(a, dtype=np.float64)
    if mode == "F":
        a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
        a = a * 255.0 if a.size and a.max() <= 1.0 else a
        return np.clip(np.rint(a), 0, 255).astype(np.uint8)
    return np.rint(np.clip(a, 0, 65535) / 257.0).astype(np.uint8)


def to_rgb8(im):
    """A PIL image of any mode -> an 8-bit RGB PIL image (decodes it fully: a truncated file raises
    OSError here)."""
    if im.mode in SIXTEEN_BIT or im.mode == "F":
        gray = gray_to_uint8(np.asarray(im), im.mode)  # (H, W)
        return Image.fromarray(gray).convert("RGB")  # uint8 (H, W): mode L
    return im.convert("RGB")
