"""Dispatch paths: hand-worked expert outputs, and gather == dense == grouped on random weights."""

import pytest
import torch
import torch.nn.functional as F

from mobile_vmoe.models.dispatch import (
    dense_dispatch,
    gather_dispatch,
    grouped_dispatch,
    slot_tokens,
    sparse_gate_vector,
    token_dispatch,
)
from mobile_vmoe.models.experts import ExpertBank
from mobile_vmoe.models.registry import create_model
from mobile_vmoe.models.routing import TokenRoute


def hand_bank() -> ExpertBank:
    """Two experts, D = 1, H = 1: expert e computes gelu(a_e * x + c_e) * w_e + d_e."""
    bank = ExpertBank(num_experts=2, dim=1, hidden=1)
    with torch.no_grad():
        bank.w1.copy_(torch.tensor([[[1.0]], [[2.0]]]))
        bank.b1.copy_(torch.tensor([[0.0], [1.0]]))
        bank.w2.copy_(torch.tensor([[[3.0]], [[-1.0]]]))
        bank.b2.copy_(torch.tensor([[0.5], [0.0]]))
    return bank


def test_gather_by_hand():
    bank = hand_bank()
    x = torch.tensor([[[1.0], [2.0]], [[1.0], [2.0]]])  # 2 images, 2 tokens, D=1
    index = torch.tensor([[0], [1]])
    gates = torch.tensor([[1.0], [0.5]])
    g = lambda v: float(F.gelu(torch.tensor(v)))
    expected = torch.tensor([
        [[3 * g(1.0) + 0.5], [3 * g(2.0) + 0.5]],  # image 0 -> expert 0, gate 1
        [[0.5 * -g(3.0)], [0.5 * -g(5.0)]],  # image 1 -> expert 1: gelu(2x+1) * -1, gate 0.5
    ])
    for fn in (gather_dispatch, dense_dispatch, grouped_dispatch):
        assert torch.allclose(fn(bank, x, index, gates), expected, atol=1e-6), fn.__name__


def test_sparse_gate_vector_by_hand():
    index = torch.tensor([[2, 0], [1, 3]])
    gates = torch.tensor([[0.7, 0.3], [0.6, 0.4]])
    expected = torch.tensor([[0.3, 0.0, 0.7, 0.0], [0.0, 0.6, 0.0, 0.4]])
    torch.testing.assert_close(sparse_gate_vector(index, gates, 4), expected)


