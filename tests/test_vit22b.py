"""The ViT-22B options of ModelConfig: qk_norm, parallel_block, bias.

Hand counts, the maths of each option, dense / per-image / per-token models, every dispatch path,
static export, and (slow) parity of ExecuTorch XNNPACK, LiteRT and ONNX artifacts.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mobile_vmoe.config import ModelConfig, parse_overrides
from mobile_vmoe.errors import MvmoeError
from mobile_vmoe.models import MobileVMoE
from mobile_vmoe.models.dispatch import dense_dispatch, gather_dispatch, grouped_dispatch
from mobile_vmoe.models.experts import ExpertBank
from mobile_vmoe.models.vit import Attention, Block, Mlp
from mobile_vmoe.models.flops import analytic_macs, profile_flops

OPTIONS = {
    "qk_norm": dict(qk_norm=True),
    "parallel_block": dict(parallel_block=True),
    "no_bias": dict(bias=False),
    "all_three": dict(qk_norm=True, parallel_block=True, bias=False),
}
ROUTINGS = {"dense": dict(num_experts=0), "image": dict(num_experts=4, moe_blocks=1),
            "token": dict(num_experts=4, moe_blocks=1, routing="token")}

# depth 2, width 8, 2 heads (head dim 4), mlp_ratio 2 (H 16), 16 px in 4 px patches: 4x4 grid, T = 17
TINY = dict(depth=2, width=8, heads=2, mlp_ratio=2.0, img_size=16, patch_size=4, num_classes=3)
# params, bias on:
#   patch embedding conv 3*4*4*8 + 8 = 392, class token 8, position embedding 17*8 = 136   = 536
#   block: norm1 8+8, qkv 8*24+24, proj 8*8+8, norm2 8+8, fc1 8*16+16, fc2 16*8+8
#          = 16 + 216 + 72 + 16 + 144 + 136                                                 = 600
#   final norm 8+8, head 8*3+3                                                              = 43
# bias off: the block loses 8+24+8+8+16+8 = 72 biases (528), the final norm 8 (35).
# qk_norm: + q_norm and k_norm over the head dim, 2*(4+4) = 16 per block (2*4 = 8 without bias).
# parallel_block: no norm2, - 16 per block (- 8 without bias).
EMBED = 536
BLOCK = {"none": 600, "qk_norm": 616, "parallel_block": 584, "no_bias": 528, "all_three": 528}
END = {"none": 43, "qk_norm": 43, "parallel_block": 43, "no_bias": 35, "all_three": 35}
TOTAL = {"none": 1779, "qk_norm": 1811, "parallel_block": 1747, "no_bias": 1627, "all_three": 1627}
# MACs: patch embedding 16 patches * 48 * 8 = 6144; block: qkv 17*8*24 = 3264, q@k and a@v
# 2 * 17*17*8 = 4624, proj 17*8*8 = 1088, fc1 + fc2 2 * 17*8*16 = 4352 -> 13328; head 8*3 = 24.
# None of the options changes them: norms and bias adds are elementwise, which the convention does
# not count, and a parallel block runs the same two branches.
HAND_MACS = 6144 + 2 * 13328 + 24  # 32824


def tiny(option: str = "none", routing: str = "dense", **kw) -> MobileVMoE:
    return MobileVMoE(ModelConfig(**TINY, **OPTIONS.get(option, {}), **ROUTINGS[routing], **kw))


def randomize(model: nn.Module, std: float = 0.1, seed: int = 0) -> nn.Module:
    """Move every parameter (biases and norm weights too) off its init, so each of them matters."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * std)
    return model


# ------------------------------------------------------------------------------------------ config
def test_defaults_and_set_overrides():
    cfg = ModelConfig()
    assert (cfg.qk_norm, cfg.parallel_block, cfg.bias, cfg.qkv_bias) == (False, False, True, True)
    over = parse_overrides(["qk_norm=true", "parallel_block=1", "bias=false"])
    assert over == {"qk_norm": True, "parallel_block": True, "bias": False}
    from mobile_vmoe.models.registry import get_config

    assert get_config("deit-tiny", **over).qk_norm is True  # usable with any preset


