"""Core ML: coremltools 9 from the static ExportedProgram to an mlprogram .mlpackage, fp32 or fp16
compute precision, with the labels and the whole metadata .json in user_defined_metadata.

Prediction needs macOS (the Core ML framework); on Linux the audit reads the MIL ops from the spec
and parity is recorded as not run.
"""

from __future__ import annotations

import platform
import shutil
import tempfile
from pathlib import Path

import torch

from mobile_vmoe.errors import MvmoeError
from mobile_vmoe.fileio import to_json

from . import targets
from .programs import export_each, input_names, merge_audits, output_names
from .runner import Runner, first_line, take

_T = targets.find("coreml")
EXT, PRECISIONS = _T.suffix, _T.precisions


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
        minimum_deployment_target=targets.ios_target(ct, _T.min_ios),
    )
    if metadata:
        write_metadata(mlmodel, metadata)
    ops = audit(mlmodel.get_spec(), precision)
    mlmodel.save(str(path))
    return ops


def convert_split(progs: dict, path: Path, table: dict, *, precision: str, backend: str | None = None,
                  calibration: torch.Tensor | None = None, metadata: dict | None = None) -> dict:
    """Split programs as one mlprogram each, merged into a multifunction .mlpackage (functions
    ``trunk`` and ``tail_<e>``, iOS 18 loads one with MLModelConfiguration.functionName); -> the
    merged audit. ``metadata`` (with ``table`` as its "programs") goes into the package."""
    import coremltools as ct

    tmp = Path(tempfile.mkdtemp(prefix=".split-", dir=Path(path).parent))
    try:
        desc = ct.utils.MultiFunctionDescriptor()
        audits = {}
        for name, ep in export_each(progs).items():
            _, args = progs[name]
            m = ct.convert(ep.run_decompositions({}), convert_to="mlprogram",
                           inputs=[ct.TensorType(name=n, shape=tuple(a.shape)) for n, a in zip(input_names(name), args)],
                           outputs=[ct.TensorType(name=n) for n in output_names(name)],
                           compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32,
                           minimum_deployment_target=targets.ios_target(ct, _T.split_min_ios))
            audits[name] = audit(m.get_spec(), precision)
            m.save(str(tmp / f"{name}{EXT}"))
            desc.add_function(str(tmp / f"{name}{EXT}"), src_function_name="main", target_function_name=name)
        desc.default_function_name = "trunk"
        ct.utils.save_multifunction(desc, str(tmp / f"merged{EXT}"))
        merged = ct.models.MLModel(str(tmp / f"merged{EXT}"), skip_model_load=True)
        if metadata:
            write_metadata(merged, metadata)  # converters.split put the table into it
        merged.save(str(path))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return merge_audits(audits)


def load_split_runner(path: Path, threads: int | None = None, **options):
    """Core ML prediction needs macOS: -> (None, why) here (the multifunction package is converted
    here, not run)."""
    take(options, "the Core ML split runner", max_tails=None)
    return None, "Core ML prediction needs macOS (the multifunction package is converted here, not run)"


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


def load_runner(path: Path, threads: int | None = None, **options):
    """-> (Runner, None) on macOS, else (None, why). ``compute_units``: cpu (parity: the most
    reproducible numbers) or all (CPU, GPU and Neural Engine, as an app would run it)."""
    compute_units = take(options, "the Core ML runner", compute_units="cpu")["compute_units"]
    if compute_units not in ("cpu", "all"):
        raise MvmoeError(f"compute_units {compute_units!r}: expected cpu or all")
    if platform.system() != _T.runs_on:
        return None, "Core ML prediction needs macOS"
    import coremltools as ct

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
