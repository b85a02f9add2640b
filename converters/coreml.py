"""Core ML: coremltools 9 from the static ExportedProgram to an mlprogram .mlpackage, fp32 or fp16
compute precision, with the labels and the whole metadata .json in user_defined_metadata.

Prediction needs macOS (the Core ML framework); on Linux the audit reads the MIL ops from the spec
and parity is recorded as not run.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import torch

TARGET, EXT = "coreml", ".mlpackage"
BACKENDS = (None,)
PRECISIONS = ("fp32", "fp16")


def convert(wrapper, ep, example: torch.Tensor, path: Path, *, precision: str, backend: str | None = None,
            calibration: torch.Tensor | None = None, metadata: dict | None = None) -> dict:
    import coremltools as ct

    if precision not in PRECISIONS:
        raise ValueError(f"coreml supports {', '.join(PRECISIONS)}, not {precision}")
    mlmodel = ct.convert(
        ep.run_decompositions({}),
        convert_to="mlprogram",
        inputs=[ct.TensorType(name="image", shape=tuple(example.shape))],
        outputs=[ct.TensorType(name=n) for n in wrapper.output_names],
        compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32,
        minimum_deployment_target=ct.target.iOS17,
    )
    if metadata:
        write_metadata(mlmodel, metadata)
    ops = audit(mlmodel.get_spec(), precision)
    mlmodel.save(str(path))
    return ops


def write_metadata(mlmodel, meta: dict) -> None:
    """Labels and the .json's content where Xcode and MLModel.modelDescription show them."""
    mlmodel.short_description = f"{meta['model']} ({meta['precision']}), {len(meta['labels'])} classes"
    ud = mlmodel.user_defined_metadata
    ud["labels"] = json.dumps(meta["labels"])
    ud["mvmoe"] = json.dumps({k: v for k, v in meta.items() if k not in ("parity", "ops")})


def read_metadata(path: Path) -> dict:
    """The user_defined_metadata of a saved .mlpackage (readable on Linux)."""
    import coremltools as ct

    spec = ct.utils.load_spec(str(path))
    return dict(spec.description.metadata.userDefined)


def audit(spec, precision: str) -> dict:
    """MIL op types with counts, from the main function of the mlprogram."""
    ops: dict[str, int] = {}
    for fn in spec.mlProgram.functions.values():
        for block in fn.block_specializations.values():
            for op in block.operations:
                ops[op.type] = ops.get(op.type, 0) + 1
    return {"kind": "core ml mil ops", "nodes": sum(ops.values()), "ops": dict(sorted(ops.items())),
            "compute_precision": precision}


def load_runner(path: Path, threads: int | None = None):
    if platform.system() != "Darwin":
        return None, "Core ML prediction needs macOS"
    import coremltools as ct

    m = ct.models.MLModel(str(path), compute_units=ct.ComputeUnit.CPU_ONLY)
    names = [o.name for o in m.get_spec().description.output]

    def run(x):
        out = m.predict({"image": x})
        return [out[n] for n in names]

    return run, None
