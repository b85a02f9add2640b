"""TFLite / LiteRT: litert_torch.convert at fp32, fp16 (weights stored as fp16) or int8 (pt2e static
quantization calibrated on real eval images), run with ai_edge_litert's Interpreter.

The op audit lists the builtin ops of the flatbuffer and fails on Flex (select-TF) or custom ops:
the stock LiteRT runtime on a phone has neither.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mobile_vmoe.errors import MvmoeError

from . import targets
from .interrupt import check
from .quantize import as_args, pt2e_quantize
from .programs import calibration_sets, merge_audits
from .runner import Runner, SplitChain, first_line, take

_T = targets.find("tflite")
EXT, PRECISIONS = _T.suffix, _T.precisions


class FlexOpsError(MvmoeError):
    """The converted model needs ops a phone's stock LiteRT runtime does not have."""


def quant_config(precision: str, wrapper, example, calibration, dynamic: bool = False):
    """-> (module to convert, litert QuantConfig or None). int8 static: weights and activations,
    activation ranges calibrated on ``calibration``; ``dynamic``: int8 weights, activations
    quantized at run time."""
    if precision == "fp32":
        return wrapper, None
    if precision == "fp16":
        from litert_torch.generative.quantize.quant_recipes import full_fp16_recipe

        return wrapper, full_fp16_recipe()
    if calibration is None:
        raise MvmoeError("int8 needs calibration images")
    from litert_torch.quantize.pt2e_quantizer import get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig

    quantizer = _quantizer_class()().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=dynamic))
    module = pt2e_quantize(wrapper, example, calibration, quantizer, fold_quantize=False)
    return module, QuantConfig(pt2e_quantizer=quantizer)


# LiteRT's int8 SOFTMAX kernel takes only this output quantization (activations.cc: "output->params.scale
# not near 1.f / 256"): a softmax output lies in [0, 1], so 256 steps from zero point -128.
SOFTMAX_SCALE, SOFTMAX_ZERO_POINT = 1 / 256, -128


def annotate_softmax_fixed_qparams(graph: torch.fx.Graph) -> list[str]:
    """Give every softmax whose input is quantized LiteRT's fixed output qparams; -> the node names.

    litert-torch's PT2EQuantizer has such an annotation, but matches only ``aten._softmax``, while
    torch.export keeps ``aten.softmax.int``: the router's softmax (after the quantized router Linear)
    was left to inherit the calibrated scale of its consumers (top-k, gate multiply), which LiteRT
    then refuses to allocate. The attention softmax (after an unquantized bmm) stays float.
    """
    from torchao.quantization.pt2e.quantizer import FixedQParamsQuantizationSpec, QuantizationAnnotation

    spec = FixedQParamsQuantizationSpec(dtype=torch.int8, scale=SOFTMAX_SCALE, zero_point=SOFTMAX_ZERO_POINT,
                                        quant_min=-128, quant_max=127, qscheme=torch.per_tensor_affine)
    names = []
    for node in graph.nodes:
        if node.op != "call_function" or node.target not in (torch.ops.aten.softmax.int, torch.ops.aten._softmax.default):
            continue
        src = node.args[0].meta.get("quantization_annotation")
        if src is None or src.output_qspec is None:
            continue
        node.meta["quantization_annotation"] = QuantizationAnnotation(output_qspec=spec, _annotated=True)
        names.append(node.name)
    return names


def _quantizer_class():
    """litert-torch's PT2EQuantizer, plus the fixed softmax output qparams LiteRT needs."""
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer

    class SoftmaxFixedQParamsQuantizer(PT2EQuantizer):
        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            model = super().annotate(model)
            if not self.global_config.is_dynamic:
                annotate_softmax_fixed_qparams(model.graph)
            return model

    return SoftmaxFixedQParamsQuantizer