@pytest.mark.parametrize("key", ["qk_norm", "parallel_block", "bias", "qkv_bias"])
def test_non_bool_option_is_rejected_by_name(key):
    with pytest.raises(MvmoeError, match=f"{key}='yes' must be true or false"):
        ModelConfig(**{key: "yes"})


def test_old_checkpoint_configs_get_the_plain_vit():
    d = ModelConfig(**TINY).to_dict()
    for key in ("qk_norm", "parallel_block", "bias"):
        d.pop(key)
    cfg = ModelConfig.from_dict(d)
    assert (cfg.qk_norm, cfg.parallel_block, cfg.bias) == (False, False, True)


def test_qkv_bias_only_when_bias_is_on():
    def qkv_bias(**kw):
        return MobileVMoE(ModelConfig(**TINY, **kw)).blocks[0].attn.qkv.bias is not None

    assert qkv_bias() and not qkv_bias(qkv_bias=False) and not qkv_bias(bias=False)
    assert not qkv_bias(bias=False, qkv_bias=True)
    assert [ModelConfig(bias=b, qkv_bias=q).use_qkv_bias for b in (True, False) for q in (True, False)] == [
        True, False, False, False]
    # qkv_bias=False alone keeps every other bias
    assert MobileVMoE(ModelConfig(**TINY, qkv_bias=False)).blocks[0].attn.proj.bias is not None


# ------------------------------------------------------------------------------------ hand counts
@pytest.mark.parametrize("option", ["none", *OPTIONS])
def test_dense_params_equal_hand_count(option):
    report = profile_flops(tiny(option))
    assert [b.params for b in report.per_block] == [EMBED, BLOCK[option], BLOCK[option], END[option]]
    assert report.params == report.active_params == EMBED + 2 * BLOCK[option] + END[option] == TOTAL[option]


@pytest.mark.parametrize("option", ["none", *OPTIONS])
@pytest.mark.parametrize("routing", ["dense", "image", "token"])
def test_macs_unchanged_by_the_options(option, routing):
    # per-image MoE (k = 1): + router Linear(8, 4) = 32 on the gather path (one expert of 4 runs);
    # per-token: capacity ceil(1.05 * 17 / 4) = 5 slots x 4 experts = 20 token-MLPs instead of 17,
    # + 3 * 2*8*16 = 768, and the router 17*8*4 = 544.
    extra = {"dense": 0, "image": 32, "token": 3 * 2 * 8 * 16 + 17 * 8 * 4}[routing]
    model = tiny(option, routing)
    assert profile_flops(model).macs == HAND_MACS + extra == analytic_macs(model.cfg)


@pytest.mark.parametrize("option", ["none", *OPTIONS])
def test_moe_params_equal_hand_count(option):
    # The MoE block (block 1) holds 4 experts instead of one Mlp: 2*8*16 = 256 weights each, + 16 + 8
    # biases with bias on (280). The per-image router (LayerNorm 16 + Linear(8, 4) 36 = 52) keeps its
    # biases either way; the per-token router is a bias-free Linear(8, 4) = 32.
    per_expert = 256 if OPTIONS.get(option, {}).get("bias") is False else 280
    dense = TOTAL[option]
    image = profile_flops(tiny(option, "image"))
    assert image.params == dense - per_expert + 4 * per_expert + 52
    assert image.params == {"none": 2671, "qk_norm": 2703, "parallel_block": 2639, "no_bias": 2447,
                            "all_three": 2447}[option]
    assert image.active_params == image.params - 3 * per_expert
    assert [b.name for b in image.per_block][2] == "router" and image.per_block[2].params == 52
    assert image.per_block[3].params == BLOCK[option] - per_expert + 4 * per_expert
    token = profile_flops(tiny(option, "token"))
    assert token.params == token.active_params == dense - per_expert + 4 * per_expert + 32


