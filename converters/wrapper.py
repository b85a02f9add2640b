"""The export wrapper: what every converter converts. ``prepare_for_export`` never touches the
training model: it deep-copies it, puts the copy in eval mode, picks the dispatch (``gather``: the
top-k index selects k expert weight stacks of a fixed shape; ``dense``: every expert runs, for
backends that cannot gather) and the attention form, and wraps it so the graph has the app's
interface::

    image (1, 3, H, W) float32  ->  logits (1, N) [, expert_probs (1, E)]

With ``bake_preprocessing`` the input is raw RGB in [0, 255] and ``(x / 255 - mean) / std`` runs
inside the graph, so an app only resizes.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from mobile_vmoe.errors import MvmoeError

SCALE = 255.0  # raw pixels are RGB in [0, SCALE]


class ExportWrapper(nn.Module):
    """The exported interface: image -> (logits, expert_probs) for per-image MoE, else (logits,).

    ``expert_probs`` is the softmax of the router logits: expert i <-> superclass i, so the app can
    show an image's superclass without a second model.
    """

    def __init__(self, model: nn.Module, mean=None, std=None, bake_preprocessing: bool = False):
        super().__init__()
        self.model = model
        self.bake_preprocessing = bake_preprocessing
        self.per_image_moe = model.router is not None
        self.preprocess = BakedNormalize(mean, std) if bake_preprocessing else nn.Identity()

    @property
    def output_names(self) -> list[str]:
        return ["logits", "expert_probs"] if self.per_image_moe else ["logits"]

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feats, route, _ = self.model.forward_features(self.preprocess(image))  # (1, T, D)
        logits = self.model.forward_head(feats)  # (1, N)
        if route is None:
            return (logits,)
        return logits, route.logits.softmax(dim=-1)  # (1, N), (1, E)


class BakedNormalize(nn.Module):
    """Raw RGB [0, 255] (1, C, H, W) -> normalised: (x / 255 - mean) / std == x * scale + shift,
    one mul and one add in the graph."""

    def __init__(self, mean, std):
        super().__init__()
        mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)  # (1, C, 1, 1)
        std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.register_buffer("scale", 1.0 / (SCALE * std), persistent=False)
        self.register_buffer("shift", -mean / std, persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return image * self.scale + self.shift


def prepare_for_export(model: nn.Module, *, dispatch: str = "gather", fused_attention: bool = False,
                       bake_preprocessing: bool = False, mean=None, std=None) -> ExportWrapper:
    """A deep copy of ``model`` in eval mode, ready for torch.export. The original is untouched.

    fused_attention=False spells attention as slice -> bmm -> softmax -> bmm, which XNNPACK, LiteRT and
    Core ML take whole (see docs/export.md for the measurements behind the default).
    """
    if dispatch not in ("gather", "dense"):
        raise MvmoeError(f"export dispatch {dispatch!r}: expected gather (static top-k) or dense (all experts)")
    m = copy.deepcopy(model).eval()
    if m.cfg.is_per_image:
        m.set_dispatch(dispatch)
    m.set_fused_attention(fused_attention)
    for p in m.parameters():
        p.requires_grad_(False)
    if bake_preprocessing and (mean is None or std is None):
        raise MvmoeError("bake_preprocessing needs the dataset mean and std")
    return ExportWrapper(m, mean, std, bake_preprocessing).eval()
