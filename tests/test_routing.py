"""Routers: hand-worked top-k gates, capacity and batch-priority routing, balancing losses."""

import math

import pytest
import torch

from mobile_vmoe.models.routing import (PerImageRouter, PerTokenRouter, assign_slots, importance_loss, load_loss,
                                        topk_gates)
from mobile_vmoe.models.registry import create_model


def test_topk_gates_by_hand():
    probs = torch.tensor([[0.1, 0.6, 0.3]])
    gates, index = topk_gates(probs, 2)
    assert index.tolist() == [[1, 2]]
    assert torch.allclose(gates, torch.tensor([[2 / 3, 1 / 3]]))
    gates, index = topk_gates(probs, 1)  # k=1 keeps the raw probability
    assert index.tolist() == [[1]] and torch.allclose(gates, torch.tensor([[0.6]]))


def test_per_image_router_uses_class_token_or_mean():
    r = PerImageRouter(dim=2, num_experts=2, top_k=1, router_input="cls")
    with torch.no_grad():
        r.norm.weight.fill_(1.0), r.norm.bias.zero_()
        r.proj.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        r.proj.bias.zero_()
    x = torch.tensor([[[3.0, 1.0], [0.0, 5.0], [0.0, 7.0]]])  # cls favours dim 0, patches dim 1
    # LayerNorm of [3, 1] = [1, -1] -> logits [1, -1] -> expert 0
    route = r(x)
    assert route.index.tolist() == [[0]]
    assert torch.allclose(route.logits, torch.tensor([[1.0, -1.0]]), atol=1e-4)
    r.router_input = "mean"  # mean patch [0, 6] -> LayerNorm [-1, 1] -> expert 1
    assert r(x).index.tolist() == [[1]]


def test_router_runs_once_per_forward_and_all_moe_blocks_share_its_choice():
    model = create_model("vmoe-9x96-p32", img_size=64, num_classes=7, moe_blocks=3).eval()
    calls, seen = [], []
    model.router.register_forward_hook(lambda m, i, o: calls.append(o))
    for blk in model.blocks[6:]:
        blk.mlp.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs["route"]), with_kwargs=True)
    x = torch.randn(5, 3, 64, 64)
    out = model.forward_with_routing(x)
    assert len(calls) == 1  # one router call for the whole batch, not per block
    assert calls[0].logits.shape == (5, 10)  # one decision per image
    assert len(seen) == 3 and all(r is calls[0] for r in seen)
    assert torch.equal(out.expert_index, calls[0].index)


def test_router_input_is_the_output_of_the_last_dense_block():
    model = create_model("vmoe-6x64-p32", img_size=64, num_classes=3).eval()
    captured = {}
    model.blocks[3].register_forward_hook(lambda m, i, o: captured.update(last_dense=o[0]))  # (x, token_route)
    model.router.register_forward_hook(lambda m, i, o: captured.update(router_in=i[0]))
    model(torch.randn(2, 3, 64, 64))
    assert torch.equal(captured["last_dense"], captured["router_in"])


def test_capacity_drops_exactly_the_hand_worked_tokens():
    # 4 tokens, 2 experts, capacity 1, top-1. Tokens 0, 1, 2 want expert 0 with confidences
    # 0.6, 0.9, 0.7; token 3 wants expert 1 (0.8).
    index = torch.tensor([[[0], [0], [0], [1]]])
    priority = torch.tensor([[0.6, 0.9, 0.7, 0.8]])
    slot, kept = assign_slots(index, priority, num_experts=2, capacity=1, batch_priority=True)
    # BPR: expert 0's single slot goes to the most confident token (1); 0 and 2 are dropped.
    assert kept[..., 0].tolist() == [[False, True, False, True]]
    assert slot[..., 0].tolist() == [[2, 0, 2, 1]]  # slot = e*C + position, dropped -> E*C = 2
    slot, kept = assign_slots(index, priority, num_experts=2, capacity=1, batch_priority=False)
    # Without BPR the first token in order wins.
    assert kept[..., 0].tolist() == [[True, False, False, True]]