def test_no_bias_leaves_biases_only_outside_the_transformer():
    model = tiny("all_three", "image")
    biased = {n for n, p in model.named_parameters() if n.endswith((".bias", ".b1", ".b2"))}
    assert biased == {"patch_embed.proj.bias", "router.norm.bias", "router.proj.bias", "head.bias"}
    assert model.blocks[1].mlp.experts.b1 is None and model.blocks[0].norm2 is None
    assert model.blocks[0].attn.q_norm.bias is None and model.norm.bias is None


# ------------------------------------------------------------------------------- what each one does
def reference_attention(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    """Attention the slow obvious way: one head at a time, QK-norm as F.layer_norm over the head dim."""
    B, T, D = x.shape
    d = attn.head_dim
    q, k, v = attn.qkv(x).split(D, dim=-1)
    heads = []
    for i in range(attn.heads):
        qi, ki, vi = (t[..., i * d : (i + 1) * d] for t in (q, k, v))  # (B, T, d)
        if isinstance(attn.q_norm, nn.LayerNorm):
            qi = F.layer_norm(qi, (d,), attn.q_norm.weight, attn.q_norm.bias, eps=1e-6)
            ki = F.layer_norm(ki, (d,), attn.k_norm.weight, attn.k_norm.bias, eps=1e-6)
        a = (qi @ ki.transpose(1, 2) / d**0.5).softmax(-1)  # (B, T, T)
        heads.append(a @ vi)
    return attn.proj(torch.cat(heads, dim=-1))


@pytest.mark.parametrize("qk_norm", [False, True])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("fused", [True, False])
def test_attention_matches_per_head_reference(qk_norm, bias, fused):
    attn = randomize(Attention(8, 2, qkv_bias=bias, qk_norm=qk_norm, proj_bias=bias, norm_bias=bias), std=0.5)
    attn.fused = fused
    x = torch.randn(3, 5, 8)
    torch.testing.assert_close(attn(x), reference_attention(attn, x), rtol=1e-5, atol=1e-5)
    n_params = sum(p.numel() for p in attn.parameters())
    # qkv 8*24 (+24), proj 8*8 (+8), QK-norm 2 * 4 weights (+ 2 * 4 biases)
    assert n_params == 192 + 64 + (32 if bias else 0) + (8 + (8 if bias else 0) if qk_norm else 0)


def test_layer_norm_by_means_hand_numbers():
    """x = [1, 2, 3, 4]: mean 2.5, variance 1.25 -> (x - 2.5) / sqrt(1.25) = [-1.3416, -0.4472, 0.4472, 1.3416];
    weight [1, 2, 1, 1] and no bias -> [-1.3416, -0.8944, 0.4472, 1.3416]."""
    from mobile_vmoe.models.vit import layer_norm_by_means

    ln = nn.LayerNorm(4, eps=0.0, bias=False)
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]]).view(1, 1, 1, 4)
    torch.testing.assert_close(layer_norm_by_means(x, ln).flatten(), torch.tensor([-1.3416, -0.4472, 0.4472, 1.3416]),
                               rtol=0, atol=1e-4)
    with torch.no_grad():
        ln.weight.copy_(torch.tensor([1.0, 2.0, 1.0, 1.0]))
    torch.testing.assert_close(layer_norm_by_means(x, ln).flatten(), torch.tensor([-1.3416, -0.8944, 0.4472, 1.3416]),
                               rtol=0, atol=1e-4)
    strided = torch.randn(2, 5, 12)[..., 4:8].reshape(2, 5, 1, 4)  # a slice, as q is of the qkv output
    torch.testing.assert_close(layer_norm_by_means(strided, ln), ln(strided), rtol=1e-5, atol=1e-6)


