"""Split expert programs: a per-image MoE as one trunk and one tail per expert, so that an app keeps
the trunk and the tails it has used in memory and leaves the other experts' weights on disk.

    trunk(image (1, C, H, W))         -> stream (1, T, D), expert_index (1, 1) int32, gate (1, 1),
                                         expert_probs (1, E)
    tail_<e>(stream (1, T, D), gate (1, 1)) -> logits (1, N)

The trunk is everything up to the router: (baked preprocessing,) patch embedding, the dense blocks
and the router, run once per image. Tail ``e`` is every block from the first MoE block on, with
expert ``e`` as a plain two-layer MLP whose output is scaled by the gate, then the final norm and
the head. Per-image routing picks one choice for all MoE blocks, so with k = 1 the chain
``trunk -> tail_<expert_index>`` computes what the single program computes; k > 1 would need
several tails per image and a combine, and is refused.

Where the programs go, per target:
    executorch  one .pte with the methods ``trunk`` and ``tail_0`` ... ``tail_<E-1>``; XNNPACK
                stores weights by content hash, so the blocks every tail shares are stored once
    tflite      a folder ``<stem>/`` of ``trunk.tflite`` and ``tail_<e>.tflite`` (one interpreter
                per file: a multi-signature model would pack every signature's weights at load)
    coreml      one multifunction .mlpackage, functions ``trunk`` and ``tail_<e>`` (iOS 18 loads
                one with MLModelConfiguration.functionName); weights shared between functions
                are stored once
The metadata .json lists the programs and how to chain them (``program_table``, docs/formats.md).

int8 (ExecuTorch XNNPACK, LiteRT): every program is pt2e-quantized on its own, the trunk on the
calibration images, every tail on the fp32 trunk's streams of them (``calibration_sets``); each
tail's expert is then an int8 Linear, which a stacked gather of expert weights cannot be.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from mobile_vmoe.errors import MvmoeError

from . import targets as T

TARGETS = {t.name: t.split_suffix for t in T.TARGETS if t.split_precisions}  # artifact suffix ("" = a folder)
TRUNK_OUTPUTS = ["stream", "expert_index", "gate", "expert_probs"]
TAIL_INPUTS = ["stream", "gate"]
CHAIN = "trunk(image) -> stream, expert_index, gate, expert_probs; tail_<expert_index>(stream, gate) -> logits"


def unsupported(target: str, backend: str | None, precision: str) -> str | None:
    """Why the split path does not export this target, backend and precision (None: it does);
    the split columns of converters.targets."""
    if target not in T.split_names():
        return f"--experts split exports to {', '.join(T.split_names())}, not {target}"
    rec = T.find(target, backend)
    if rec is None or not rec.split_precisions:
        ok = [t.backend for t in T.TARGETS if t.name == target and t.split_precisions]
        return f"--experts split: {target}-{backend} is not supported ({' or '.join(ok)})"
    if precision not in rec.split_precisions:
        return f"--experts split on {rec.label} exports {', '.join(rec.split_precisions)}, not {precision}"
    return None


def choose_layout(experts: str, cfg, target: str, backend: str | None, precision: str, *,
                  dispatch: str = "gather", decomposed_layernorm: bool = False) -> str:
    """--experts auto | fused | split for one export job -> "fused" or "split".

    ``auto`` picks split where this job can be split and the target's record says split was
    measured faster (``auto_split``: ExecuTorch XNNPACK and LiteRT): a per-image MoE with k = 1,
    the gather dispatch, a precision the split path exports, and no decomposed LayerNorm (the
    split programs keep the native op). Measured at vmoe-12x192-p32, one thread, split programs
    run at 1.00-1.04x the dense twin on XNNPACK and LiteRT in fp32 and int8, the fused gather at
    1.02-1.07x in fp32 and 1.21x (XNNPACK) / 1.40x (LiteRT) in int8 (docs/export.md). Everywhere
    else (dense and per-token models, k = 2, ONNX, ExecuTorch Core ML and portable, Core ML: its
    split package needs iOS 18 and was never timed) auto picks fused and never refuses. An explicit ``fused`` or ``split`` is returned as given (split is checked by
    check_splittable).
    """
    if experts != "auto":
        return experts
    record = T.find(target, backend)
    splittable = (record is not None and record.auto_split and cfg.is_per_image and cfg.top_k == 1
                  and dispatch == "gather" and not decomposed_layernorm and unsupported(target, backend, precision) is None)
    return "split" if splittable else "fused"


def check_splittable(cfg, target: str, backend: str | None, precision: str) -> None:
    """Split needs a per-image MoE with k = 1, and a target and precision the split path exports."""
    if not cfg.is_per_image:
        raise MvmoeError(f"--experts split: {cfg.name} is not a per-image MoE (routing={cfg.routing}, "
                         f"{cfg.num_experts} experts); only per-image routing has one expert choice per image")
    if cfg.top_k != 1:
        raise MvmoeError(f"--experts split needs top_k = 1 (this model has k = {cfg.top_k}: an image would need "
                         "several tails and a combine)")
    why = unsupported(target, backend, precision)
    if why:
        raise MvmoeError(why)


# ---------------------------------------------------------------------------------------- modules
class OneExpert(nn.Module):
    """Expert ``e`` of an ExpertBank as a plain MLP, its output scaled by the image's gate: the MoE
    MLP of a tail. Takes the gate as the keyword a Block passes its MLP."""

    def __init__(self, bank, e: int):
        super().__init__()
        D, H = bank.dim, bank.hidden
        self.fc1, self.fc2 = nn.Linear(D, H, bias=bank.bias), nn.Linear(H, D, bias=bank.bias)
        with torch.no_grad():
            self.fc1.weight.copy_(bank.w1[e].T)  # (H, D)
            self.fc2.weight.copy_(bank.w2[e].T)  # (D, H)
            if bank.bias:
                self.fc1.bias.copy_(bank.b1[e])
                self.fc2.bias.copy_(bank.b2[e])

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """x (1, T, D), gate (1, 1) -> (1, T, D)."""
        return self.fc2(F.gelu(self.fc1(x))) * gate.view(-1, 1, 1)


class Trunk(nn.Module):
    """image -> (stream, expert_index int32, gate, expert_probs): everything before the MoE blocks."""

    def __init__(self, wrapper):
        super().__init__()
        model = wrapper.model
        self.wrapper, self.first = wrapper, model.cfg.first_moe_block

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        w, model = self.wrapper, self.wrapper.model
        x = image * w.pre_scale + w.pre_shift if w.bake_preprocessing else image  # (1, C, H, W)
        x = model.embed(x)  # (1, T, D)
        for block in model.blocks[: self.first]:
            x, _ = block(x)
        route = model.router(x)  # index, gates (1, 1); logits (1, E)
        return x, route.index.to(torch.int32), route.gates, route.logits.softmax(dim=-1)


class ExpertTail(nn.Module):
    """(stream, gate) -> logits through every block from the first MoE block on, with expert ``e``."""

    def __init__(self, wrapper, e: int):
        super().__init__()
        from mobile_vmoe.models.vmoe import MoEMlp

        model = wrapper.model
        self.blocks = nn.ModuleList()
        for block in model.blocks[model.cfg.first_moe_block:]:
            moe = isinstance(block.mlp, MoEMlp)
            b = copy.deepcopy(block) if not moe else _block_with_mlp(block, OneExpert(block.mlp.experts, e))
            self.blocks.append(b)
        self.norm, self.head = copy.deepcopy(model.norm), copy.deepcopy(model.head)

    def forward(self, stream: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        x = stream  # (1, T, D)
        for block in self.blocks:
            x, _ = block(x, gate=gate) if isinstance(block.mlp, OneExpert) else block(x)
        return self.head(self.norm(x)[:, :1].flatten(1))  # (1, N) from the class token


def _block_with_mlp(block: nn.Module, mlp: nn.Module) -> nn.Module:
    """A copy of ``block`` (attention and norms) whose MLP is ``mlp``; the original is untouched."""
    original = block.mlp
    block.mlp = nn.Identity()  # do not deep-copy all E experts
    try:
        new = copy.deepcopy(block)
    finally:
        block.mlp = original
    new.mlp = mlp
    return new


def programs(wrapper, example: torch.Tensor) -> dict[str, tuple[nn.Module, tuple]]:
    """{name: (module, example args)}: the trunk on ``example`` and every tail on its stream."""
    trunk = Trunk(wrapper).eval()
    with torch.no_grad():
        stream, _, gate, _ = trunk(example)
    out = {"trunk": (trunk, (example,))}
    for e in range(wrapper.model.cfg.num_experts):
        out[f"tail_{e}"] = (ExpertTail(wrapper, e).eval(), (stream, gate))
    return out


def calibration_sets(progs: dict, calibration: torch.Tensor) -> dict[str, object]:
    """What each program is calibrated on for int8: the trunk on the calibration images, every tail on
    the fp32 trunk's (stream, gate) of all of them. A tail sees all images, not only those routed to
    its expert, so that an expert rarely chosen on the calibration images still gets activation
    ranges from real streams."""
    if calibration is None:
        raise MvmoeError("int8 needs calibration images")
    trunk = progs["trunk"][0]
    with torch.no_grad():
        streams = [trunk(calibration[i : i + 1]) for i in range(len(calibration))]
    tail_args = [(stream, gate) for stream, _, gate, _ in streams]
    return {name: (calibration if name == "trunk" else tail_args) for name in progs}


def export_programs(progs: dict, precision: str = "fp32", calibration: torch.Tensor | None = None
                    ) -> dict[str, torch.export.ExportedProgram]:
    """torch.export each program with its fixed example shapes (the static audit of every export);
    int8: each program pt2e-quantized for XNNPACK on its ``calibration_sets`` entry."""
    from .executorch import quantize_int8_xnnpack
    from .prepare import audit_static

    sets = calibration_sets(progs, calibration) if precision == "int8" else {}
    eps = {}
    with torch.no_grad():
        for name, (module, args) in progs.items():
            if precision == "int8":
                eps[name] = quantize_int8_xnnpack(module, args, sets[name])
            else:
                eps[name] = torch.export.export(module, args, strict=False)
            audit_static(eps[name])
    return eps


def program_table(progs: dict, target: str, artifact: str) -> dict:
    """The .json's "programs": names, files, inputs and outputs with shapes, and the chain."""
    def shapes(ts):
        return [list(t.shape) for t in ts]

    trunk, (image,) = progs["trunk"]
    with torch.no_grad():
        outs = trunk(image)
    file_of = (lambda n: f"{n}.tflite") if target == "tflite" else (lambda n: artifact)
    tails = [{"expert": int(name.split("_")[1]), "name": name, "file": file_of(name), "inputs": TAIL_INPUTS,
              "outputs": ["logits"]} for name in progs if name.startswith("tail_")]
    _, (stream, gate) = progs["tail_0"]
    logits_shape = list(progs["tail_0"][0](stream, gate).shape)
    return {"chain": CHAIN,
            "trunk": {"name": "trunk", "file": file_of("trunk"), "inputs": ["image"], "outputs": TRUNK_OUTPUTS,
                      "input_shapes": [list(image.shape)], "output_shapes": shapes(outs)},
            "tail_input_shapes": shapes((stream, gate)), "tail_output_shapes": [logits_shape], "tails": tails}