@pytest.mark.parametrize("batch", [1, 3, 8, 33])
@pytest.mark.parametrize("k", [1, 2])
def test_gather_equals_dense_equals_grouped(batch, k):
    torch.manual_seed(batch * 10 + k)
    bank = ExpertBank(num_experts=5, dim=16, hidden=24)
    with torch.no_grad():
        for p in bank.parameters():
            p.normal_()  # larger than the init so differences would show
    x = torch.randn(batch, 7, 16)
    index = torch.stack([torch.randperm(5)[:k] for _ in range(batch)])  # distinct experts per image
    gates = torch.rand(batch, k)
    ref = gather_dispatch(bank, x, index, gates)
    # reference computed the slow obvious way
    slow = torch.stack([sum(gates[b, j] * bank.expert(int(index[b, j]), x[b]) for j in range(k)) for b in range(batch)])
    torch.testing.assert_close(ref, slow, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(dense_dispatch(bank, x, index, gates), ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(grouped_dispatch(bank, x, index, gates), ref, rtol=1e-5, atol=1e-4)


def test_grouped_gradients_match_gather():
    torch.manual_seed(1)
    bank = ExpertBank(num_experts=4, dim=8, hidden=8)
    x = torch.randn(6, 5, 8)
    index = torch.tensor([[0], [2], [2], [3], [0], [2]])
    gates = torch.rand(6, 1)
    grads = []
    for fn in (gather_dispatch, grouped_dispatch):
        bank.zero_grad()
        fn(bank, x, index, gates).square().sum().backward()
        grads.append([p.grad.clone() for p in bank.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert grads[0][0][1].abs().sum() == 0  # expert 1 was chosen by nobody: no gradient


@pytest.mark.parametrize("k", [1, 2])
def test_whole_model_dispatch_paths_agree(k):
    model = create_model("vmoe-6x64-p32", img_size=64, num_classes=10, top_k=k).eval()
    with torch.no_grad():
        for blk in model.blocks[4:]:
            blk.mlp.experts.w1.normal_(std=0.2)
    x = torch.randn(12, 3, 64, 64)
    outs = {}
    with torch.no_grad():
        for mode in ("gather", "dense", "grouped", "auto"):
            outs[mode] = model.set_dispatch(mode)(x)
    assert model.forward_with_routing(x).expert_index.unique().numel() > 1  # the routes differ
    for mode in ("dense", "grouped", "auto"):
        torch.testing.assert_close(outs[mode], outs["gather"], rtol=1e-5, atol=1e-5)


def test_auto_dispatch_is_gather_when_exporting_or_small_batch():
    model = create_model("vmoe-6x64-p32", img_size=64, num_classes=10)
    mlp = model.blocks[-1].mlp
    assert mlp.resolve_dispatch(batch=1, k=1) == "gather"
    assert mlp.resolve_dispatch(batch=256, k=1) == "grouped"


def test_token_dispatch_by_hand():
    bank = hand_bank()
    x = torch.tensor([[[1.0], [2.0], [3.0]]])  # one image, three tokens
    # token 0 -> expert 1 slot 0 (gate 0.5); token 1 dropped; token 2 -> expert 0 slot 0 (gate 1)
    route = TokenRoute(logits=torch.zeros(1, 3, 2), index=torch.tensor([[[1], [0], [0]]]),
                       gates=torch.tensor([[[0.5], [0.0], [1.0]]]), slot=torch.tensor([[[1], [2], [0]]]),
                       kept=torch.tensor([[[True], [False], [True]]]), capacity=1, aux_loss=torch.tensor(0.0))
    g = lambda v: float(F.gelu(torch.tensor(v)))
    expected = torch.tensor([[[0.5 * -g(3.0)], [0.0], [3 * g(3.0) + 0.5]]])
    assert torch.allclose(token_dispatch(bank, x, route), expected, atol=1e-6)


def test_slot_tokens_by_hand_and_scatter_equals_compare():
    """T = 3 tokens, k = 1, 4 slots: token 0 -> slot 1, token 1 dropped (slot 4), token 2 -> slot 0;
    empty slots 2 and 3 point at the zero row 3."""
    slot = torch.tensor([[1, 4, 0]])
    for compare in (False, True):
        assert slot_tokens(slot, 3, 1, 4, compare=compare).tolist() == [[2, 0, 3, 3]]
    # random routes with capacity drops, k = 2: the training (scatter) and export (compare) forms agree
    g = torch.Generator().manual_seed(0)
    B, T, k, E, C = 3, 10, 2, 4, 3
    slot = torch.full((B, T * k), E * C)
    for b in range(B):
        taken = torch.randperm(E * C, generator=g)[: T]  # half the token-choices get a slot, no slot twice
        chosen = torch.randperm(T * k, generator=g)[: T]
        slot[b, chosen] = taken
    assert torch.equal(slot_tokens(slot, T, k, E * C), slot_tokens(slot, T, k, E * C, compare=True))


def test_grouped_dispatch_compiles_without_graph_breaks():
    """No host sync in the grouped path: torch.compile(fullgraph=True) traces it whole, grouped
    matmuls included (bf16: the op's compile-time kernel takes 16-bit types; eager backend)."""
    torch.manual_seed(0)
    bank = ExpertBank(num_experts=4, dim=16, hidden=32).to(torch.bfloat16)
    x = torch.randn(6, 5, 16, dtype=torch.bfloat16)
    index = torch.tensor([[0], [2], [2], [3], [0], [2]])  # expert 1 unused: an empty group
    gates = torch.rand(6, 1, dtype=torch.bfloat16)
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(str(gm.graph))
        return gm.forward

    torch._dynamo.reset()
    y = torch.compile(grouped_dispatch, fullgraph=True, backend=backend)(bank, x, index, gates)
    assert len(graphs) == 1 and "grouped_mm" in graphs[0] and "sort" in graphs[0]
    torch.testing.assert_close(y.float(), gather_dispatch(bank, x, index, gates).float(), rtol=2e-2, atol=2e-2)


def test_grouped_dispatch_falls_back_to_gather_where_grouped_mm_cannot_run():
    from mobile_vmoe.models.dispatch import grouped_mm_dtype

    x = torch.randn(2, 3, 16)
    assert grouped_mm_dtype(ExpertBank(2, 16, 32), x) == torch.float32
    assert grouped_mm_dtype(ExpertBank(2, 16, 30), x) is None  # 30 x 4 bytes: rows not 16-byte aligned
    assert grouped_mm_dtype(ExpertBank(2, 16, 32), x.half()) is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert grouped_mm_dtype(ExpertBank(2, 16, 32), x) is None