def test_qk_norm_makes_attention_blind_to_the_scale_of_q_and_k():
    """LayerNorm(c * q) == LayerNorm(q) (up to eps): scaling the q and k rows of the qkv weight by
    100 changes nothing with QK-norm and saturates the softmax without it."""
    x = torch.randn(2, 5, 8)
    for qk_norm, same in ((True, True), (False, False)):
        attn = randomize(Attention(8, 2, qkv_bias=False, qk_norm=qk_norm), std=0.3)
        before = attn(x)
        with torch.no_grad():
            attn.qkv.weight[:16] *= 100.0  # rows 0..15 produce q and k
        assert torch.allclose(attn(x), before, atol=1e-4) == same


def test_parallel_block_is_one_shared_norm_and_a_sum():
    torch.manual_seed(0)
    blk = randomize(Block(8, 2, Mlp(8, 16), parallel=True), std=0.3)
    x = torch.randn(2, 5, 8)
    y = blk.norm1(x)
    torch.testing.assert_close(blk(x)[0], x + blk.attn(y) + blk.mlp(y))
    seq = Block(8, 2, Mlp(8, 16))
    seq.norm1, seq.attn, seq.mlp = blk.norm1, blk.attn, blk.mlp
    with torch.no_grad():
        seq.norm2.load_state_dict(blk.norm1.state_dict())
    assert not torch.allclose(seq(x)[0], blk(x)[0], atol=1e-3)  # the sequential block feeds attn's output to the MLP


def test_parallel_block_drop_path_drops_both_branches_together():
    """One mask per image for attn + mlp: each image gets x or x + (attn(y) + mlp(y)) / keep."""
    blk = randomize(Block(8, 2, Mlp(8, 16), drop_path=0.5, parallel=True), std=0.3).train()
    x = torch.randn(32, 5, 8)
    with torch.no_grad():
        y = blk.norm1(x)
        both = x + (blk.attn(y) + blk.mlp(y)) / 0.5
        torch.manual_seed(0)
        out = blk(x)[0]
    dropped = torch.isclose(out, x, atol=1e-6).flatten(1).all(1)
    kept = torch.isclose(out, both, atol=1e-5).flatten(1).all(1)
    assert (dropped ^ kept).all() and dropped.any() and kept.any()


@pytest.mark.parametrize("bias", [True, False])
def test_bias_free_experts_by_hand(bias):
    """D = H = 1, two experts: expert e is gelu(a_e * x [+ c_e]) * w_e [+ d_e]."""
    bank = ExpertBank(num_experts=2, dim=1, hidden=1, bias=bias)
    with torch.no_grad():
        bank.w1.copy_(torch.tensor([[[1.0]], [[2.0]]]))
        bank.w2.copy_(torch.tensor([[[3.0]], [[-1.0]]]))
        if bias:
            bank.b1.copy_(torch.tensor([[0.0], [1.0]]))
            bank.b2.copy_(torch.tensor([[0.5], [0.0]]))
    x = torch.tensor([[[1.0], [2.0]], [[1.0], [2.0]]])  # 2 images, 2 tokens
    index, gates = torch.tensor([[0], [1]]), torch.tensor([[1.0], [0.5]])
    g = lambda v: float(F.gelu(torch.tensor(v)))
    if bias:
        expected = [[3 * g(1.0) + 0.5, 3 * g(2.0) + 0.5], [0.5 * -g(3.0), 0.5 * -g(5.0)]]
    else:
        expected = [[3 * g(1.0), 3 * g(2.0)], [0.5 * -g(2.0), 0.5 * -g(4.0)]]
    expected = torch.tensor(expected).unsqueeze(-1)
    for fn in (gather_dispatch, dense_dispatch, grouped_dispatch):
        torch.testing.assert_close(fn(bank, x, index, gates), expected, rtol=0, atol=1e-6)
    assert bank.params_per_expert() == (4 if bias else 2)