# -------------------------------------------------------------------------------------- convert
def convert(target: str, wrapper, example: torch.Tensor, path: Path, *, precision: str, backend: str | None,
            metadata: dict | None = None, calibration: torch.Tensor | None = None) -> tuple[dict, dict]:
    """Write the split programs of ``wrapper`` to ``path``; -> (op audit, the .json's "programs").
    int8 (ExecuTorch XNNPACK, LiteRT) quantizes every program on ``calibration_sets``."""
    progs = programs(wrapper, example)
    table = program_table(progs, target, Path(path).name)
    if metadata is not None:
        metadata["programs"] = table  # the Core ML package carries the .json's content
    if target == "tflite":
        ops, io = convert_tflite(progs, Path(path), precision, calibration)
        for entry in [table["trunk"], *table["tails"]]:  # each program's own (int8) ends
            entry["io_quantization"] = io[entry["name"]]
        return ops, table
    eps = export_programs(progs, precision, calibration)
    if target == "executorch":
        return convert_executorch(eps, Path(path), backend or "xnnpack", precision), table
    return convert_coreml(eps, progs, Path(path), precision, metadata), table


def merge_audits(audits: dict[str, dict]) -> dict:
    """One audit for all programs: the trunk's and the first tail's in full, totals over all."""
    first = next(iter(audits.values()))
    out = {"kind": first["kind"], "programs": {n: a for n, a in audits.items() if n in ("trunk", "tail_0")}}
    for key in ("nodes", "delegated_subgraphs", "delegated_nodes", "portable_nodes"):
        if key in first:
            out[key] = sum(a[key] for a in audits.values())
    ops: dict = {}
    for a in audits.values():
        for op, v in a.get("ops", {}).items():
            if isinstance(v, dict):
                acc = ops.setdefault(op, {k: 0 for k in v})
                for k in v:
                    acc[k] += v[k]
            else:
                ops[op] = ops.get(op, 0) + v
    out["ops"] = dict(sorted(ops.items()))
    for key in ("delegate", "not_delegated", "flex_ops", "compute_precision"):
        if key in first:
            out[key] = sorted({x for a in audits.values() for x in a[key]}) if isinstance(first[key], list) else first[key]
    return out


