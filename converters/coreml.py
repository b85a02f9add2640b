"""Core ML: coremltools 9 from the static ExportedProgram to an mlprogram .mlpackage, fp32 or fp16
compute precision, with the labels and the whole metadata .json in user_defined_metadata.

Prediction needs macOS (the Core ML framework); on Linux the audit reads the MIL ops from the spec
and parity is recorded as not run.
"""

from __future__ import annotations

import platform
from pathlib import Path

import torch

from mobile_vmoe.errors import MvmoeError
from mobile_vmoe.fileio import to_json

from . import targets

_T = targets.find("coreml")
TARGET, EXT, BACKENDS, PRECISIONS = _T.name, _T.suffix, (None,), _T.precisions


def convert(wrapper, ep, example: torch.Tensor, path: Path, *, precision: str, backend: str | None = None,
            calibration: torch.Tensor | None = None, metadata: dict | None = None) -> dict:
    import coremltools as ct

    if precision not in PRECISIONS:
        raise MvmoeError(f"coreml supports {', '.join(PRECISIONS)}, not {precision}")
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
    ud["labels"] = to_json(meta["labels"])
    ud["mvmoe"] = to_json({k: v for k, v in meta.items() if k not in ("parity", "ops")})


def audit(spec, precision: str) -> dict:
    """MIL op types with counts, from the main function of the mlprogram."""
    ops: dict[str, int] = {}
    for fn in spec.mlProgram.functions.values():
        for block in fn.block_specializations.values():
            for op in block.operations:
                ops[op.type] = ops.get(op.type, 0) + 1
    return {"kind": "core ml mil ops", "nodes": sum(ops.values()), "ops": dict(sorted(ops.items())),
            "compute_precision": precision}


def load_runner(path: Path, threads: int | None = None, compute_units: str = "cpu"):
    """-> (Runner, None) on macOS, else (None, why). ``compute_units``: cpu (parity: the most
    reproducible numbers) or all (CPU, GPU and Neural Engine, as an app would run it)."""
    if platform.system() != "Darwin":
        return None, "Core ML prediction needs macOS"
    import coremltools as ct

    from .runner import Runner, first_line

    units = {"cpu": ct.ComputeUnit.CPU_ONLY, "all": ct.ComputeUnit.ALL}[compute_units]
    try:
        m = ct.models.MLModel(str(path), compute_units=units)
    except Exception as e:  # noqa: BLE001 - coremltools raises plain Exception on a bad package
        raise MvmoeError(f"{Path(path).name}: Core ML cannot load it ({first_line(e)})") from None
    spec = m.get_spec().description
    if not spec.input:
        raise MvmoeError(f"{Path(path).name}: the model declares no input")
    in_name = spec.input[0].name
    names = [o.name for o in spec.output]

    def run(x):
        out = m.predict({in_name: x})
        return [out[n] for n in names]

    shape = [int(s) for s in spec.input[0].type.multiArrayType.shape]
    return Runner(run, "coreml", shape, "float32", None, m, {"compute_units": compute_units}), None