def to_tflite(module, example, precision: str, calibration=None) -> tuple[bytes, str | None]:
    """Convert ``module`` (on ``example``, a tensor or a tuple of them) -> (flatbuffer, int8 scheme).

    int8 is static (int8 weights and activations, calibrated), the router softmax included
    (``annotate_softmax_fixed_qparams``); should LiteRT still refuse to allocate the static model,
    it falls back to dynamic-range int8 and the scheme says so and why.
    """
    import litert_torch

    args = as_args(example)
    quantized, qcfg = quant_config(precision, module, example, calibration)
    content = bytes(litert_torch.convert(quantized, args, quant_config=qcfg).model_content())
    if precision != "int8":
        return content, None
    try:
        _allocate(content)
        return content, "static (int8 weights and activations, calibrated)"
    except RuntimeError as e:
        scheme = f"dynamic (int8 weights; static failed in LiteRT: {str(e).splitlines()[0][:120]})"
    quantized, qcfg = quant_config(precision, module, example, calibration, dynamic=True)
    return bytes(litert_torch.convert(quantized, args, quant_config=qcfg).model_content()), scheme


def convert(wrapper, ep, example: torch.Tensor, path: Path, *, precision: str, backend: str | None = None,
            calibration: torch.Tensor | None = None, metadata: dict | None = None) -> dict:
    if precision not in PRECISIONS:
        raise MvmoeError(f"tflite supports {', '.join(PRECISIONS)}, not {precision}")
    content, scheme = to_tflite(wrapper, example, precision, calibration)
    ops = audit(content)
    if scheme:
        ops["int8_scheme"] = scheme
    Path(path).write_bytes(content)
    return ops


def convert_split(progs: dict, path: Path, table: dict, *, precision: str, backend: str | None = None,
                  calibration: torch.Tensor | None = None, metadata: dict | None = None) -> dict:
    """Split programs as a folder of one .tflite per program (int8: each quantized on its calibration
    set; each program's int8 ends go into its ``table`` entry); -> the merged audit."""
    sets = calibration_sets(progs, calibration) if precision == "int8" else {}
    path.mkdir()
    audits = {}
    for name, (module, args) in progs.items():
        check()
        content, scheme = to_tflite(module, args, precision, sets.get(name))
        audits[name] = audit(content)
        if scheme:
            audits[name]["int8_scheme"] = scheme
        (path / f"{name}{EXT}").write_bytes(content)
    for entry in [table["trunk"], *table["tails"]]:
        entry["io_quantization"] = audits[entry["name"]].pop("io_quantization")
    out = merge_audits(audits)
    schemes = sorted({a["int8_scheme"] for a in audits.values() if "int8_scheme" in a})
    if schemes:
        out["int8_scheme"] = schemes[0] if len(schemes) == 1 else "; ".join(schemes)
    return out


def _allocate(content: bytes) -> None:
    from ai_edge_litert.interpreter import Interpreter

    Interpreter(model_content=content).allocate_tensors()