def convert_executorch(eps: dict, path: Path, backend: str, precision: str = "fp32") -> dict:
    """One .pte, one method per program, lowered with the backend's partitioner."""
    from executorch.exir import to_edge_transform_and_lower

    from .executorch import audit, partitioners

    edge = to_edge_transform_and_lower(eps, partitioner=partitioners(backend, precision))
    audits = {name: audit(edge.exported_program(name).graph_module, backend) for name in eps}
    with open(path, "wb") as f:
        edge.to_executorch().write_to_file(f)
    return merge_audits(audits)


def convert_tflite(progs: dict, path: Path, precision: str, calibration: torch.Tensor | None = None
                   ) -> tuple[dict, dict]:
    """A folder of one .tflite per program (int8: each quantized on its ``calibration_sets`` entry);
    -> (the merged op audit, {program: its io_quantization})."""
    from .interrupt import check
    from .tflite import audit, to_tflite

    sets = calibration_sets(progs, calibration) if precision == "int8" else {}
    path.mkdir()
    audits = {}
    for name, (module, args) in progs.items():
        check()
        content, scheme = to_tflite(module, args, precision, sets.get(name))
        audits[name] = audit(content)
        if scheme:
            audits[name]["int8_scheme"] = scheme
        (path / f"{name}.tflite").write_bytes(content)
    io = {name: a.pop("io_quantization") for name, a in audits.items()}
    out = merge_audits(audits)
    schemes = sorted({a["int8_scheme"] for a in audits.values() if "int8_scheme" in a})
    if schemes:
        out["int8_scheme"] = schemes[0] if len(schemes) == 1 else "; ".join(schemes)
    return out, io


