"""ExecuTorch: .pte programs lowered with the XNNPACK partitioner (fp32, or int8 through the pt2e
XNNPACK quantizer calibrated on real eval images), the Core ML partitioner (for iOS; lowers here,
runs only on Apple), or portable kernels only.

The op audit is ExecuTorch's own delegation summary: per operator, how many nodes went to the
delegate and how many stay on portable kernels.
"""

from __future__ import annotations

from pathlib import Path

import torch

TARGET, EXT = "executorch", ".pte"
BACKENDS = ("xnnpack", "coreml", "portable")
PRECISIONS = {"xnnpack": ("fp32", "int8"), "coreml": ("fp32", "fp16"), "portable": ("fp32",)}


def quantize_int8_xnnpack(wrapper, example: torch.Tensor, calibration: torch.Tensor) -> torch.export.ExportedProgram:
    """pt2e static int8 (per-channel weights, per-tensor activations), calibrated one image at a time."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    gm = torch.export.export(wrapper, (example,), strict=False).module()
    prepared = prepare_pt2e(gm, quantizer)
    with torch.no_grad():
        for i in range(len(calibration)):
            prepared(calibration[i : i + 1])
    converted = convert_pt2e(prepared)
    return torch.export.export(converted, (example,), strict=False)


def partitioners(backend: str, precision: str) -> list:
    if backend == "xnnpack":
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

        return [XnnpackPartitioner()]
    if backend == "coreml":
        import coremltools as ct
        from executorch.backends.apple.coreml.compiler import CoreMLBackend
        from executorch.backends.apple.coreml.partition import CoreMLPartitioner

        cp = ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32
        return [CoreMLPartitioner(compile_specs=CoreMLBackend.generate_compile_specs(
            compute_precision=cp, minimum_deployment_target=ct.target.iOS17))]
    return []


def convert(wrapper, ep, example: torch.Tensor, path: Path, *, precision: str, backend: str | None = "xnnpack",
            calibration: torch.Tensor | None = None) -> dict:
    """Lower ``ep`` (or its int8 version) for ``backend``, write ``path`` and return the audit."""
    from executorch.exir import to_edge_transform_and_lower

    backend = backend or "xnnpack"
    if precision not in PRECISIONS[backend]:
        raise ValueError(f"executorch-{backend} supports {', '.join(PRECISIONS[backend])}, not {precision}")
    if precision == "int8":
        if calibration is None:
            raise ValueError("int8 needs calibration images")
        ep = quantize_int8_xnnpack(wrapper, example, calibration)
    edge = to_edge_transform_and_lower(ep, partitioner=partitioners(backend, precision))
    ops = audit(edge.exported_program().graph_module, backend)
    prog = edge.to_executorch()
    with open(path, "wb") as f:
        prog.write_to_file(f)
    return ops


def audit(graph_module, backend: str) -> dict:
    """Delegation summary: {op: {"delegated": n, "portable": m}} and the totals."""
    from executorch.devtools.backend_debug import get_delegation_info

    info = get_delegation_info(graph_module)
    by_op = {name: {"delegated": b.delegated, "portable": b.non_delegated}
             for name, b in sorted(info.delegation_by_operator.items())}
    return {"kind": "executorch delegation", "delegate": None if backend == "portable" else backend,
            "delegated_subgraphs": info.num_delegated_subgraphs, "delegated_nodes": info.num_delegated_nodes,
            "portable_nodes": info.num_non_delegated_nodes, "ops": by_op,
            "not_delegated": sorted(k for k, v in by_op.items() if v["portable"])}


def load_runner(path: Path, threads: int | None = None):
    """-> (run, None), or (None, reason) for Core ML-delegated programs (Apple only)."""
    if "-coreml_" in Path(path).name:
        return None, "the Core ML delegate runs only on Apple devices (lowered here, not run)"
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(Path(path)).load_method("forward")

    def run(x):
        return [o.numpy() for o in method.execute([torch.from_numpy(x)])]

    return run, None