def audit(content: bytes) -> dict:
    """Builtin op names with counts; raises FlexOpsError on Flex / custom ops."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=content)
    ops: dict[str, int] = {}
    for d in interp._get_ops_details():  # the only public-ish listing of a flatbuffer's ops
        ops[d["op_name"]] = ops.get(d["op_name"], 0) + 1
    bad = sorted(o for o in ops if o.startswith("Flex") or o in ("CUSTOM", "DELEGATE") or not o.isupper())
    if bad:
        raise FlexOpsError(f"TFLite model needs ops the stock LiteRT runtime lacks: {', '.join(bad)}")
    return {"kind": "tflite builtin ops", "nodes": sum(ops.values()), "ops": dict(sorted(ops.items())),
            "flex_ops": [], "inputs": [d["dtype"].__name__ for d in interp.get_input_details()],
            "io_quantization": io_quantization(interp)}


def io_quantization(interp) -> dict:
    """How an app feeds and reads the model: {"inputs": [...], "outputs": [...]} in signature order
    (args_0, ...; output_0, ...), each {"dtype"} plus "scale" and "zero_point" where the end is
    quantized (real = scale * (q - zero_point)). A static int8 model has int8 ends."""
    sig = interp.get_signature_runner()

    def ends(details: dict, prefix: str) -> list[dict]:
        out = []
        for i in range(len(details)):
            d = details[f"{prefix}_{i}"]
            scale, zero = d["quantization"]
            q = {"dtype": d["dtype"].__name__}
            if scale:
                q.update(scale=float(scale), zero_point=int(zero))
            out.append(q)
        return out

    return {"inputs": ends(sig.get_input_details(), "args"), "outputs": ends(sig.get_output_details(), "output")}


def load_runner(path: Path, threads: int | None = None, **options):
    """-> (Runner, None); outputs are reordered to the wrapper's order (logits first) by name.
    ``loader``: mmap (the interpreter maps the file) or file (its bytes, ``model_content``)."""
    loader = take(options, "the LiteRT runner", loader="mmap")["loader"]
    from ai_edge_litert.interpreter import Interpreter

    try:
        source = {"model_path": str(path)} if loader == "mmap" else {"model_content": Path(path).read_bytes()}
        interp = Interpreter(**source, num_threads=threads or None)
        interp.allocate_tensors()
    except (ValueError, RuntimeError) as e:
        raise MvmoeError(f"{Path(path).name}: LiteRT cannot load it ({first_line(e)})") from None
    det = interp.get_input_details()[0]
    outs = sorted(interp.get_output_details(), key=lambda d: d["name"])  # output_0 (logits), output_1 (expert_probs)

    def run(x):
        interp.set_tensor(det["index"], quantize_input(x, det))
        interp.invoke()
        return [dequantize_output(interp.get_tensor(d["index"]), d) for d in outs]

    # float32 in and out, whatever the model's own I/O type: a fully int8 model is fed through its
    # input's (scale, zero point), and its outputs are dequantized
    return Runner(run, "litert", [int(s) for s in det["shape"]], "float32", threads, interp,
                  {"io_dtype": np.dtype(det["dtype"]).name}), None


def quantize_input(x, det):
    """float32 -> the input's dtype with its (scale, zero point); float (or unquantized) inputs are
    only cast."""
    dtype = np.dtype(det["dtype"])
    if dtype.kind == "f" or not det["quantization"][0]:
        return np.asarray(x).astype(dtype, copy=False)
    scale, zero = det["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale) + zero, info.min, info.max).astype(dtype)


def dequantize_output(y, det):
    if np.dtype(det["dtype"]).kind == "f" or not det["quantization"][0]:  # float, or an index (scale 0)
        return y
    scale, zero = det["quantization"]
    return ((y.astype(np.float32) - zero) * scale).astype(np.float32)


def load_split_runner(path: Path, threads: int | None = None, **options):
    """-> (Runner over a SplitChain, None): one interpreter per .tflite of the folder, the trunk now,
    tails on first use (``max_tails`` kept loaded, None: all), each run through its serving
    signature (inputs args_0, args_1, ... and outputs output_0, ... in program order)."""
    opt = take(options, "the LiteRT split runner", max_tails=None, loader="mmap")
    from ai_edge_litert.interpreter import Interpreter

    if opt["loader"] != "mmap":
        raise MvmoeError("a split LiteRT artifact loads with mmap only (one file per program)")
    folder = Path(path)

    def open_file(name):
        f = folder / f"{name}{EXT}"
        if not f.is_file():
            raise MvmoeError(f"{f} not found: a split LiteRT artifact is a folder of trunk{EXT} and tail_<e>{EXT}")
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
    chain = SplitChain(trunk, load_tail, len(list(folder.glob(f"tail_*{EXT}"))), opt["max_tails"])
    chain.input_shape = trunk.input_shape
    return chain.runner("litert", threads), None
