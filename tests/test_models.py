"""Every preset builds, runs and (MoE) exports with static shapes; model-level behaviour."""

import pytest
import torch

from mobile_vmoe.errors import MvmoeError
from mobile_vmoe.models.registry import create_model, dense_twin, get_config, list_models

ALL = list_models()
MOE = [n for n in ALL if n.startswith("vmoe-")]


def test_registry_has_the_paper_grid_and_references():
    for d in (12, 9, 6):
        for w in (384, 192, 96, 64):
            for p in (32, 16):
                assert f"vit-{d}x{w}-p{p}" in ALL and f"vmoe-{d}x{w}-p{p}" in ALL
    assert {"deit-tiny", "deit-small"} <= set(ALL)
    assert len(ALL) == 2 * 24 + 2
    cfg = get_config("vmoe-12x192-p32")
    assert (cfg.num_experts, cfg.top_k, cfg.moe_blocks, cfg.routing) == (10, 1, 2, "image")
    tiny = get_config("deit-tiny")
    assert (tiny.depth, tiny.width, tiny.heads, tiny.patch_size, tiny.img_size) == (12, 192, 3, 16, 224)


@pytest.mark.parametrize("name", ALL)
def test_every_preset_builds_and_runs(name):
    model = create_model(name).eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 224, 224))
    assert logits.shape == (1, 1000) and torch.isfinite(logits).all()


def _static_export(model, x):
    ep = torch.export.export(model, (x,), strict=False)
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    symbolic = [n.name for n in ep.graph.nodes
                if isinstance(n.meta.get("val"), torch.Tensor)
                and any(isinstance(s, torch.SymInt) for s in n.meta["val"].shape)]
    return ep, targets, symbolic


@pytest.mark.parametrize("name", MOE)
def test_every_moe_preset_exports_with_static_shapes(name):
    # On the meta device: the graph is what matters, not the numbers (and it is 5x faster).
    with torch.device("meta"):
        model = create_model(name).eval().set_dispatch("gather")
        x = torch.randn(1, 3, 224, 224)
    ep, targets, symbolic = _static_export(model, x)
    assert symbolic == []  # no symbolic (data-dependent) shapes anywhere
    assert not any(t.startswith(("cond", "while_loop", "torch.ops.higher_order")) for t in targets)
    assert "aten.index_select.default" in targets and "aten.topk.default" in targets  # the static gather
    assert "aten.nonzero.default" not in targets  # grouped dispatch must not leak into export
    out = [n for n in ep.graph.nodes if n.op == "output"][0].args[0][0]
    assert tuple(out.meta["val"].shape) == (1, 1000)