def convert_coreml(eps: dict, progs: dict, path: Path, precision: str, metadata: dict | None) -> dict:
    """One mlprogram per program, merged into a multifunction .mlpackage (iOS 18)."""
    import coremltools as ct

    from .coreml import audit, write_metadata

    tmp = Path(tempfile.mkdtemp(prefix=".split-", dir=path.parent))
    try:
        desc = ct.utils.MultiFunctionDescriptor()
        audits = {}
        for name, ep in eps.items():
            _, args = progs[name]
            in_names = ["image"] if name == "trunk" else TAIL_INPUTS
            m = ct.convert(ep.run_decompositions({}), convert_to="mlprogram",
                           inputs=[ct.TensorType(name=n, shape=tuple(a.shape)) for n, a in zip(in_names, args)],
                           outputs=[ct.TensorType(name=n) for n in (TRUNK_OUTPUTS if name == "trunk" else ["logits"])],
                           compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32,
                           minimum_deployment_target=ct.target.iOS18)
            audits[name] = audit(m.get_spec(), precision)
            m.save(str(tmp / f"{name}.mlpackage"))
            desc.add_function(str(tmp / f"{name}.mlpackage"), src_function_name="main", target_function_name=name)
        desc.default_function_name = "trunk"
        ct.utils.save_multifunction(desc, str(tmp / "merged.mlpackage"))
        merged = ct.models.MLModel(str(tmp / "merged.mlpackage"), skip_model_load=True)
        if metadata:
            write_metadata(merged, metadata)
        merged.save(str(path))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return merge_audits(audits)


