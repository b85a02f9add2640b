"""The library versions an artifact's .json records (``versions``, in build_metadata)."""

from __future__ import annotations

import importlib.metadata as md


def versions() -> dict:
    out = {}
    for name in ("mvmoe", "torch", "executorch", "coremltools", "litert-torch", "ai-edge-litert", "onnx",
                 "onnxruntime", "onnxscript"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out
