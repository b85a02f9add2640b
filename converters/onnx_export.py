"""ONNX: torch.onnx.export(dynamo=True) from the static ExportedProgram, onnx.checker, onnxruntime.

Named ``onnx_export`` so that ``import onnx`` keeps meaning the package.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mobile_vmoe.errors import MvmoeError

from .runner import Runner, first_line, take


def convert(wrapper, ep, example: torch.Tensor, path: Path, *, precision: str, backend: str | None = None,
            calibration: torch.Tensor | None = None, metadata: dict | None = None) -> dict:
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


def load_runner(path: Path, threads: int | None = None, **options):
    """-> (Runner, None) with onnxruntime on CPU; ``threads`` intra-op threads (one inter-op). It
    takes no options: the session reads the whole file."""
    take(options, "the ONNX Runtime runner")
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    try:
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own Fail/InvalidGraph types
        raise MvmoeError(f"{Path(path).name}: onnxruntime cannot load it ({first_line(e)})") from None
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in inp.shape]
    dtype = {"tensor(float)": "float32", "tensor(float16)": "float16"}.get(inp.type, "float32")
    return Runner(lambda x: sess.run(None, {inp.name: x}), "onnxruntime", shape, dtype, threads, sess,
                  {"providers": sess.get_providers()}), None
