"""The artifact file-name format and its parser, side by side.

    <model>_<target>[-<backend>]_<precision>[-<dispatch>].<ext>
    vmoe-6x64-p32_executorch-xnnpack_fp32.pte     vit-6x64-p8_onnx_fp32-dense.onnx

The dispatch appears only when it is not the default ``gather``, so a ``--dispatch dense`` export
never replaces the gather one. ``converters.pipeline`` names artifacts with ``artifact_stem``;
``profile.report`` reads a name back with ``parse_artifact_name`` only for a measurement that carries
no keys from the artifact's .json (an app's benchmark file).
"""

from __future__ import annotations

from converters.targets import label


def artifact_stem(model_name: str, target: str, backend: str | None, precision: str, dispatch: str = "gather") -> str:
    """``<model>_<target>[-<backend>]_<precision>[-<dispatch>]`` (no suffix)."""
    return f"{model_name}_{label(target, backend)}_{precision}{'' if dispatch == 'gather' else '-' + dispatch}"


def parse_artifact_name(name: str) -> dict:
    """'vmoe-6x64-p8-e5_executorch-xnnpack_fp32.pte' -> model, target, backend, precision, dispatch
    ('..._fp32-dense.pte': the all-experts dispatch); a name not in the format -> the stem as model."""
    stem = name.rsplit(".", 1)[0] if "." in name else name
    parts = stem.split("_")
    if len(parts) < 3:
        return {"model": stem, "target": "?", "backend": None, "precision": "?", "dispatch": "gather"}
    target, _, backend = parts[-2].partition("-")
    precision, _, dispatch = parts[-1].partition("-")
    return {"model": "_".join(parts[:-2]), "target": target, "backend": backend or None, "precision": precision,
            "dispatch": dispatch or "gather"}
