"""Export: static audit, preprocessing, parity maths, and a tiny trained MoE through every target.

The converters are slow (tens of seconds each on 2 cores), so one module-scoped fixture exports
the tiny checkpoint to all four targets once and the tests read its results (marked slow).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from helpers import tiny_moe
from converters.layernorm import DecomposedLayerNorm, decompose_layernorm
from converters.parity import check_parity, not_run, parity
from converters.quantize import pt2e_quantize
from converters.static_export import audit_static
from converters.wrapper import prepare_for_export
from converters.pipeline import export_checkpoint, plan
from mobile_vmoe import create_model
from mobile_vmoe.artifact_name import artifact_stem
from mobile_vmoe.checkpoint import save_checkpoint
from mobile_vmoe.errors import MvmoeError

SUPERCLASS = [0, 1, 2, 3, 4, 0, 1, 2, 3, 4]  # class c -> superclass c % 5


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    """A tiny per-image MoE (E=5, k=1) trained 40 steps on digits with CE + 0.3 router CE."""
    from mobile_vmoe.data import build_data

    torch.manual_seed(0)
    data = build_data("digits", 32, augment="none")
    model = create_model("vmoe-6x64-p32", img_size=32, patch_size=4, num_classes=10, num_experts=5)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    c2s = torch.tensor(SUPERCLASS)
    loader = torch.utils.data.DataLoader(data.train, batch_size=64, shuffle=True)
    model.train()
    for step, (x, y) in enumerate(loader):
        out = model.forward_with_routing(x)
        loss = nn.functional.cross_entropy(out.logits, y) + 0.3 * nn.functional.cross_entropy(out.router_logits, c2s[y])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step == 19:
            break
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint(path, {"model_config": model.cfg, "model": model.state_dict(), "class_names": data.class_names,
                           "superclasses": {"names": [f"sc{i}" for i in range(5)], "class_to_superclass": SUPERCLASS},
                           "data": data.checkpoint_info()})
    return path


@pytest.fixture(scope="module")
def exported(tiny_ckpt, tmp_path_factory):
    """Every target once at fp32: Core ML, ExecuTorch-XNNPACK, TFLite, ONNX (about 3 minutes here)."""
    out = tmp_path_factory.mktemp("exports")
    results = export_checkpoint(tiny_ckpt, "all", None, "fp32", out, parity_images=16, calibration_images=8,
                                experts="fused")
    return out, {(r.job.target, r.job.precision): r for r in results}


# ------------------------------------------------------------------------------ no export needed
def test_baked_preprocessing_hand_numbers():
    """mean 0.5, std 0.25: pixel 255 -> (1 - 0.5) / 0.25 = 2, pixel 0 -> -2, pixel 51 -> (0.2-0.5)/0.25 = -1.2."""
    model = tiny_moe(3, 2)
    w = prepare_for_export(model, bake_preprocessing=True, mean=[0.5] * 3, std=[0.25] * 3)
    raw = torch.tensor([255.0, 0.0, 51.0]).view(1, 3, 1, 1)
    got = w.preprocess(raw)
    assert torch.allclose(got.flatten(), torch.tensor([2.0, -2.0, -1.2]), atol=1e-6)
    # The wrapped copy gives the model's numbers; the original keeps its dispatch and attention.
    x = torch.rand(1, 3, 16, 16) * 255
    plain = prepare_for_export(model)
    with torch.no_grad():
        assert torch.allclose(w(x)[0], plain((x / 255 - 0.5) / 0.25)[0], atol=1e-5)
        assert torch.allclose(plain((x / 255 - 0.5) / 0.25)[0], model.eval()((x / 255 - 0.5) / 0.25), atol=1e-5)
    assert all(m.fused for m in model.modules() if type(m).__name__ == "Attention")
    assert not any(m.fused for m in w.modules() if type(m).__name__ == "Attention")


def test_expert_probs_are_router_softmax():
    model = tiny_moe(3, 4).eval()
    w = prepare_for_export(model)
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        logits, probs = w(x)
        ref = model.forward_with_routing(x)
    assert torch.allclose(probs, ref.router_logits.softmax(-1), atol=1e-6)
    assert probs.argmax().item() == ref.expert_index[0, 0].item()
    assert w.output_names == ["logits", "expert_probs"]


def test_decomposed_layernorm_hand_numbers_and_equality():
    """x = [1, 2, 3, 4]: mean 2.5, variance 1.25, so (x - 2.5) / sqrt(1.25) = [-1.3416, -0.4472, 0.4472, 1.3416]."""
    ln = nn.LayerNorm(4, eps=0.0)
    d = DecomposedLayerNorm(ln)
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    assert torch.allclose(d(x), torch.tensor([[-1.3416, -0.4472, 0.4472, 1.3416]]), atol=1e-4)
    with torch.no_grad():
        ln.weight.copy_(torch.tensor([1.0, 2.0, 1.0, 1.0]))
        ln.bias.fill_(0.5)
    assert torch.allclose(d(x), torch.tensor([[-0.8416, -0.3944, 0.9472, 1.8416]]), atol=1e-4)
    model = tiny_moe(3, 2).eval()
    w = prepare_for_export(model)
    wd = decompose_layernorm(prepare_for_export(model))
    assert not any(isinstance(m, nn.LayerNorm) for m in wd.modules())  # the router's LayerNorm (B, D) too
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(w(x), wd(x)))


class _Branchy(nn.Module):
    def forward(self, x):
        return torch.cond(x.sum() > 0, lambda v: v * 2, lambda v: v - 1, (x,))


def test_audit_rejects_data_dependent_control_flow():
    ep = torch.export.export(_Branchy(), (torch.randn(1, 4),), strict=False)
    with pytest.raises(MvmoeError, match="data-dependent control flow"):
        audit_static(ep)


def test_audit_rejects_symbolic_batch_and_accepts_the_moe():
    model = tiny_moe(3, 2)
    w = prepare_for_export(model)
    x = torch.randn(2, 3, 16, 16)
    dyn = torch.export.export(w, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=8)},), strict=False)
    with pytest.raises(MvmoeError, match="symbolic shape"):
        audit_static(dyn)
    audit = audit_static(torch.export.export(w, (x[:1],), strict=False))
    assert audit["aten_ops"]["topk.default"] == 1  # the router, once per image
    assert audit["aten_ops"]["index_select.default"] == 8  # 4 stacked tensors x 2 MoE blocks


def test_parity_hand_numbers():
    ref = np.array([[1.0, 0.0], [0.0, 1.0], [3.0, 2.0]], dtype=np.float32)
    got = np.array([[0.5, 0.0], [1.0, 0.9], [3.0, 2.0]], dtype=np.float32)
    p = parity(ref, got, torch.tensor([0, 0, 1]))
    assert p["max_abs_diff"] == 1.0
    assert p["top1_agreement"] == pytest.approx(2 / 3)
    assert p["reference_top1"] == pytest.approx(1 / 3) and p["artifact_top1"] == pytest.approx(2 / 3)
    assert check_parity(p, "fp32") is not None  # 1.0 > 1e-4
    assert check_parity(p, "int8", max_top1_drop=0.34) is None  # 66.7% >= 66%
    assert "66.7%" in check_parity(p, "int8", max_top1_drop=0.2)
    assert check_parity(not_run("no macOS"), "fp32") is None


def test_plan_names_and_bad_combinations():
    jobs, skipped = plan("all", None, "int8")
    assert [(j.target, j.backend) for j in jobs] == [("executorch", "xnnpack"), ("tflite", None)]
    assert any("coreml has no int8" in s for s in skipped)
    assert artifact_stem("vmoe-6x64-p32", "executorch", "xnnpack", "fp32") == "vmoe-6x64-p32_executorch-xnnpack_fp32"
    with pytest.raises(MvmoeError, match="--backend applies to --target executorch"):
        plan("onnx", "xnnpack", "fp32")
    with pytest.raises(MvmoeError, match="not int8"):
        plan("coreml", None, "int8")


def test_cli_missing_and_foreign_checkpoint(tmp_path):
    from conftest import mvmoe

    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    for path, msg in ((tmp_path / "nope.pt", "checkpoint not found"), (foreign, "not an mvmoe checkpoint")):
        code, _, err = mvmoe("export", path, "--target", "onnx", "--out", tmp_path / "o")
        assert code == 1
        err = err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:") and msg in err[0]
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


# --------------------------------------------------------------------------- the real exports
@pytest.mark.slow
def test_every_target_exports_with_parity(exported):
    out, res = exported
    assert set(res) == {("coreml", "fp32"), ("executorch", "fp32"), ("tflite", "fp32"), ("onnx", "fp32")}
    for key, r in res.items():
        assert r.ok, (key, r.error, r.notes)
        p = r.metadata["parity"]
        if key[0] == "coreml":
            assert p == {**not_run("Core ML prediction needs macOS"), "images_source": p["images_source"], "data": "digits"}
        else:
            assert p["ran"] and p["images"] == 16 and p["max_abs_diff"] < 1e-4 and p["top1_agreement"] == 1.0
            assert p["images_source"].startswith("digits val split") and p["data"] == "digits"
    assert sorted(x.name for x in out.iterdir()) == sorted(
        f"vmoe-6x64-p32_{s}" for s in ("coreml_fp32.json", "coreml_fp32.mlpackage",
                                       "executorch-xnnpack_fp32.json", "executorch-xnnpack_fp32.pte", "onnx_fp32.json",
                                       "onnx_fp32.onnx", "tflite_fp32.json", "tflite_fp32.tflite"))


@pytest.mark.slow
def test_metadata_round_trip(exported, tiny_ckpt):
    out, res = exported
    meta = json.loads((out / "vmoe-6x64-p32_tflite_fp32.json").read_text())
    assert meta == json.loads(json.dumps(res[("tflite", "fp32")].metadata))
    assert meta["artifact"] == "vmoe-6x64-p32_tflite_fp32.tflite" and meta["backend"] is None
    assert meta["labels"] == [str(i) for i in range(10)]
    assert meta["superclasses"] == {"names": [f"sc{i}" for i in range(5)], "class_to_superclass": SUPERCLASS}
    assert (meta["experts"], meta["k"], meta["dispatch"]) == (5, 1, "gather")
    assert meta["model_config"]["num_experts"] == 5 and meta["model_config"]["patch_size"] == 4
    assert meta["input"]["shape"] == [1, 3, 32, 32] and meta["input"]["scale"] == 255.0
    assert meta["outputs"] == [{"name": "logits", "shape": [1, 10]}, {"name": "expert_probs", "shape": [1, 5]}]
    from mobile_vmoe.checkpoint import model_from_checkpoint
    from mobile_vmoe.models.flops import profile_flops

    assert meta["macs"] == profile_flops(model_from_checkpoint(tiny_ckpt)[0], dispatch="gather").macs
    from helpers import read_coreml_metadata

    ud = read_coreml_metadata(out / "vmoe-6x64-p32_coreml_fp32.mlpackage")
    assert json.loads(ud["labels"]) == meta["labels"]
    assert json.loads(ud["mvmoe"])["superclasses"] == meta["superclasses"]


@pytest.mark.slow
def test_profile_flops_counts_what_an_artifact_runs(exported):
    """`mvmoe profile flops ARTIFACT` rebuilds the model from the .json and counts its dispatch."""
    from conftest import mvmoe

    out, res = exported
    art = out / "vmoe-6x64-p32_executorch-xnnpack_fp32.pte"

    def flops(*args):
        code, stdout, err = mvmoe("profile", "flops", *args, "--json")
        assert code == 0, err
        return json.loads(stdout)

    gather = flops(str(art))
    assert gather["macs"] == res[("executorch", "fp32")].metadata["macs"]
    assert (gather["dispatch"], gather["target"], gather["backend"]) == ("gather", "executorch", "xnnpack")
    dense = flops(str(art.with_suffix(".json")), "--dispatch", "dense")
    # all 5 experts instead of 1 in 2 MoE blocks of width 64 (hidden 256), 8x8 patches + class token = 65 tokens,
    # plus the combine einsum "ebtd,be->btd" (5 x 64 MACs per token) of the dense path
    assert dense["macs"] - gather["macs"] == 2 * (4 * 65 * (64 * 256 + 256 * 64) + 65 * 5 * 64)
    (out / "old.json").write_text(json.dumps({"model": "x"}))
    code, _, err = mvmoe("profile", "flops", out / "old.json")
    assert code == 1 and "has no model_config" in err


@pytest.mark.slow
def test_op_audits(exported):
    _, res = exported
    et = res[("executorch", "fp32")].metadata["ops"]
    assert et["ops"]["aten_linear_default"]["portable"] == 0  # every linear on XNNPACK
    assert et["ops"]["aten_topk_default"] == {"delegated": 0, "portable": 1}  # the router's top-k stays portable
    # attention, the experts and the k combine are written without select/expand/unsqueeze/sum/split:
    # what stays off XNNPACK is LayerNorm, the router's top-k and expert gather, int64 index
    # reshapes and the class-token expand (docs/export.md)
    assert set(et["not_delegated"]) <= {"aten_native_layer_norm_default", "aten_topk_default", "aten_index_select_default",
                                        "aten_view_copy_default", "aten_expand_copy_default", "getitem"}, et["not_delegated"]
    assert et["ops"]["aten_bmm_default"]["portable"] == 0
    assert res[("executorch", "fp32")].metadata["layer_norm"] == "native"
    tfl = res[("tflite", "fp32")].metadata["ops"]
    assert tfl["flex_ops"] == [] and tfl["ops"]["TOPK_V2"] == 1 and "BATCH_MATMUL" in tfl["ops"]
    onnx = res[("onnx", "fp32")].metadata["ops"]
    assert onnx["checker"] == "passed" and onnx["ops"]["TopK"] == 1
    ml = res[("coreml", "fp32")].metadata["ops"]
    assert ml["ops"]["topk"] == 1 and ml["ops"]["gather"] == 8 and ml["compute_precision"] == "fp32"


@pytest.mark.slow
def test_decomposed_layernorm_export_is_one_xnnpack_subgraph_per_side_of_the_gather(tiny_ckpt, tmp_path):
    """--layer-norm decomposed: LayerNorm delegated too, so one XNNPACK subgraph before the router's
    top-k and expert gather and one after; parity still against the native-LayerNorm PyTorch model."""
    [r] = export_checkpoint(tiny_ckpt, "executorch", "xnnpack", "fp32", tmp_path, parity_images=8, layer_norm="decomposed",
                              experts="fused")
    assert r.ok, r.error
    ops = r.metadata["ops"]
    assert r.metadata["layer_norm"] == "decomposed" and r.metadata["parity"]["max_abs_diff"] < 1e-4
    assert "aten_native_layer_norm_default" not in ops["ops"] and ops["delegated_subgraphs"] == 2
    with pytest.raises(MvmoeError, match="expected native or decomposed"):
        export_checkpoint(tiny_ckpt, "onnx", None, "fp32", tmp_path, layer_norm="fused")


@pytest.mark.slow
def test_failed_parity_leaves_nothing_behind(tiny_ckpt, tmp_path):
    """fp32_tol=0: ONNX differs by ~1e-7, so the gate fails and no file is installed."""
    [r] = export_checkpoint(tiny_ckpt, "onnx", None, "fp32", tmp_path, parity_images=4, fp32_tol=0.0)
    assert not r.ok and "parity failed: fp32 logits differ" in r.error
    assert list(tmp_path.iterdir()) == []


def test_copy_to_app_puts_artifact_and_json_where_the_apps_look(tmp_path):
    from converters.apps import copy_to_app
    from converters.targets import APP_DIRS

    src = tmp_path / "exports"
    (src / "m_coreml_fp16.mlpackage" / "Data").mkdir(parents=True)
    (src / "m_coreml_fp16.mlpackage" / "Data" / "w.bin").write_bytes(b"v1")
    (src / "m_coreml_fp16.json").write_text('{"target": "coreml", "backend": null}')
    (src / "m_tflite_fp32.tflite").write_bytes(b"tfl")
    (src / "m_tflite_fp32.json").write_text('{"target": "tflite", "backend": null}')
    ios = copy_to_app(src / "m_coreml_fp16.mlpackage", "ios", root=tmp_path)
    android = copy_to_app(src / "m_tflite_fp32.tflite", "android", root=tmp_path)
    assert ios == tmp_path / APP_DIRS["ios"] and android == tmp_path / APP_DIRS["android"]
    assert sorted(p.name for p in android.iterdir()) == ["m_tflite_fp32.json", "m_tflite_fp32.tflite"]
    # a re-export replaces the package whole (no stale files, no temporaries left)
    (src / "m_coreml_fp16.mlpackage" / "Data" / "w.bin").write_bytes(b"v2")
    copy_to_app(src / "m_coreml_fp16.mlpackage", "ios", root=tmp_path)
    assert sorted(p.name for p in ios.iterdir()) == ["m_coreml_fp16.json", "m_coreml_fp16.mlpackage"]
    assert (ios / "m_coreml_fp16.mlpackage" / "Data" / "w.bin").read_bytes() == b"v2"
    with pytest.raises(MvmoeError, match="expected ios or android"):
        copy_to_app(src / "m_tflite_fp32.tflite", "web", root=tmp_path)
    with pytest.raises(MvmoeError, match=r"iOS demo app runs coreml \(\.mlpackage\)"):
        copy_to_app(src / "m_tflite_fp32.tflite", "ios", root=tmp_path)


def test_artifact_names_tell_the_dispatch_apart():
    assert artifact_stem("m", "onnx", None, "fp32", "dense") == "m_onnx_fp32-dense"
    assert artifact_stem("m", "executorch", "xnnpack", "int8", "gather") == "m_executorch-xnnpack_int8"


def test_converters_raise_mvmoe_errors_for_user_errors():
    from converters import tflite

    with pytest.raises(MvmoeError, match="int8 needs calibration images"):
        tflite.quant_config("int8", None, torch.zeros(1), None)
    assert issubclass(tflite.FlexOpsError, MvmoeError)


@pytest.mark.slow
def test_pt2e_quantize_calibrates_one_image_at_a_time(monkeypatch):
    """The one calibration loop of ExecuTorch and LiteRT int8: the observed model sees every
    calibration image once, batch 1, and the quantized model stays close to the float one."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e import quantize_pt2e

    seen = []
    real_prepare = quantize_pt2e.prepare_pt2e

    def prepare(model, quantizer):
        prepared = real_prepare(model, quantizer)
        prepared.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape)))
        return prepared

    monkeypatch.setattr(quantize_pt2e, "prepare_pt2e", prepare)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 4)).eval()
    calib = torch.randn(6, 8)
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    q = pt2e_quantize(net, calib[:1], calib, quantizer)
    assert seen == [(1, 8)] * 6
    with torch.no_grad():
        assert torch.allclose(q(calib[2:3]), net(calib[2:3]), atol=0.05)
    from converters import executorch, tflite

    assert executorch.pt2e_quantize is pt2e_quantize and tflite.pt2e_quantize is pt2e_quantize


