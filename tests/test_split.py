"""Split expert programs: trunk + one tail per expert, the chain equals the single program, the LRU
of tails, the refusals, and real ExecuTorch / LiteRT / Core ML split exports."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import mvmoe
from helpers import tiny_checkpoint, tiny_moe
from mobile_vmoe import create_model
from mobile_vmoe.artifact import CHAIN
from converters import programs as PR
from converters import split
from converters import targets as T
from converters.target_modules import load_runner
from converters.runner import SplitChain
from converters.wrapper import prepare_for_export
from mobile_vmoe.errors import MvmoeError
from mobile_vmoe.models.programs import OneExpert
from mobile_vmoe.models.routing import ImageRoute


# the tiny MoE one block deeper (the last 2 MoE), 7 classes, E = 3 (T = 5 tokens)
SPLIT = dict(num_classes=7, num_experts=3, depth=4, seed=0)


def test_one_expert_is_the_banks_expert_times_the_gate():
    bank = tiny_moe(**SPLIT).eval().blocks[-1].mlp.experts
    x, gate = torch.randn(1, 5, 32), torch.tensor([[0.25]])
    with torch.no_grad():
        got = OneExpert(bank, 2)(x, gate)
        want = 0.25 * bank.expert(2, x)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("options", [{}, {"qk_norm": True}, {"parallel_block": True}, {"bias": False}])
def test_every_tail_computes_the_model_with_that_expert(options):
    """tail_e(stream, gate) == the MoE blocks run with the route forced to expert e."""
    model = tiny_moe(**SPLIT, **options).eval()
    wrapper = prepare_for_export(model)
    progs = PR.programs(wrapper, torch.randn(1, 3, 16, 16))
    trunk, (image,) = progs["trunk"]
    with torch.no_grad():
        stream, index, gate, probs = trunk(image)
        assert index.dtype == torch.int32 and index.shape == (1, 1) and gate.shape == (1, 1) and probs.shape == (1, 3)
        for e in range(3):
            x = stream
            route = ImageRoute(logits=None, index=torch.tensor([[e]]), gates=gate)
            for block in model.blocks[model.cfg.first_moe_block:]:
                x, _ = block(x, route=route)
            want = model.forward_head(model.norm(x))
            torch.testing.assert_close(progs[f"tail_{e}"][0](stream, gate), want, atol=1e-5, rtol=0)


def test_the_chain_is_the_single_program_on_its_own_choice():
    wrapper = prepare_for_export(tiny_moe(**SPLIT).eval(), bake_preprocessing=True, mean=[0.5] * 3, std=[0.25] * 3)
    progs = PR.programs(wrapper, torch.zeros(1, 3, 16, 16))
    with torch.no_grad():
        for i in range(8):
            image = 255 * torch.rand(1, 3, 16, 16)
            logits, probs = wrapper(image)
            stream, index, gate, p = progs["trunk"][0](image)
            torch.testing.assert_close(progs[f"tail_{int(index)}"][0](stream, gate), logits, atol=1e-5, rtol=0)
            torch.testing.assert_close(p, probs, atol=0, rtol=0)


def test_program_table_names_files_shapes_and_chain():
    progs = PR.programs(prepare_for_export(tiny_moe(**SPLIT).eval()), torch.zeros(1, 3, 16, 16))
    t = PR.program_table(progs, "tflite", "m_tflite_fp32-split")
    assert t["trunk"] == {"name": "trunk", "file": "trunk.tflite", "inputs": ["image"], "outputs": PR.TRUNK_OUTPUTS,
                          "input_shapes": [[1, 3, 16, 16]], "output_shapes": [[1, 5, 32], [1, 1], [1, 1], [1, 3]]}
    assert [(d["expert"], d["name"], d["file"]) for d in t["tails"]] == [(e, f"tail_{e}", f"tail_{e}.tflite") for e in range(3)]
    assert t["tail_input_shapes"] == [[1, 5, 32], [1, 1]] and t["tail_output_shapes"] == [[1, 7]]
    assert {d["file"] for d in PR.program_table(progs, "executorch", "m.pte")["tails"]} == {"m.pte"}


def test_lru_of_tails_hand_worked():
    """max_tails 2, images routed to 0, 1, 0, 2, 1: loads 0, 1, 2 (evicts 1), 1 (evicts 0)."""
    loads = []

    def load_tail(e):
        loads.append(e)
        return lambda s, g: np.array([[float(e)]])

    route = iter([0, 1, 0, 2, 1])
    chain = SplitChain(lambda x: [x, np.array([[next(route)]], np.int32), np.ones((1, 1)), None], load_tail, 3, 2)
    outs = [float(chain(np.zeros(1))[0][0, 0]) for _ in range(5)]
    assert outs == [0.0, 1.0, 0.0, 2.0, 1.0]
    assert loads == [0, 1, 2, 1] and chain.tail_loads == 4 and len(chain.switch_ms) == 4
    assert list(chain.tails) == [2, 1]
    with pytest.raises(MvmoeError, match="max_tails"):
        SplitChain(None, None, 3, 0)


@pytest.mark.parametrize("kw, target, precision, message", [
    ({"top_k": 2}, "executorch", "fp32", "top_k = 1"),
    ({"routing": "token"}, "executorch", "fp32", "not a per-image MoE"),
    ({}, "onnx", "fp32", "exports to coreml, executorch, tflite"),
    ({}, "executorch-coreml", "fp16", "executorch-coreml is not supported \\(xnnpack or portable\\)"),
    ({}, "coreml", "int8", "exports fp32, fp16, not int8"),
    ({}, "executorch-portable", "int8", "executorch-portable exports fp32, not int8"),
])
def test_what_split_refuses(kw, target, precision, message):
    target, _, backend = target.partition("-")
    with pytest.raises(MvmoeError, match=message):
        split.check_splittable(tiny_moe(**SPLIT, **kw).cfg, target, backend or None, precision)
    with pytest.raises(MvmoeError, match="not a per-image MoE"):
        split.check_splittable(create_model("vit-6x64-p32", depth=2, width=32, heads=2, img_size=16,
                                            patch_size=8).cfg, "executorch", None, "fp32")


def test_cli_refusals_are_one_line(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    for args, message in [(("--experts", "bogus"), "--experts 'bogus'"),
                          (("--experts", "split", "--dispatch", "dense"), "--dispatch dense does not apply"),
                          (("--experts", "split", "--backend", "portable", "--precision", "int8"), "exports fp32, not int8")]:
        code, out, err = mvmoe("export", str(ckpt), "--target", "executorch", "--out", str(tmp_path / "x"), *args)
        assert code == 1 and message in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.slow
@pytest.mark.parametrize("target", ["executorch", "tflite"])
def test_split_export_matches_the_single_program_export(tmp_path, target):
    """Both exports of one checkpoint on the digits eval images: the chained programs agree with
    the single-program artifact within 1e-5; the .json describes the programs; latency reports
    the cold tail switches apart."""
    from converters.pipeline import export_checkpoint
    from converters.images import eval_images
    from converters.parity import run_all
    from mobile_vmoe.profile.latency import profile_latency

    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    (one,) = export_checkpoint(ckpt, target, out_dir=tmp_path / "one", parity_images=32, parity_data="digits",
                               experts="fused")
    (res,) = export_checkpoint(ckpt, target, out_dir=tmp_path / "split", parity_images=32,
                               parity_data="digits", experts="split")
    assert one.ok and res.ok, (one.error, res.error)
    meta = json.loads(res.artifact.with_suffix(".json").read_text())
    assert meta["dispatch"] == "split" and meta["expert_layout"] == "split" and meta["parity"]["max_abs_diff"] < 1e-5
    assert [t["name"] for t in meta["programs"]["tails"]] == ["tail_0", "tail_1"]
    if target == "tflite":
        assert res.artifact.is_dir() and sorted(p.name for p in res.artifact.iterdir()) == \
            ["tail_0.tflite", "tail_1.tflite", "trunk.tflite"]
    single, _ = load_runner(T.find(target), one.artifact)
    chain, _ = load_runner(T.find(target), res.artifact, split=True)
    images = eval_images(torch.load(ckpt, weights_only=False), count=32, spec="digits").inputs(False)
    np.testing.assert_allclose(run_all(chain, images), run_all(single, images), atol=1e-5, rtol=0)
    lat = profile_latency(res.artifact, warmup=1, runs=3, threads=1)
    assert lat["expert_layout"] == "split" and lat["tails"] == 2 and len(lat["tail_switch_ms"]) == 1
    # tail_switch_ms is the load alone (the apps' meaning); load + first run of the same call is apart
    assert lat["tail_load_run_ms"][0] >= lat["tail_switch_ms"][0] and lat["tail_switch_median_ms"] == pytest.approx(lat["tail_switch_ms"][0])
    assert lat["model"] == meta["model"] and lat["dispatch"] == "split"


def test_int8_calibration_sets_are_the_images_and_the_fp32_trunks_streams():
    """The trunk is calibrated on the images; every tail on the (stream, gate) the fp32 trunk gives
    for each of them, whichever expert it chose."""
    progs = PR.programs(prepare_for_export(tiny_moe(**SPLIT).eval()), torch.zeros(1, 3, 16, 16))
    images = torch.randn(4, 3, 16, 16)
    sets = PR.calibration_sets(progs, images)
    assert sets["trunk"] is images and sorted(sets) == ["tail_0", "tail_1", "tail_2", "trunk"]
    with torch.no_grad():
        for i, (stream, gate) in enumerate(sets["tail_2"]):
            want_stream, _, want_gate, _ = progs["trunk"][0](images[i : i + 1])
            torch.testing.assert_close(stream, want_stream, atol=0, rtol=0)
            torch.testing.assert_close(gate, want_gate, atol=0, rtol=0)
    assert len(sets["tail_0"]) == 4 and sets["tail_0"] == sets["tail_1"]
    with pytest.raises(MvmoeError, match="int8 needs calibration images"):
        PR.export_each(progs, quantize=lambda m, a, c: None, calibration=None)


@pytest.mark.slow
@pytest.mark.parametrize("target", ["executorch", "tflite"])
def test_int8_split_runs_every_program_in_int8(tmp_path, target):
    """int8 split on the digits eval images: every program quantized (the tails' Linears are int8:
    on the XNNPACK delegate, or LiteRT's static int8 FULLY_CONNECTED, which the router softmax's
    fixed output qparams let LiteRT allocate), and the chain stays close to PyTorch: the logits of
    this untrained 16-px model span a few tenths, int8 moves them by a few hundredths."""
    from converters.pipeline import export_checkpoint

    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    (res,) = export_checkpoint(ckpt, target, precision="int8", out_dir=tmp_path, parity_images=32,
                               parity_data="digits", experts="split", max_top1_drop=1.0)
    assert res.ok, res.error
    meta = json.loads(res.artifact.with_suffix(".json").read_text())
    assert meta["precision"] == "int8" and meta["dispatch"] == "split" and meta["parity"]["tails_used"] >= 1
    ops = meta["ops"]
    if target == "tflite":
        from ai_edge_litert.interpreter import Interpreter

        assert ops["int8_scheme"].startswith("static")
        entries = {p["name"]: p for p in [meta["programs"]["trunk"], *meta["programs"]["tails"]]}
        for name in ("trunk", "tail_0", "tail_1"):
            interp = Interpreter(model_path=str(res.artifact / f"{name}.tflite"))
            sig = interp.get_signature_runner()  # the .json tells an app each program's int8 ends
            io = entries[name]["io_quantization"]
            for ends, details, prefix in ((io["inputs"], sig.get_input_details(), "args"),
                                          (io["outputs"], sig.get_output_details(), "output")):
                assert len(ends) == len(details)
                for i, end in enumerate(ends):
                    d = details[f"{prefix}_{i}"]
                    assert end["dtype"] == d["dtype"].__name__
                    if end["dtype"] == "int8":
                        assert (end["scale"], end["zero_point"]) == pytest.approx(d["quantization"])
            if name != "trunk":
                assert io["outputs"][0]["dtype"] == "int8"  # a tail's logits: int8, with that tail's own scale
            dtype = {t["index"]: t["dtype"] for t in interp.get_tensor_details()}
            fcs = [op for op in interp._get_ops_details() if op["op_name"] == "FULLY_CONNECTED"]
            assert fcs and all(dtype[op["inputs"][1]] == np.int8 for op in fcs), name  # int8 weights
            assert all(dtype[op["inputs"][0]] == np.int8 for op in fcs), name  # int8 activations
    else:
        for name in ("trunk", "tail_0"):
            tail = ops["programs"][name]["ops"]
            linear, weights = tail["aten_linear_default"], tail["quantized_decomposed_dequantize_per_channel_default"]
            convs = 1 if name == "trunk" else 0  # the patch embedding's conv has per-channel int8 weights too
            assert linear["portable"] == 0 and linear["delegated"] + convs == weights["delegated"] > convs, name
    assert meta["parity"]["max_abs_diff"] < 0.1


@pytest.mark.slow
def test_coreml_split_is_one_multifunction_package(tmp_path):
    import coremltools as ct

    from converters.pipeline import export_checkpoint

    (res,) = export_checkpoint(tiny_checkpoint(tmp_path / "m.pt"), "coreml", out_dir=tmp_path, parity_images=4,
                               experts="split")
    assert res.ok, res.error
    spec = ct.utils.load_spec(str(res.artifact))
    assert sorted(f.name for f in spec.description.functions) == ["tail_0", "tail_1", "trunk"]
    assert spec.description.defaultFunctionName == "trunk"
    assert json.loads(spec.description.metadata.userDefined["mvmoe"])["programs"]["chain"] == CHAIN


# ------------------------------------------------------------------------------ --experts auto
def _cfg(**kw):
    from mobile_vmoe.config import ModelConfig

    return ModelConfig(**{"depth": 4, "width": 32, "heads": 2, "img_size": 16, "patch_size": 8, "num_classes": 7,
                          "num_experts": 3, "top_k": 1, "moe_blocks": 2, **kw})


@pytest.mark.parametrize("target,precision", [("executorch-xnnpack", "fp32"), ("executorch-xnnpack", "int8"),
                                              ("tflite", "fp32"), ("tflite", "fp16"), ("tflite", "int8")])
def test_auto_splits_a_per_image_k1_moe_where_the_target_can(target, precision):
    target, _, backend = target.partition("-")
    assert split.choose_layout("auto", _cfg(), target, backend or None, precision, macs=300_000_000) == "split"


def test_auto_follows_the_measured_size_rule():
    """XNNPACK fp32: split was slower at 50.6M MACs, faster at vmoe-12x192-p32; LiteRT faster at both."""
    from converters import targets as T

    start = dict(T.find("executorch").auto_split_from)["fp32"]
    assert 50_600_000 < start
    for macs, want in ((50_600_000, "fused"), (start - 1, "fused"), (start, "split")):
        assert split.choose_layout("auto", _cfg(), "executorch", "xnnpack", "fp32", macs=macs) == want
    assert split.choose_layout("auto", _cfg(), "tflite", None, "fp32", macs=50_600_000) == "split"


@pytest.mark.parametrize("cfg,target,precision,kw", [
    ({"top_k": 2}, "executorch-xnnpack", "fp32", {}),
    ({"routing": "token"}, "tflite", "fp32", {}),
    ({"num_experts": 0, "top_k": 1, "moe_blocks": 0}, "executorch-xnnpack", "fp32", {}),  # dense
    ({}, "onnx", "fp32", {}),
    ({}, "executorch-coreml", "fp16", {}),
    ({}, "executorch-portable", "int8", {}),
    ({}, "executorch-portable", "fp32", {}),  # split exports, but was not measured faster there
    ({}, "coreml", "fp32", {}),  # a split package needs iOS 18; the fused one runs from iOS 17
    ({}, "coreml", "fp16", {}),
    ({}, "executorch-xnnpack", "fp32", {"dispatch": "dense"}),
    ({}, "executorch-xnnpack", "fp32", {"decomposed_layernorm": True}),
])
def test_auto_falls_back_to_fused_and_never_refuses(cfg, target, precision, kw):
    target, _, backend = target.partition("-")
    assert split.choose_layout("auto", _cfg(**cfg), target, backend or None, precision, macs=300_000_000, **kw) == "fused"


def test_an_explicit_layout_is_kept():
    assert split.choose_layout("fused", _cfg(), "tflite", None, "fp32", macs=0) == "fused"
    assert split.choose_layout("split", _cfg(top_k=2), "onnx", None, "fp32", macs=0) == "split"  # check_splittable refuses it


def test_auto_jobs_resolve_per_target():
    from converters.pipeline import plan, resolve_layouts

    jobs, skipped = plan("all", None, "fp32")  # auto: planned as fused, nothing skipped
    assert skipped == [] and {j.experts for j in jobs} == {"auto"}
    big, small = 300_000_000, 1_000_000  # active MACs per image
    layouts = {j.target: j.experts for j in resolve_layouts(jobs, _cfg(), big, "gather", "native")}
    assert layouts == {"coreml": "fused", "executorch": "split", "tflite": "split", "onnx": "fused"}
    layouts = {j.target: j.experts for j in resolve_layouts(jobs, _cfg(), small, "gather", "native")}
    assert layouts == {"coreml": "fused", "executorch": "fused", "tflite": "split", "onnx": "fused"}
    token = resolve_layouts(jobs, _cfg(routing="token"), big, "gather", "native")
    assert {j.experts for j in token} == {"fused"}
    decomposed = {j.target: j.experts for j in resolve_layouts(jobs, _cfg(), big, "gather", "decomposed")}
    assert decomposed["executorch"] == "fused" and decomposed["tflite"] == "split"  # the option applies to XNNPACK only
    with pytest.raises(MvmoeError, match="expected auto"):
        plan("onnx", None, "fp32", "automatic")
