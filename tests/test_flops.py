"""FLOPs counting: a hand count, published reference counts, active vs all experts, the CLI."""

import json

import pytest
import torch

from mobile_vmoe.config import ModelConfig
from mobile_vmoe.models import MobileVMoE
from mobile_vmoe.models.flops import analytic_macs, count_macs, profile_flops
from mobile_vmoe.models.registry import create_model, get_config

# img 8, patch 4 -> 4 patches + cls = T 5; D 8; 2 heads; mlp_ratio 4 -> H 32; depth 2; 3 classes
TINY = dict(img_size=8, patch_size=4, width=8, heads=2, depth=2, num_classes=3, mlp_ratio=4.0)
# patch embedding: 4 patches x (3*4*4) inputs x 8 outputs          = 1536
# per block: qkv 5*8*24 = 960, attention q@k 5*5*8 = 200 and a@v 200, proj 5*8*8 = 320,
#            fc1 5*8*32 = 1280, fc2 5*32*8 = 1280                  = 4240
# head: 8 x 3                                                       = 24
HAND_DENSE = 1536 + 2 * 4240 + 24  # 10040


def test_tiny_dense_flops_equal_hand_count():
    report = profile_flops(MobileVMoE(ModelConfig(**TINY)))
    assert report.macs == HAND_DENSE == 10040
    assert report.flops == 2 * 10040
    assert [b.macs for b in report.per_block] == [1536, 4240, 4240, 24]


def test_tiny_moe_flops_count_only_active_experts_on_gather():
    cfg = ModelConfig(**TINY, num_experts=4, top_k=1, moe_blocks=1)
    gather = profile_flops(MobileVMoE(cfg), dispatch="gather")
    assert gather.macs == HAND_DENSE + 8 * 4  # + router Linear(8, 4)
    k2 = profile_flops(MobileVMoE(cfg.replace(top_k=2)), dispatch="gather")
    # a second expert MLP on all 5 tokens, and the gate-weighted sum of the two outputs as a
    # (1 x k) @ (k x T*D) bmm: 2 * 5 * 8
    assert k2.macs == HAND_DENSE + 32 + 2560 + 2 * 5 * 8 == analytic_macs(cfg.replace(top_k=2))
    dense = profile_flops(MobileVMoE(cfg), dispatch="dense")
    # all 4 experts run, and combining them with the gate vector is a (T*D) x E matmul: 5*8*4
    assert dense.macs == HAND_DENSE + 32 + 3 * 2560 + 5 * 8 * 4
    names = [b.name for b in gather.per_block]
    assert names == ["patch_embed", "blocks.0", "router", "blocks.1", "head"]


def test_per_token_flops_count_expert_capacity():
    cfg = ModelConfig(**TINY, num_experts=4, top_k=1, moe_blocks=1, routing="token", capacity_ratio=1.0)
    # capacity ceil(1.0 * 1 * 5 / 4) = 2 slots x 4 experts = 8 token-MLPs instead of 5; router 5*8*4
    expected = HAND_DENSE - 2560 + 8 * 512 + 5 * 8 * 4
    assert profile_flops(MobileVMoE(cfg)).macs == expected == analytic_macs(cfg)


def test_sdpa_attention_is_counted():
    # Without the CPU SDPA formula the 2*T*T*D attention MACs (400 per block here) go missing.
    model = MobileVMoE(ModelConfig(**TINY)).eval()
    fused, _ = count_macs(model, torch.randn(1, 3, 8, 8))
    explicit, _ = count_macs(model.set_fused_attention(False), torch.randn(1, 3, 8, 8))
    assert fused == explicit == HAND_DENSE


@pytest.mark.parametrize("name, published", [
    ("deit-tiny", 1.258e9),   # fvcore / DeiT paper: 1.3 GFLOPs (1.258 G MACs)
    ("deit-small", 4.608e9),  # fvcore: 4.6 G
])
def test_reference_models_agree_with_published_counts(name, published):
    macs = profile_flops(create_model(name)).macs
    assert abs(macs - published) / published < 0.01


def test_paper_54m_flop_variant():
    # The paper's "54M-FLOP" Mobile V-MoE: 6 x 96, patch 32 -> about 51M MACs by our count (within 10%).
    macs = profile_flops(create_model("vmoe-6x96-p32")).macs
    assert 48e6 < macs < 56e6


@pytest.mark.parametrize("name", ["vmoe-12x192-p32", "vit-9x64-p16", "deit-small"])
def test_counted_equals_closed_form(name):
    assert profile_flops(create_model(name)).macs == analytic_macs(get_config(name))


def test_cli_profile_flops_json(capsys):
    from typer.testing import CliRunner

    from mobile_vmoe.cli import app

    result = CliRunner().invoke(app, ["profile", "flops", "--model", "deit-tiny", "--json"])
    assert result.exit_code == 0, result.output
    d = json.loads(result.output)
    assert set(d) >= {"macs", "flops", "params", "active_params", "per_block"}
    assert d["macs"] == 1253683200 and d["flops"] == 2 * d["macs"] and d["params"] == 5717416


def test_cli_models_lists_presets():
    from typer.testing import CliRunner

    from mobile_vmoe.cli import app

    result = CliRunner().invoke(app, ["models", "--json"])
    assert result.exit_code == 0
    rows = {r["name"]: r for r in json.loads(result.output)}
    assert len(rows) == 50
    r = rows["vmoe-12x192-p32"]
    assert (r["experts"], r["k"], r["moe_blocks"], r["macs"]) == (10, 1, 2, 306036096)
    assert r["active_params"] < r["params"]


@pytest.mark.slow
def test_importing_flops_leaves_torchs_formula_registry_alone():
    import subprocess
    import sys

    code = ("from torch.utils import flop_counter as fc; n = len(fc.flop_registry); "
            "import mobile_vmoe.models.flops; print(n, len(fc.flop_registry))")
    before, after = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                   check=True).stdout.split()
    assert before == after


def test_attention_macs_counted_inside_our_counter_only():
    """SDPA on CPU: our counter sees the 2*T*T*D attention MACs, a plain FlopCounterMode may not."""
    import torch.nn.functional as F

    from mobile_vmoe.models.flops import flop_counter

    q = torch.randn(1, 2, 5, 4)  # (B, h, T, d): QK^T and AV are 2 * (h * T * T * d) = 2 * 200 MACs
    with torch.no_grad(), flop_counter() as mode:
        F.scaled_dot_product_attention(q, q, q)
    assert mode.get_total_flops() // 2 == 2 * 2 * 5 * 5 * 4