def test_litert_int8_io_is_fed_and_read_as_float():
    """A fully int8 LiteRT model: x -> round(x / scale) + zero point, clipped to int8; outputs back."""
    from converters import tflite

    det = {"dtype": np.int8, "quantization": (0.5, -10)}
    q = tflite.quantize_input(np.array([0.0, 1.26, -100.0, 200.0], np.float32), det)
    assert q.dtype == np.int8 and q.tolist() == [-10, -7, -128, 127]  # 1.26 / 0.5 = 2.52 -> 3, -10 + 3 = -7
    np.testing.assert_allclose(tflite.dequantize_output(q, det), [0.0, 1.5, -59.0, 68.5])
    f = {"dtype": np.float32, "quantization": (0.0, 0)}
    x = np.ones(2, np.float32)
    assert tflite.quantize_input(x, f) is x and tflite.dequantize_output(x, f) is x
    idx = {"dtype": np.int32, "quantization": (0.0, 0)}  # a split trunk's expert index: not quantized
    i = np.array([[3]], np.int32)
    assert tflite.dequantize_output(i, idx) is i and tflite.quantize_input(i, idx).tolist() == [[3]]


def test_litert_softmax_after_a_quantized_op_gets_the_fixed_output_qparams():
    """LiteRT's int8 SOFTMAX takes only output scale 1/256, zero point -128. The router's softmax
    (after a quantized Linear) gets them; the attention's (after an unquantized bmm) stays float;
    dynamic-range int8 annotates nothing."""
    from litert_torch.quantize.pt2e_quantizer import get_symmetric_quantization_config
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    from converters import tflite

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(8, 4)

        def forward(self, x):  # x (1, 3, 8)
            attn = torch.bmm(x, x.transpose(1, 2)).softmax(dim=-1)  # (1, 3, 3)
            return self.proj(x[:, 0]).softmax(dim=-1), attn  # (1, 4), (1, 3, 3)

    x = torch.randn(1, 3, 8)
    for dynamic, want in [(False, 1), (True, 0)]:
        gm = torch.export.export(Net().eval(), (x,), strict=False).module()
        quantizer = tflite._quantizer_class()().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=dynamic))
        prepare_pt2e(gm, quantizer)  # annotates in place
        fixed = [n for n in gm.graph.nodes if "softmax" in str(n.target)
                 and getattr(n.meta.get("quantization_annotation"), "output_qspec", None) is not None]
        assert len(fixed) == want
        for n in fixed:
            spec = n.meta["quantization_annotation"].output_qspec
            assert (spec.scale, spec.zero_point, spec.dtype) == (1 / 256, -128, torch.int8)
            assert tuple(n.meta["val"].shape) == (1, 4)  # the router-like softmax, not the attention's


