"""pt2e static int8 quantization, shared by the ExecuTorch and LiteRT converters."""

from __future__ import annotations

import torch
import torch.nn as nn

from .interrupt import check


def as_args(example) -> tuple:
    """One input tensor or a tuple of them -> the argument tuple."""
    return example if isinstance(example, tuple) else (example,)


def calibration_args(calibration) -> list[tuple]:
    """Calibration data -> one argument tuple per call: images (n, C, H, W) give n calls of one image
    (artifacts have batch 1); a list of argument tuples (e.g. a split tail's (stream, gate)) is used as is."""
    if isinstance(calibration, torch.Tensor):
        return [(calibration[i : i + 1],) for i in range(len(calibration))]
    return list(calibration)


def pt2e_quantize(wrapper: nn.Module, example, calibration, quantizer, **convert_kw) -> torch.fx.GraphModule:
    """pt2e static quantization: export on ``example`` (a tensor or a tuple of them), insert
    ``quantizer``'s observers, run every call of ``calibration`` (``calibration_args``), convert.
    ``convert_kw`` goes to convert_pt2e."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    prepared = prepare_pt2e(torch.export.export(wrapper, as_args(example), strict=False).module(), quantizer)
    with torch.no_grad():
        for args in calibration_args(calibration):
            check()
            prepared(*args)
    return convert_pt2e(prepared, **convert_kw)
