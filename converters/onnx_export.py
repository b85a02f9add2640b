"""ONNX: torch.onnx.export(dynamo=True) from the static ExportedProgram, onnx.checker, onnxruntime.

Named ``onnx_export`` so that ``import onnx`` keeps meaning the package.
"""

from __future__ import annotations

from pathlib import Path

import torch

TARGET, EXT = "onnx", ".onnx"
BACKENDS = (None,)
PRECISIONS = ("fp32",)


def convert(wrapper, ep, example: torch.Tensor, path: Path, *, precision: str, backend: str | None = None,
            calibration: torch.Tensor | None = None) -> dict:
    """Write ``path`` (.onnx, weights embedded) and return the op audit: ONNX node types."""
    import onnx

    program = torch.onnx.export(ep, (example,), input_names=["image"], output_names=wrapper.output_names,
                                dynamo=True, external_data=False, verbose=False)
    program.save(str(path), external_data=False)
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    return audit(model)


def audit(model) -> dict:
    """Node types with counts; every node runs on onnxruntime's default CPU provider."""
    ops: dict[str, int] = {}
    for node in model.graph.node:
        key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
        ops[key] = ops.get(key, 0) + 1
    return {"kind": "onnx node types", "nodes": sum(ops.values()), "ops": dict(sorted(ops.items())),
            "opset": max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=None),
            "checker": "passed"}


def load_runner(path: Path, threads: int | None = None):
    """-> (run(image ndarray) -> [outputs], None) with onnxruntime on CPU."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return (lambda x: sess.run(None, {name: x})), None