@pytest.mark.slow
def test_litert_int8_moe_is_static_and_says_its_int8_ends(tmp_path):
    """The per-image MoE's router softmax no longer blocks static int8: the model allocates, the
    .json says so, and it lists the int8 ends an app quantizes with (those of the file itself)."""
    from ai_edge_litert.interpreter import Interpreter

    from helpers import tiny_checkpoint

    (res,) = export_checkpoint(tiny_checkpoint(tmp_path / "m.pt"), "tflite", None, "int8", tmp_path, parity_images=16,
                               parity_data="digits", max_top1_drop=1.0, experts="fused")
    assert res.ok, res.error
    meta = json.loads(res.artifact.with_suffix(".json").read_text())
    ops = meta["ops"]
    assert ops["int8_scheme"].startswith("static") and ops["ops"]["SOFTMAX"] >= 1
    sig = Interpreter(model_path=str(res.artifact)).get_signature_runner()
    [image] = ops["io_quantization"]["inputs"]
    d = sig.get_input_details()["args_0"]
    assert image["dtype"] == "int8" and (image["scale"], image["zero_point"]) == pytest.approx(d["quantization"])
    probs = ops["io_quantization"]["outputs"][1]  # expert_probs: a softmax, at LiteRT's fixed 1/256, -128
    assert (probs["dtype"], probs["scale"], probs["zero_point"]) == ("int8", pytest.approx(1 / 256), -128)
    assert meta["parity"]["max_abs_diff"] < 0.1
