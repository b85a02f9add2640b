"""Starting from what exists: timm / torchvision ViT weights in (--init), sparse upcycling of a
dense model into an MoE, and model.safetensors + config.json out.

timm's models are built with random weights (``pretrained=False``): nothing is downloaded; the
check is that our forward equals timm's own on the same weights.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from typer.testing import CliRunner

from mobile_vmoe import create_model
from mobile_vmoe.checkpoint import load_checkpoint, model_from_checkpoint
from mobile_vmoe.cli import app
from mobile_vmoe.config import ModelConfig, TrainConfig
from mobile_vmoe.data.synthetic import build_synthetic
from mobile_vmoe.errors import MvmoeError
from mobile_vmoe.models.programs import trunk_and_tails
from mobile_vmoe.models.registry import dense_twin
from mobile_vmoe.models.routing import topk_gates
from mobile_vmoe.models.weights import (fit_state, load_pretrained, read_weights, resample_pos_embed,
                                        save_pretrained, upcycle_mlp)
from mobile_vmoe.train import fit

timm = pytest.importorskip("timm")

ONE_LINE = "error: "


def _timm(name: str, **kw):
    torch.manual_seed(0)
    m = timm.create_model(name, pretrained=False, **kw).eval()
    with torch.no_grad():  # timm zero-initialises biases and the class token: give them values
        for p in m.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return m


def _max_diff(a: torch.nn.Module, b: torch.nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float((a(x) - b(x)).abs().max())


# ------------------------------------------------------------------------------ timm and torchvision
@pytest.mark.parametrize("timm_name, preset", [("deit_tiny_patch16_224", "deit-tiny"),
                                               ("vit_small_patch16_224", "deit-small")])
def test_timm_weights_give_timm_logits(timm_name, preset, tmp_path):
    ref = _timm(timm_name)
    torch.save(ref.state_dict(), tmp_path / "w.pth")
    ours = create_model(preset, pretrained=tmp_path / "w.pth").eval()
    assert _max_diff(ours, ref, torch.randn(2, 3, 224, 224)) < 1e-5


def test_timm_qk_norm_and_safetensors_file(tmp_path):
    """ViT-22B's QK normalisation keeps timm's names (attn.q_norm / attn.k_norm); a .safetensors
    state dict of someone else is read like a .pth."""
    from safetensors.torch import save_file

    ref = _timm("vit_tiny_patch16_224", img_size=64, qk_norm=True, num_classes=7)
    save_file(ref.state_dict(), str(tmp_path / "w.safetensors"))
    cfg = ModelConfig(depth=12, width=192, heads=3, patch_size=16, img_size=64, num_classes=7, qk_norm=True)
    ours = create_model(cfg, pretrained=tmp_path / "w.safetensors").eval()
    assert _max_diff(ours, ref, torch.randn(2, 3, 64, 64)) < 1e-5


def test_torchvision_weights_give_torchvision_logits(tmp_path):
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    ref = VisionTransformer(image_size=32, patch_size=8, num_layers=3, num_heads=2, hidden_dim=64, mlp_dim=256,
                            num_classes=10).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.02 * torch.randn_like(p))
    torch.save({"model": ref.state_dict()}, tmp_path / "tv.pt")  # under "model", as training scripts save it
    cfg = ModelConfig(depth=3, width=64, heads=2, patch_size=8, img_size=32, num_classes=10)
    ours = create_model(cfg, pretrained=tmp_path / "tv.pt").eval()
    assert _max_diff(ours, ref, torch.randn(3, 3, 32, 32)) < 1e-5


def test_other_image_size_resamples_like_timm(tmp_path):
    from timm.layers import resample_abs_pos_embed
    from timm.models.vision_transformer import checkpoint_filter_fn

    ref224 = _timm("deit_tiny_patch16_224")
    torch.save(ref224.state_dict(), tmp_path / "w.pth")
    lines = []
    ours = create_model("deit-tiny", img_size=160)
    load_pretrained(ours, tmp_path / "w.pth", say=lines.append)
    assert lines == ["init w.pth: pos_embed resampled from a 14x14 to a 10x10 grid (bicubic, as timm)"]
    want = resample_abs_pos_embed(ref224.pos_embed.detach(), [10, 10], num_prefix_tokens=1)
    assert torch.allclose(ours.pos_embed.detach(), want, atol=1e-6)
    ref160 = timm.create_model("deit_tiny_patch16_224", pretrained=False, img_size=160).eval()
    ref160.load_state_dict(checkpoint_filter_fn(ref224.state_dict(), ref160))  # timm's own loader
    assert _max_diff(ours.eval(), ref160, torch.randn(2, 3, 160, 160)) < 1e-5


def test_resample_keeps_the_class_entry_and_a_same_size_grid():
    pos = torch.randn(1, 1 + 16, 8)
    same = resample_pos_embed(pos, 4)
    assert torch.allclose(same, pos, atol=1e-6)  # 4x4 -> 4x4 is the identity
    bigger = resample_pos_embed(pos, 8)
    assert bigger.shape == (1, 65, 8) and torch.equal(bigger[:, 0], pos[:, 0])


def test_other_class_count_reinitialises_the_head_in_one_line(tmp_path):
    ref = _timm("deit_tiny_patch16_224", img_size=32, num_classes=1000)
    torch.save(ref.state_dict(), tmp_path / "w.pth")
    torch.manual_seed(1)
    ours = create_model("deit-tiny", img_size=32, num_classes=10)
    fresh_head = ours.head.weight.detach().clone()
    lines = []
    report = load_pretrained(ours, tmp_path / "w.pth", say=lines.append)
    assert lines == ["init w.pth: head re-initialised: the weights have 1000 classes, the model 10"]
    assert torch.equal(ours.head.weight, fresh_head) and "head.weight" in report.fresh
    assert torch.equal(ours.blocks[5].mlp.fc1.weight, ref.blocks[5].mlp.fc1.weight)  # the rest loaded


def test_distilled_deit_drops_its_distillation_token(tmp_path):
    ref = _timm("deit_tiny_distilled_patch16_224", img_size=32, num_classes=10)
    torch.save(ref.state_dict(), tmp_path / "w.pth")
    ours = create_model("deit-tiny", img_size=32, num_classes=10, pretrained=tmp_path / "w.pth")
    assert torch.equal(ours.pos_embed[:, 1:], ref.pos_embed[:, 2:])  # [cls, dist, patches] -> [cls, patches]
    assert torch.equal(ours.head.weight, ref.head.weight)


@pytest.mark.parametrize("content, message", [
    (b"not a zip at all", "is not a PyTorch weights file"),
    ({"conv1.weight": torch.zeros(64, 3, 7, 7)}, "not a ViT state dict this project reads (first key 'conv1.weight'"),
    ([1, 2, 3], "holds no state dict"),
])
def test_a_wrong_file_fails_in_one_line(tmp_path, content, message):
    path = tmp_path / "w.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(MvmoeError, match=re.escape(message)):
        read_weights(path)


def test_a_misshapen_or_missing_key_is_named(tmp_path):
    ref = _timm("deit_tiny_patch16_224", img_size=32)
    state = ref.state_dict()
    with pytest.raises(MvmoeError, match=r"cls_token has shape \(1, 1, 192\) in the weights, \(1, 1, 64\) in vit-6x64"):
        fit_state(state, create_model("vit-6x64-p16", img_size=32))
    del state["blocks.3.norm2.bias"]
    with pytest.raises(MvmoeError, match=r"missing key blocks.3.norm2.bias \(shape \[192\]\)"):
        fit_state(state, create_model("deit-tiny", img_size=32))
    state = ref.state_dict()
    with pytest.raises(MvmoeError, match=r"unexpected key blocks.11.norm1.weight \(shape \[192\]\) in the weights: not part of deit-tiny"):
        fit_state(state, create_model("deit-tiny", img_size=32, depth=11))


def test_cli_init_of_a_wrong_file_is_one_line(tmp_path):
    (tmp_path / "w.pth").write_bytes(b"garbage")
    r = CliRunner().invoke(app, ["train", "--init", str(tmp_path / "w.pth"), "--out", str(tmp_path / "run")])
    assert r.exit_code == 1
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(ONE_LINE) and "is not a PyTorch weights file" in err[0]
    assert not (tmp_path / "run" / "run.json").exists()  # refused before any work


# ------------------------------------------------------------------------------------ upcycling
def test_unit_gate_is_exactly_one_with_the_gradient_of_log_p():
    logits = torch.tensor([[0.0, 1.0, 0.5]], requires_grad=True)
    probs = logits.softmax(-1)
    gates, index = topk_gates(probs, 1, unit=True)
    assert index.item() == 1 and gates.item() == 1.0
    gates.sum().backward()
    # d log p_1 / d logits = onehot(1) - p
    assert torch.allclose(logits.grad, torch.tensor([[0.0, 1.0, 0.0]]) - probs.detach(), atol=1e-6)
    with torch.no_grad():
        assert topk_gates(probs, 1, unit=True)[0].item() == 1.0
    assert topk_gates(probs.detach(), 1)[0].item() == pytest.approx(float(probs.detach()[0, 1]))  # the default keeps p


def test_upcycle_mlp_layout_by_hand():
    fc1_w = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])  # (H=3, D=2)
    fc2_w = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 0.5]])  # (D=2, H=3)
    out = upcycle_mlp(fc1_w, torch.tensor([1.0, 2.0, 3.0]), fc2_w, None, num_experts=2)
    assert out["w1"].shape == (2, 2, 3) and torch.equal(out["w1"][1], fc1_w.T)
    assert torch.equal(out["w2"][0], fc2_w.T) and out["b1"].tolist() == [[1.0, 2.0, 3.0]] * 2
    assert "b2" not in out


def _dense_and_upcycled(top_k: int = 1, **kw):
    torch.manual_seed(0)
    moe_cfg = ModelConfig(depth=4, width=32, heads=2, img_size=16, patch_size=4, num_classes=6, num_experts=4,
                          top_k=top_k, moe_blocks=2, gate="unit", **kw)
    dense = create_model(dense_twin(moe_cfg).replace(gate="prob")).eval()
    with torch.no_grad():
        for p in dense.parameters():
            p.add_(0.05 * torch.randn_like(p))
    moe = create_model(moe_cfg)
    state, report = fit_state(dense.state_dict(), moe)
    moe.load_state_dict(state)
    assert report.upcycled_blocks == [2, 3] and report.fresh and all("router." in k for k in report.fresh)
    return dense, moe.eval()


@pytest.mark.parametrize("top_k", [1, 2])
@pytest.mark.parametrize("dispatch", ["gather", "dense", "grouped"])
def test_upcycled_moe_at_init_computes_the_dense_logits(top_k, dispatch):
    dense, moe = _dense_and_upcycled(top_k)
    x = torch.randn(8, 3, 16, 16)
    with torch.no_grad():
        out = moe.set_dispatch(dispatch).forward_with_routing(x)
        assert len(set(out.expert_index[:, 0].tolist())) > 1  # the fresh router spreads images over experts
        assert (out.logits - dense(x)).abs().max() < 1e-5


def test_upcycled_moe_through_the_split_programs_computes_the_dense_logits():
    """Every tail, whichever expert the router picked, gives the dense logits (fp32)."""
    dense, moe = _dense_and_upcycled(1)
    x = torch.randn(4, 3, 16, 16)
    programs = trunk_and_tails(moe, x)
    trunk = programs["trunk"][0]
    with torch.no_grad():
        stream, index, gate, _ = trunk(x)
        assert torch.equal(gate, torch.ones_like(gate))
        want = dense(x)
        for e in range(moe.cfg.num_experts):
            assert (programs[f"tail_{e}"][0](stream, gate) - want).abs().max() < 1e-5


def test_token_routed_upcycle_equals_dense_while_no_token_is_dropped():
    dense, moe = _dense_and_upcycled(1, routing="token", capacity_ratio=8.0)  # room for every token
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert (moe(x) - dense(x)).abs().max() < 1e-5


def test_an_moe_checkpoint_cannot_start_a_dense_model():
    _, moe = _dense_and_upcycled(1)
    with pytest.raises(MvmoeError, match="the weights are an MoE's"):
        fit_state(moe.state_dict(), create_model(dense_twin(moe.cfg)))


def _bundle():
    return build_synthetic(4, 2, 16, train_per_class=16, val_per_class=4, seed=0)


def _dense_run(tmp_path):
    bundle = _bundle()
    cfg = ModelConfig(name="tiny", img_size=16, num_classes=4, depth=3, width=32, heads=2, mlp_ratio=2.0,
                      patch_size=4)
    fit(TrainConfig(model=cfg, epochs=2, batch_size=16, lr=1e-3, ema_decay=0.0), bundle, tmp_path / "dense",
        quiet=True)
    return bundle, cfg


def test_upcycled_stage_starts_from_the_dense_logits_and_resumes_bit_exactly(tmp_path):
    """fit(init=dense model.pt) into the MoE: before any step the weights are the upcycled dense
    ones; stopped mid-run and resumed, the result equals an uninterrupted run."""
    bundle, dense_cfg = _dense_run(tmp_path)
    dense, _ = model_from_checkpoint(tmp_path / "dense" / "model.pt")
    moe_cfg = dense_cfg.replace(num_experts=2, moe_blocks=1, gate="unit")
    sc = {"num_superclasses": 2, "class_to_superclass": bundle.planted_superclasses, "names": ["a", "b"]}
    init = tmp_path / "dense" / "model.pt"
    tcfg = TrainConfig(model=moe_cfg, epochs=2, batch_size=16, lr=1e-3, ema_decay=0.9, mixup=0.8, log_every=1)
    # the start weights, loaded as fit loads them: the dense model's logits
    moe = create_model(moe_cfg, pretrained=init).eval()
    x = torch.randn(8, 3, 16, 16)
    with torch.no_grad():
        assert (moe(x) - dense(x)).abs().max() < 1e-5
    full = fit(tcfg, bundle, tmp_path / "full", superclasses=sc, quiet=True, init=init)
    part = fit(tcfg.replace(stop_after_steps=3), bundle, tmp_path / "part", superclasses=sc, quiet=True, init=init)
    assert part["stopped"]
    init.rename(tmp_path / "moved.pt")  # resuming from last.pt does not read the start weights again
    fit(tcfg, bundle, tmp_path / "part", superclasses=sc, resume=True, quiet=True, init=init)
    a, b = load_checkpoint(tmp_path / "full" / "model.pt"), load_checkpoint(tmp_path / "part" / "model.pt")
    for key in ("model", "ema"):
        for name, t in a[key].items():
            assert torch.equal(t, b[key][name]), f"{key}.{name} differs after resume"
    assert full["top1"] is not None


def test_safetensors_round_trip(tmp_path):
    """A finished stage writes model.safetensors + config.json; create_model(config, pretrained=...)
    and --init read them back to the same logits as model.pt."""
    _dense_run(tmp_path)
    run = tmp_path / "dense"
    ref, ck = model_from_checkpoint(run / "model.pt")
    meta = json.loads((run / "config.json").read_text())
    assert meta["format"] == "mvmoe-config" and meta["class_names"] == ck["class_names"]
    x = torch.randn(4, 3, 16, 16)
    for model in (create_model(run, pretrained=run), create_model(run / "config.json", pretrained=run / "model.safetensors"),
                  create_model(ref.cfg, pretrained=run / "model.pt")):
        assert _max_diff(model.eval(), ref, x) == 0.0
    # save_pretrained of any state dict refuses non-finite weights
    bad = {k: v.clone() for k, v in ref.state_dict().items()}
    bad["head.bias"][0] = float("nan")
    with pytest.raises(MvmoeError, match="head.bias holds NaN"):
        save_pretrained(tmp_path / "bad", ref.cfg, bad)
    assert not (tmp_path / "bad" / "model.safetensors").exists()


def test_cli_init_from_safetensors_as_the_dense_stage(tmp_path):
    """--init model.safetensors with dense_stage=init: the dense stage is those weights (0 epochs),
    and moe_init=upcycle starts the MoE from them; the MoE trains and exports with parity."""
    runner = CliRunner()
    base = ["train", "--data", "synthetic:4:2", "--set", "depth=3", "--set", "width=32", "--set", "heads=2",
            "--set", "batch_size=16", "--quiet"]
    r = runner.invoke(app, base + ["--model", "vit-6x64-p32", "--epochs", "1", "--out", str(tmp_path / "d")])
    assert r.exit_code == 0, r.output
    src = tmp_path / "d" / "model.safetensors"
    r = runner.invoke(app, base + ["--model", "vmoe-6x64-p32", "--set", "num_experts=2", "--epochs", "1", "--init", str(src),
                                   "--set", "dense_stage=init", "--set", "moe_init=upcycle", "--out", str(tmp_path / "m")])
    assert r.exit_code == 0, r.output
    adopted = load_checkpoint(tmp_path / "m" / "dense" / "model.pt")
    original = load_checkpoint(tmp_path / "d" / "model.pt")
    for name, t in original["ema"].items():
        assert torch.equal(adopted["model"][name], t), name
    summary = json.loads((tmp_path / "m" / "dense" / "summary.json").read_text())
    assert summary["epochs"] == 0
    moe = json.loads((tmp_path / "m" / "summary.json").read_text())
    assert moe["model_config"]["gate"] == "unit" and moe["router_superclass_top1"] is not None
    run = json.loads((tmp_path / "m" / "run.json").read_text())
    assert len(run["init_sha256"]) == 64

    from converters.pipeline import export_checkpoint

    [res] = export_checkpoint(tmp_path / "m" / "model.pt", "onnx", None, "fp32", tmp_path / "exp", parity_images=8,
                              calibration_images=4)
    assert res.ok, res.error
    assert res.metadata["parity"]["ran"] and res.metadata["parity"]["top1_agreement"] == 1.0


def test_upcycle_without_a_dense_model_is_refused(tmp_path):
    r = CliRunner().invoke(app, ["train", "--superclasses", "none", "--set", "moe_init=upcycle",
                                 "--out", str(tmp_path / "run")])
    assert r.exit_code == 1
    assert r.stderr.strip().startswith("error: moe_init=upcycle copies the experts from a dense model")


def test_upcycling_recipe_starts_from_deit_tiny(tmp_path):
    from mobile_vmoe.train.run import base_config, check_init, stage_inits, upcycles

    torch.save(_timm("deit_tiny_patch16_224").state_dict(), tmp_path / "deit.pth")
    tcfg = base_config(None, "imagenet-vmoe-12x192-p16-upcycle")
    assert (tcfg.epochs, tcfg.moe_init, tcfg.dense_stage, tcfg.model.name) == (150, "upcycle", "init", "vmoe-12x192-p16")
    with pytest.raises(MvmoeError, match="dense_stage=init takes the dense stage from --init"):
        check_init(tcfg, "auto")
    tcfg = tcfg.replace(init=str(tmp_path / "deit.pth"))
    check_init(tcfg, "auto")  # DeiT-Tiny's weights fit the dense twin and, upcycled, the MoE
    assert upcycles(tcfg)
    assert stage_inits(tcfg, "auto", tmp_path / "run") == (str(tmp_path / "deit.pth"),
                                                           str(tmp_path / "run" / "dense" / "model.pt"))


@pytest.mark.slow
def test_upcycled_run_on_two_gloo_processes(tmp_path):
    """The recipe's dense stage, then the MoE upcycled from it, under torchrun with 2 processes."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    mvmoe = str(Path(sys.executable).with_name("mvmoe"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "--no-python",
           mvmoe, "train", "--data", "synthetic:4:2", "--set", "depth=3", "--set", "width=32", "--set", "heads=2",
           "--set", "num_experts=2", "--set", "batch_size=16", "--epochs", "1", "--set", "moe_init=upcycle",
           "--quiet", "--out", str(tmp_path / "run")]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["model_config"]["gate"] == "unit"
    assert (tmp_path / "run" / "model.safetensors").is_file()
