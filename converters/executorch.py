"""ExecuTorch: .pte programs lowered with the XNNPACK partitioner (fp32, or int8 through the pt2e
XNNPACK quantizer calibrated on real eval images), the Core ML partitioner (for iOS; lowers here,
runs only on Apple), or portable kernels only.

The op audit is ExecuTorch's own delegation summary: per operator, how many nodes went to the
delegate and how many stay on portable kernels.
"""

from __future__ import annotations

import re
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from mobile_vmoe.errors import MvmoeError

from . import targets
from .quantize import as_args, pt2e_quantize
from .programs import export_each, merge_audits
from .runner import Runner, SplitChain, first_line, take

_TS = [t for t in targets.TARGETS if t.name == "executorch"]
PRECISIONS = {t.backend: t.precisions for t in _TS}


def quantize_int8_xnnpack(wrapper, example, calibration) -> torch.export.ExportedProgram:
    """pt2e static int8 (per-channel weights, per-tensor activations), calibrated one call at a time
    (``example``: a tensor or a tuple of them; ``calibration``: as ``quantize.calibration_args`` takes)."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    converted = pt2e_quantize(wrapper, example, calibration, quantizer)
    return torch.export.export(converted, as_args(example), strict=False)


def partitioners(backend: str, precision: str) -> list:
    if backend == "xnnpack":
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

        return [XnnpackPartitioner()]
    if backend == "coreml":
        import coremltools as ct
        from executorch.backends.apple.coreml.compiler import CoreMLBackend
        from executorch.backends.apple.coreml.partition import CoreMLPartitioner

        cp = ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32
        ios = targets.ios_target(ct, targets.find("executorch", "coreml").min_ios)
        return [CoreMLPartitioner(compile_specs=CoreMLBackend.generate_compile_specs(
            compute_precision=cp, minimum_deployment_target=ios))]
    return []


def convert(wrapper, ep, example: torch.Tensor, path: Path, *, precision: str, backend: str | None = "xnnpack",
            calibration: torch.Tensor | None = None, metadata: dict | None = None) -> dict:
    """Lower ``ep`` (or its int8 version) for ``backend``, write ``path`` and return the audit."""
    from executorch.exir import to_edge_transform_and_lower

    backend = backend or "xnnpack"
    if precision not in PRECISIONS[backend]:
        raise MvmoeError(f"executorch-{backend} supports {', '.join(PRECISIONS[backend])}, not {precision}")
    if precision == "int8":
        if calibration is None:
            raise MvmoeError("int8 needs calibration images")
        ep = quantize_int8_xnnpack(wrapper, example, calibration)
    edge = to_edge_transform_and_lower(ep, partitioner=partitioners(backend, precision))
    ops = audit(edge.exported_program().graph_module, backend)
    prog = edge.to_executorch()
    with open(path, "wb") as f:
        prog.write_to_file(f)
    return ops


def convert_split(progs: dict, path: Path, table: dict, *, precision: str, backend: str | None = "xnnpack",
                  calibration: torch.Tensor | None = None, metadata: dict | None = None) -> dict:
    """Split programs as one .pte, one method per program, lowered with the backend's partitioner
    (int8: each program pt2e-quantized on its calibration set); -> the merged audit."""
    from executorch.exir import to_edge_transform_and_lower

    backend = backend or "xnnpack"
    eps = export_each(progs, quantize_int8_xnnpack if precision == "int8" else None, calibration)
    edge = to_edge_transform_and_lower(eps, partitioner=partitioners(backend, precision))
    audits = {name: audit(edge.exported_program(name).graph_module, backend) for name in eps}
    with open(path, "wb") as f:
        edge.to_executorch().write_to_file(f)
    return merge_audits(audits)


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


def set_threads(threads: int | None) -> int:
    """Size the ExecuTorch runtime's threadpool (process-wide: XNNPACK and the threaded portable
    kernels share it) to ``threads``, or leave it as it is for None. Returns the count in effect.

    A reset replaces the pool under programs loaded before it (running one of those afterwards
    aborts the process), so it happens only when the count changes, and before a load."""
    from executorch.extension.pybindings import portable_lib

    if threads and threads != portable_lib._threadpool_get_thread_count():
        portable_lib._unsafe_reset_threadpool(int(threads))
    return int(portable_lib._threadpool_get_thread_count())


def load_runner(path: Path, threads: int | None = None, **options):
    """-> (Runner, None), or (None, reason) for Core ML-delegated programs (Apple only). Options:
    ``per_op`` loads the program with ETDump event tracing (the Runner's ``per_op()`` summarises
    it, etdump_per_op); ``loader``: mmap (the runtime maps the file) or file (the whole file read
    into memory first; the program keeps the bytes)."""
    opt = take(options, "the ExecuTorch runner", loader="mmap", per_op=False)
    if "-coreml_" in Path(path).name:
        return None, "the Core ML delegate runs only on Apple devices (lowered here, not run)"
    from executorch.runtime import Runtime

    name = Path(path).name
    kw = {"enable_etdump": True, "debug_buffer_size": 0} if opt["per_op"] else {}
    threads = set_threads(threads)  # before loading: a delegate keeps the pool it was loaded with
    try:
        program = Runtime.get().load_program(Path(path) if opt["loader"] == "mmap" else Path(path).read_bytes(), **kw)
        method = program.load_method("forward")
    except (RuntimeError, ValueError) as e:
        raise MvmoeError(f"{name}: the ExecuTorch runtime cannot load it ({first_line(e)})") from None
    if method is None:
        raise MvmoeError(f"{name}: no 'forward' method (methods: {sorted(program.method_names)})")
    info = method.metadata.input_tensor_meta(0)
    shape = [int(s) for s in info.sizes()]

    def run(x):
        return [o.numpy() for o in method.execute([torch.from_numpy(x)])]

    per_op = (lambda: etdump_per_op(program, Path(path))) if opt["per_op"] else None
    return Runner(run, "executorch", shape, "float32", threads, program, per_op=per_op), None


def etdump_per_op(program, path: Path, out_dir: Path | None = None, top: int = 25) -> list[dict]:
    """Per-op mean time per inference from the program's ETDump, largest first.

    The ETDump holds one event per op call per execute (warmup included: every run of the same op
    averages the same). Delegated ops (XNNPACK's own names, e.g. "Fully Connected (NC, F32) GEMM")
    come with `delegated: true`; "DELEGATE_CALL" / "OPERATOR_CALL" wrappers and the whole-method
    "Method::execute" event are dropped because they contain the ops listed. `ms` = sum over the op's calls in one inference of their mean time.
    """
    from executorch.devtools import Inspector

    out_dir = Path(out_dir or tempfile.mkdtemp(prefix="mvmoe-etdump-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    etdp = out_dir / (path.stem + ".etdp")
    program.write_etdump_result_to_file(str(etdp), str(out_dir / (path.stem + ".debug.bin")))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        inspector = Inspector(etdump_path=str(etdp))
    agg: dict[str, dict] = {}
    for block in inspector.event_blocks:
        if block.name != "Execute":
            continue
        for ev in block.events:
            if ev.name in ("DELEGATE_CALL", "OPERATOR_CALL") or ev.name.startswith("Method::") or ev.perf_data is None:
                continue
            name = re.sub(r" #\d+$", "", ev.name).removeprefix("native_call_")
            a = agg.setdefault(name, {"op": name, "delegated": bool(ev.is_delegated_op), "calls": 0, "ms": 0.0})
            a["calls"] += 1
            a["ms"] += float(np.mean(ev.perf_data.raw))
    rows = sorted(agg.values(), key=lambda r: -r["ms"])[:top]
    for r in rows:
        r["ms"] = round(r["ms"], 5)
    return rows


def load_split_runner(path: Path, threads: int | None = None, **options):
    """-> (Runner over a SplitChain, None): ``trunk`` loaded now, ``tail_<e>`` on first use.
    ``loader="mmap"``: every tail is loaded from its own Program over the mapped file (as an app
    keeps one Module per tail), so evicting it frees its packed weights: a Method dropped from a
    shared Program leaves them in memory (measured: +4 MiB per tail at vmoe-12x192-p32).
    ``loader="file"``: the whole file is read into memory once and every method comes from that
    one Program. ``max_tails``: the tails kept loaded (None: all)."""
    opt = take(options, "the ExecuTorch split runner", max_tails=None, loader="mmap")
    loader, max_tails = opt["loader"], opt["max_tails"]
    from executorch.runtime import Runtime

    set_threads(threads)
    source = Path(path) if loader == "mmap" else Path(path).read_bytes()
    try:
        program = Runtime.get().load_program(source)
        trunk = program.load_method("trunk")
    except (RuntimeError, ValueError) as e:
        raise MvmoeError(f"{Path(path).name}: the ExecuTorch runtime cannot load its trunk ({first_line(e)})") from None

    def run_trunk(x):
        return [np.array(o.numpy()) for o in trunk.execute([torch.from_numpy(x)])]  # copies: buffers are reused

    def load_tail(e):
        own = Runtime.get().load_program(source) if loader == "mmap" else program
        method = own.load_method(f"tail_{e}")

        def run(s, g, own=own):  # holds its Program (and the file's bytes) while the tail lives
            return np.array(method.execute([torch.from_numpy(s), torch.from_numpy(g)])[0].numpy())

        return run

    tails = sum(1 for name in program.method_names if name.startswith("tail_"))
    chain = SplitChain(run_trunk, load_tail, tails, max_tails)
    chain.program, chain.input_shape = program, [int(s) for s in trunk.metadata.input_tensor_meta(0).sizes()]
    return chain.runner("executorch", threads), None