# ---------------------------------------------------------------------------------------- running
class SplitChain:
    """Runs the chain: the trunk always loaded, tails loaded on first use and kept in an LRU of
    ``max_tails`` (None: keep every tail loaded). Callable like a single program: image ->
    [logits, expert_probs]. ``tail_loads`` counts tail loads; ``switch_ms`` has the time of each
    (a cold tail switch: load, before the tail's first run)."""

    def __init__(self, run_trunk, load_tail, num_tails: int, max_tails: int | None = None):
        from collections import OrderedDict

        if max_tails is not None and max_tails < 1:
            raise MvmoeError(f"max_tails {max_tails}: must be at least 1")
        self.run_trunk, self.load_tail, self.num_tails, self.max_tails = run_trunk, load_tail, num_tails, max_tails
        self.tails: OrderedDict = OrderedDict()  # expert -> run(stream, gate) -> logits
        self.tail_loads, self.switch_ms = 0, []
        self.input_shape: list[int] | None = None  # the trunk's input, as the runtime reports it

    def tail(self, e: int):
        """The run function of tail ``e``, loading it (and evicting the least recently used) if needed."""
        if e in self.tails:
            self.tails.move_to_end(e)
            return self.tails[e]
        if self.max_tails is not None and len(self.tails) >= self.max_tails:
            self.tails.popitem(last=False)
        t0 = time.perf_counter()
        self.tails[e] = self.load_tail(e)
        self.switch_ms.append(1e3 * (time.perf_counter() - t0))
        self.tail_loads += 1
        return self.tails[e]

    def __call__(self, x):
        import numpy as np

        stream, index, gate, probs = self.run_trunk(x)
        e = int(np.asarray(index).reshape(-1)[0])
        return [np.asarray(self.tail(e)(stream, gate)), probs]


def executorch_chain(path: Path, threads: int | None, max_tails: int | None, loader: str = "mmap") -> SplitChain:
    """``trunk`` loaded now, ``tail_<e>`` on first use. ``loader="mmap"``: every tail is loaded
    from its own Program over the mapped file (as an app keeps one Module per tail), so evicting
    it frees its packed weights: a Method dropped from a shared Program leaves them in memory
    (measured: +4 MiB per tail at vmoe-12x192-p32). ``loader="file"``: the whole file is read
    into memory once and every method comes from that one Program."""
    import numpy as np
    from executorch.runtime import Runtime

    from .executorch import set_threads
    from .runner import first_line

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
    return chain


def litert_chain(folder: Path, threads: int | None, max_tails: int | None) -> SplitChain:
    """One interpreter per .tflite of the folder: trunk now, tails on first use, each run through
    its serving signature (inputs args_0, args_1, ... and outputs output_0, ... in program order)."""
    from ai_edge_litert.interpreter import Interpreter

    from .tflite import dequantize_output, quantize_input

    def open_file(name):
        f = Path(folder) / f"{name}.tflite"
        if not f.is_file():
            raise MvmoeError(f"{f} not found: a split LiteRT artifact is a folder of trunk.tflite and tail_<e>.tflite")
        interp = Interpreter(model_path=str(f), num_threads=threads or None)
        sig = interp.get_signature_runner()
        ins, outs = sig.get_input_details(), sig.get_output_details()  # int8 programs: int8 ends, with qparams

        def run(*xs):
            out = sig(**{f"args_{i}": quantize_input(x, ins[f"args_{i}"]) for i, x in enumerate(xs)})
            return [dequantize_output(out[f"output_{i}"], outs[f"output_{i}"]).copy() for i in range(len(outs))]

        run.input_shape = [int(v) for v in interp.get_input_details()[0]["shape"]]
        return run

    def load_tail(e):
        run = open_file(f"tail_{e}")
        return lambda s, g: run(s, g)[0]

    trunk = open_file("trunk")
    chain = SplitChain(trunk, load_tail, len(list(Path(folder).glob("tail_*.tflite"))), max_tails)
    chain.input_shape = trunk.input_shape
    return chain


def load_runner(target: str, path: Path, threads: int | None = None, max_tails: int | None = None):
    """-> (Runner, None), or (None, why) where the runtime cannot run here (Core ML off macOS).
    The runner's ``native`` is the SplitChain (its tail_loads and switch_ms)."""
    from .runner import Runner

    if target == "coreml":
        return None, "Core ML prediction needs macOS (the multifunction package is converted here, not run)"
    chain = (executorch_chain if target == "executorch" else litert_chain)(Path(path), threads, max_tails)
    runtime = {"executorch": "executorch", "tflite": "litert"}[target]
    return Runner(chain, runtime, chain.input_shape, "float32", threads, chain, {"expert_layout": "split"}), None