def test_second_choices_come_after_all_first_choices():
    # 3 tokens, 2 experts, capacity 2, top-2. First choices: t0->0, t1->0, t2->1; second: t0->1, t1->1, t2->0.
    index = torch.tensor([[[0, 1], [0, 1], [1, 0]]])
    priority = torch.tensor([[0.5, 0.9, 0.7]])
    slot, kept = assign_slots(index, priority, num_experts=2, capacity=2)
    # Expert 0 first choices in priority order: t1 (pos 0), t0 (pos 1) -> full, so t2's 2nd choice drops.
    # Expert 1: t2 first (pos 0), then second choices in priority order: t1 (pos 1), t0 dropped.
    assert kept.tolist() == [[[True, False], [True, True], [True, False]]]
    assert slot.tolist() == [[[1, 4], [0, 3], [2, 4]]]


def test_per_token_router_drops_tokens_over_capacity_end_to_end():
    r = PerTokenRouter(dim=4, num_experts=2, top_k=1, capacity_ratio=0.5, noise=0.0).eval()
    with torch.no_grad():
        r.proj.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]))
    x = torch.tensor([[[5.0, 0, 0, 0], [4.0, 0, 0, 0], [3.0, 0, 0, 0], [0, 2.0, 0, 0]]])
    route = r(x)
    assert route.capacity == 1  # ceil(0.5 * 1 * 4 / 2)
    assert route.kept[..., 0].tolist() == [[True, False, False, True]]
    assert route.gates[0, 1, 0] == 0 and route.gates[0, 0, 0] > 0


def test_importance_loss_by_hand():
    # All mass on expert 0: importance [2, 0] -> std 1, mean 1 -> CV^2 = 1.
    assert importance_loss(torch.tensor([[1.0, 0.0], [1.0, 0.0]])).item() == pytest.approx(1.0)
    assert importance_loss(torch.tensor([[0.5, 0.5], [0.5, 0.5]])).item() == pytest.approx(0.0)


def test_load_loss_by_hand():
    # Two tokens, two experts, k=1, noise std 1, noisy == clean logits [0, 0]: the threshold is 0,
    # each expert wins with P(noise > 0) = 0.5 for each token -> equal load -> loss 0.
    logits = torch.zeros(2, 2)
    assert load_loss(logits, logits, 1.0, 1).item() == pytest.approx(0.0)
    # Clean logits [1, 0], threshold 1: expert 0 wins with P(n > 0) = 0.5, expert 1 with P(n > 1).
    logits = torch.tensor([[1.0, 0.0]])
    p1 = 0.5 * math.erfc(1 / math.sqrt(2))
    mean, std = (0.5 + p1) / 2, (0.5 - p1) / 2
    assert load_loss(logits, logits, 1.0, 1).item() == pytest.approx((std / mean) ** 2, rel=1e-5)


def test_end_to_end_router_gets_gradient_from_classification_with_k1():
    model = create_model("vmoe-6x64-p32", img_size=32, patch_size=8, num_classes=3)
    out = model.forward_with_routing(torch.randn(4, 3, 32, 32))
    out.logits.sum().backward()
    assert model.router.proj.weight.grad.abs().sum() > 0


def test_switch_load_loss_by_hand():
    from mobile_vmoe.models.routing import switch_load_loss

    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4]])  # both choose expert 0: f = [1, 0], P = [0.75, 0.25]
    assert float(switch_load_loss(probs, torch.tensor([0, 0]))) == pytest.approx(2 * 0.75)
    uniform = torch.full((4, 2), 0.5)
    assert float(switch_load_loss(uniform, torch.tensor([0, 1, 0, 1]))) == pytest.approx(1.0)


def test_per_image_router_balancing_loss_in_training_only():
    from mobile_vmoe.models.routing import PerImageRouter, importance_loss, switch_load_loss

    router = PerImageRouter(8, 4, 1)
    x = torch.randn(6, 5, 8)
    r = router.train()(x)
    probs = r.logits.softmax(-1)
    want = importance_loss(probs) + switch_load_loss(probs, r.index[:, 0])
    assert float(r.aux_loss.detach()) == pytest.approx(float(want.detach()))
    r.aux_loss.backward()
    assert router.proj.weight.grad.abs().sum() > 0  # it trains the router
    assert router.eval()(x).aux_loss is None