# ------------------------------------------------------------------------- whole models, every path
@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("routing", ["dense", "image", "token"])
def test_every_routing_runs_trains_and_has_one_attention_maths(option, routing):
    model = randomize(tiny(option, routing, top_k=1 if routing == "dense" else 2), std=0.2).eval()
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        fused = model.set_fused_attention(True)(x)
        explicit = model.set_fused_attention(False)(x)
    assert fused.shape == (4, 3) and torch.isfinite(fused).all()
    torch.testing.assert_close(fused, explicit, rtol=1e-5, atol=1e-5)
    model.train()
    out = model.forward_with_routing(x)
    loss = out.logits.square().mean() + (out.aux_loss if out.aux_loss is not None else 0)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    if OPTIONS[option].get("qk_norm"):
        assert grads["blocks.0.attn.q_norm.weight"].abs().sum() > 0  # the norms are on the path


@pytest.mark.parametrize("option", list(OPTIONS))
def test_image_dispatch_paths_agree(option):
    model = randomize(tiny(option, "image", top_k=2, router_input="mean"), std=0.3).eval()
    x = torch.randn(9, 3, 16, 16)
    with torch.no_grad():
        model.router.proj.weight.normal_(std=3.0)  # a decisive router: images pick different experts
        outs = {mode: model.set_dispatch(mode)(x) for mode in ("gather", "dense", "grouped")}
    assert model.forward_with_routing(x).expert_index.unique().numel() > 2  # routes differ across images
    for mode in ("dense", "grouped"):
        torch.testing.assert_close(outs[mode], outs["gather"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("option", list(OPTIONS))
def test_static_export_of_every_option(option):
    model = tiny(option, "image").eval().set_dispatch("gather").set_fused_attention(False)
    ep = torch.export.export(model, (torch.randn(1, 3, 16, 16),), strict=False)
    assert not [n for n in ep.graph.nodes if isinstance(n.meta.get("val"), torch.Tensor)
                and any(isinstance(s, torch.SymInt) for s in n.meta["val"].shape)]
    targets = [str(n.target) for n in ep.graph.nodes if n.op == "call_function"]
    # w1, w2 (and b1, b2 with bias) gathered in the one MoE block; LayerNorm ops: norm1 (+ norm2)
    # per block, the router's and the final one. QK-norm is written with means (2 per norm, q and k).
    opts = OPTIONS[option]
    assert targets.count("aten.index_select.default") == (4 if opts.get("bias", True) else 2)
    assert targets.count("aten.layer_norm.default") == 2 * (1 if opts.get("parallel_block") else 2) + 2
    assert targets.count("aten.mean.dim") == (2 * 2 * 2 if opts.get("qk_norm") else 0)


@pytest.mark.parametrize("fused", [True, False])
def test_decomposed_layernorm_export_form_with_all_options(fused):
    """`--layer-norm decomposed` swaps every LayerNorm, QK-norm's too (fed a strided slice of qkv
    when attention is fused), and gives the same numbers."""
    from converters.layernorm import decompose_layernorm
    from converters.static_export import export_static
    from converters.wrapper import prepare_for_export

    model = randomize(tiny("all_three", "image"), std=0.2).eval()
    w = prepare_for_export(model, fused_attention=fused)
    wd = decompose_layernorm(prepare_for_export(model, fused_attention=fused))
    assert not any(isinstance(m, nn.LayerNorm) for m in wd.modules())
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        for a, b in zip(w(x), wd(x)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    export_static(wd, x)  # static shapes with the decomposed norms too


def test_cli_profile_flops_with_options():
    import json

    from typer.testing import CliRunner

    from mobile_vmoe.cli import app

    def run(*sets):
        args = ["profile", "flops", "--model", "vmoe-12x192-p32", "--json"] + [a for s in sets for a in ("--set", s)]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        return json.loads(result.output)

    base, opts = run(), run("qk_norm=true", "parallel_block=true", "bias=false")
    assert opts["macs"] == base["macs"] == 306036096
    # per block: + QK-norm 2*64 weights, - norm2 2*192, - biases qkv 576 + proj 192 + norm1 192 + fc1 768
    # + fc2 192 (dense) or 10*(768+192) per expert bank (MoE); - final norm bias 192
    dense_block = 128 - 384 - (576 + 192 + 192 + 768 + 192)
    moe_block = 128 - 384 - (576 + 192 + 192) - 10 * (768 + 192)
    assert opts["params"] - base["params"] == 10 * dense_block + 2 * moe_block - 192


# ----------------------------------------------------------------------------------- real exports
def option_checkpoint(option: str) -> dict:
    """A tiny per-image MoE (3 blocks, last 2 MoE, 4 experts, 16 px in 4 px patches) with moved
    weights, and the digits data so that parity runs on real images."""
    from mobile_vmoe.data import build_data

    cfg = ModelConfig(depth=3, width=32, heads=2, img_size=16, patch_size=4, num_classes=10, num_experts=4,
                      top_k=1, moe_blocks=2, **OPTIONS[option])
    model = randomize(MobileVMoE(cfg), std=0.1)
    data = build_data("digits", 16, augment="none")
    return {"model_config": cfg.to_dict(), "model": model.state_dict(), "class_names": data.class_names,
            "data": data.checkpoint_info()}


@pytest.mark.slow
@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("target", ["executorch", "tflite", "onnx"])
def test_export_parity(option, target, tmp_path):
    from converters.pipeline import export_checkpoint

    ckpt = option_checkpoint(option)
    [r] = export_checkpoint(ckpt, target, None, "fp32", tmp_path, parity_images=16, experts="fused")
    assert r.ok, (r.error, r.notes)
    p = r.metadata["parity"]
    assert p["ran"] and p["images"] == 16 and p["max_abs_diff"] < 1e-4 and p["top1_agreement"] == 1.0
    opts = OPTIONS[option]
    # LayerNorms in the artifact: norm1 (+ norm2) in 3 blocks, the router's and the final one;
    # QK-norm (q and k in 3 blocks) as 2 means and 1 rsqrt each
    norms = 3 * (1 if opts.get("parallel_block") else 2) + 2
    qk = 3 * 2 if opts.get("qk_norm") else 0
    gathers = 2 * (4 if opts.get("bias", True) else 2)  # stacked expert tensors gathered, 2 MoE blocks
    ops = r.metadata["ops"]["ops"]
    if target == "executorch":
        assert ops["aten_native_layer_norm_default"]["portable"] == norms
        assert ops.get("aten_mean_dim", {"delegated": 0, "portable": 0}) == {"delegated": 2 * qk, "portable": 0}
        assert ops["aten_index_select_default"]["portable"] == gathers
        assert ops["aten_linear_default"]["portable"] == 0 and ops["aten_bmm_default"]["portable"] == 0
    elif target == "onnx":
        assert ops["LayerNormalization"] == norms and ops.get("ReduceMean", 0) == 2 * qk and ops["Gather"] == gathers
    else:
        assert ops["RSQRT"] == norms + qk and ops["GATHER_ND"] == gathers and r.metadata["ops"]["flex_ops"] == []


@pytest.mark.slow
def test_coreml_converts_all_three_options(tmp_path):
    """Core ML lowers here (its prediction needs macOS, so parity is not run)."""
    from converters.pipeline import export_checkpoint

    [r] = export_checkpoint(option_checkpoint("all_three"), "coreml", None, "fp32", tmp_path, parity_images=4,
                            experts="fused")
    assert r.ok, (r.error, r.notes)
    assert r.metadata["ops"]["ops"]["gather"] == 2 * 2  # w1 and w2 of 2 MoE blocks: no expert biases
    assert r.metadata["model_config"]["qk_norm"] and not r.metadata["model_config"]["bias"]