def test_exported_moe_matches_eager_numbers():
    model = create_model("vmoe-6x64-p32", img_size=64, num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    ep = torch.export.export(model, (x,), strict=False)
    for _ in range(3):
        x = torch.randn(1, 3, 64, 64)
        torch.testing.assert_close(ep.module()(x), model(x))


def test_auto_dispatch_exports_as_gather_even_for_large_batches():
    model = create_model("vmoe-6x64-p32", img_size=64, num_classes=10).eval()  # dispatch auto
    ep, targets, symbolic = _static_export(model, torch.randn(64, 3, 64, 64))
    assert symbolic == [] and "aten.nonzero.default" not in targets


def test_dense_dispatch_exports_without_gather():
    model = create_model("vmoe-6x64-p32", img_size=64, num_classes=10).eval().set_dispatch("dense")
    _, targets, _ = _static_export(model, torch.randn(1, 3, 64, 64))
    assert "aten.index_select.default" not in targets


def test_per_token_vmoe_exports_with_static_shapes():
    model = create_model("vmoe-6x64-p32", img_size=64, num_classes=10, routing="token").eval()
    _, _, symbolic = _static_export(model, torch.randn(2, 3, 64, 64))
    assert symbolic == []


def test_forward_is_logits_and_forward_with_routing_is_structured():
    model = create_model("vmoe-6x96-p32", img_size=64, num_classes=5, top_k=2).eval()
    x = torch.randn(3, 3, 64, 64)
    out = model.forward_with_routing(x)
    torch.testing.assert_close(model(x), out.logits)
    assert out.router_logits.shape == (3, 10)
    assert out.expert_index.shape == (3, 2) and out.gates.shape == (3, 2)
    torch.testing.assert_close(out.gates.sum(-1), torch.ones(3))  # k=2 gates renormalised
    assert (out.expert_index[:, 0] != out.expert_index[:, 1]).all()
    assert out.aux_loss is None and out.token_routes == []


def test_per_token_model_returns_aux_loss_and_routes():
    model = create_model("vmoe-6x64-p32", img_size=32, patch_size=8, num_classes=5, routing="token",
                         capacity_ratio=0.5).train()
    out = model.forward_with_routing(torch.randn(4, 3, 32, 32))
    assert len(out.token_routes) == 2 and out.aux_loss.ndim == 0 and out.aux_loss > 0
    # one group of all 4 images: 68 tokens, E=10, k=1, ratio 0.5: capacity ceil(3.4) = 4 slots per
    # expert -> at most 40 kept in the group, however they split between the images
    for r in out.token_routes:
        assert (r.capacity, tuple(r.kept.shape)) == (4, (1, 68, 1)) and int(r.kept.sum()) <= 40
    out.logits.sum().backward()  # trains end to end


def test_token_groups_pool_buffers_across_images():
    """token_group_size=1 routes each image on its own (capacity ceil(0.5 * 17 / 10) = 1 per expert,
    the same numbers as running the images one by one); a group of the whole batch lets one image's
    tokens use buffer room the others leave, so outputs change when capacity binds."""
    x = torch.randn(4, 3, 32, 32)
    kw = dict(img_size=32, patch_size=8, num_classes=5, routing="token", capacity_ratio=0.5)
    torch.manual_seed(0)
    single = create_model("vmoe-6x64-p32", token_group_size=1, **kw).eval()
    batch = create_model("vmoe-6x64-p32", **kw).eval()
    batch.load_state_dict(single.state_dict())
    out = single.forward_with_routing(x)
    assert all((r.capacity, tuple(r.kept.shape)) == (1, (4, 17, 1)) for r in out.token_routes)
    alone = torch.cat([single(x[i:i + 1]) for i in range(4)])
    assert torch.allclose(out.logits, alone, atol=1e-5)
    assert not torch.allclose(batch(x), alone, atol=1e-3)
    assert torch.equal(batch(x[:1]), single(x[:1]))  # a batch of one is a group of one
    two = create_model("vmoe-6x64-p32", token_group_size=2, **kw).eval()
    assert tuple(two.forward_with_routing(x).token_routes[0].kept.shape) == (2, 34, 1)
    three = create_model("vmoe-6x64-p32", token_group_size=3, **kw).eval()  # gcd(4, 3) = 1 image per group
    assert tuple(three.forward_with_routing(x).token_routes[0].kept.shape) == (4, 17, 1)


def test_eval_capacity_ratio_applies_in_eval_mode_only():
    model = create_model("vmoe-6x64-p32", img_size=32, patch_size=8, num_classes=5, routing="token",
                         capacity_ratio=0.5, token_group_size=1)
    x = torch.randn(2, 3, 32, 32)
    model.set_capacity_ratio(2.0)  # ceil(2.0 * 17 / 10) = 4 slots per expert in eval mode
    assert model.cfg.eval_capacity_ratio == 2.0
    assert model.eval().forward_with_routing(x).token_routes[0].capacity == 4
    assert model.train().forward_with_routing(x).token_routes[0].capacity == 1
    with pytest.raises(MvmoeError, match="per-token"):
        create_model("vmoe-6x64-p32").set_capacity_ratio(2.0)


def test_dense_model_has_no_router():
    model = create_model("vit-6x64-p32", img_size=64, num_classes=3)
    out = model.forward_with_routing(torch.randn(2, 3, 64, 64))
    assert model.router is None and out.router_logits is None


def test_fused_and_explicit_attention_agree():
    model = create_model("vmoe-6x64-p32", img_size=64, num_classes=3).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a = model.set_fused_attention(True)(x)
        b = model.set_fused_attention(False)(x)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_active_params_count_k_of_e_experts():
    cfg = get_config("vmoe-12x192-p32")
    model = create_model(cfg)
    per_expert = 2 * 192 * 768 + 768 + 192
    dense = create_model(dense_twin(cfg))
    router = 2 * 192 + 192 * 10 + 10  # LayerNorm + Linear(192, 10)
    assert model.num_active_params() == dense.num_params() + router
    assert model.num_params() == dense.num_params() + router + 2 * 9 * per_expert
    k2 = create_model(cfg.replace(top_k=2))
    assert k2.num_active_params() == model.num_active_params() + 2 * per_expert


def test_drop_path_only_in_training():
    model = create_model("vit-6x64-p32", img_size=32, patch_size=8, num_classes=3, drop_path=0.5)
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    torch.testing.assert_close(model(x), model(x))
    model.train()
    torch.manual_seed(0)
    a = model(x)
    torch.manual_seed(1)
    assert not torch.allclose(a, model(x))


def test_drop_path_is_torchvisions_stochastic_depth_per_sample():
    """Training: each sample's residual branch is kept (scaled by 1 / (1 - p)) or dropped whole;
    eval: identity."""
    from mobile_vmoe.models.vit import Block, Mlp

    block = Block(8, 2, Mlp(8, 16), drop_path=0.5)
    branch = torch.ones(64, 3, 8)
    torch.manual_seed(0)
    y = block.drop_path.train()(branch)
    per_sample = y[:, 0, 0]
    assert set(per_sample.tolist()) <= {0.0, 2.0} and 0 < int((per_sample == 0).sum()) < 64
    assert torch.equal(y, per_sample.view(64, 1, 1).expand_as(y))  # whole sample kept or dropped
    assert torch.equal(block.drop_path.eval()(branch), branch)


def test_set_dispatch_keeps_the_config_true():
    model = create_model("vmoe-6x64-p32", img_size=64, num_classes=3)
    assert model.set_dispatch("dense").cfg.dispatch == "dense"
    assert all(m.dispatch == "dense" for m in model.modules() if hasattr(m, "resolve_dispatch"))
    with pytest.raises(MvmoeError, match="dispatch='scatter'"):
        model.set_dispatch("scatter")
