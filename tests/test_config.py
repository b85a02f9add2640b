import pytest

from mobile_vmoe.config import ModelConfig, parse_overrides
from mobile_vmoe.errors import MvmoeError
from mobile_vmoe.models.registry import create_model, dense_twin, get_config, is_grid_name, model_name


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(width=100, heads=3), "width=100 is not divisible by heads=3"),
        (dict(num_experts=4, top_k=5), "top_k=5 must be between 1 and num_experts=4"),
        (dict(num_experts=4, moe_blocks=13, depth=12), "moe_blocks=13 must be between 1 and depth=12"),
        (dict(num_experts=4, moe_blocks=6, depth=6), "per-image routing needs at least one dense block"),
        (dict(img_size=224, patch_size=30), "img_size=224 is not divisible by patch_size=30"),
        (dict(num_experts=1), "num_experts=1 must be 0 (dense) or at least 2"),
        (dict(routing="expert"), "routing='expert' must be one of"),
        (dict(dispatch="scatter"), "dispatch='scatter' must be one of"),
        (dict(depth=0), "depth=0 must be a positive integer"),
        (dict(num_experts=4, capacity_ratio=0.0, routing="token"), "capacity_ratio=0.0 must be > 0"),
    ],
)
def test_invalid_config_names_the_bad_value(kwargs, message):
    with pytest.raises(MvmoeError) as e:
        ModelConfig(**kwargs)
    assert message in str(e.value)


def test_several_problems_are_reported_together():
    with pytest.raises(MvmoeError) as e:
        ModelConfig(width=100, heads=3, num_experts=4, top_k=9)
    assert "width=100" in str(e.value) and "top_k=9" in str(e.value)


def test_per_token_routing_may_use_every_block():
    cfg = ModelConfig(depth=2, num_experts=4, moe_blocks=2, routing="token")
    assert cfg.first_moe_block == 0


def test_parse_overrides_types_values():
    assert parse_overrides(["depth=6", "mlp_ratio=2.5", "routing=token", "qkv_bias=false"]) == {
        "depth": 6, "mlp_ratio": 2.5, "routing": "token", "qkv_bias": False}


@pytest.mark.parametrize("item, message", [
    ("depth", "expected KEY=VALUE"),
    ("depht=6", "unknown key"),
    ("depth=six", "expected int"),
    ("qkv_bias=maybe", "expected true or false"),
])
def test_parse_overrides_errors(item, message):
    with pytest.raises(MvmoeError, match=message):
        parse_overrides([item])


def test_replace_rejects_unknown_keys():
    with pytest.raises(MvmoeError, match="unknown model config key"):
        get_config("deit-tiny", nope=1)


def test_unknown_preset_suggests_close_names():
    with pytest.raises(MvmoeError, match="did you mean vmoe-12x192-p32"):
        get_config("vmoe-12x192-p23")


def test_config_round_trip():
    cfg = get_config("vmoe-6x96-p32", num_classes=10, top_k=2)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


def test_derived_sizes_by_hand():
    cfg = get_config("vmoe-12x192-p32")
    assert cfg.grid == 7 and cfg.num_tokens == 50 and cfg.head_dim == 64
    assert cfg.mlp_hidden == 768 and cfg.expert_hidden == 768
    assert cfg.first_moe_block == 10 and [cfg.is_moe_block(i) for i in (9, 10, 11)] == [False, True, True]
    # per-token capacity: ceil(1.05 * 1 * 50 / 10) = ceil(5.25) = 6
    assert cfg.replace(routing="token").expert_capacity() == 6


def test_dense_twin_matches_backbone():
    moe = get_config("vmoe-9x96-p16")
    twin = dense_twin(moe)
    assert twin.name == "vit-9x96-p16" and twin == get_config("vit-9x96-p16")
    m = create_model(moe)
    d = create_model(twin)
    assert m.num_active_params() - d.num_params() == sum(p.numel() for p in m.router.parameters())


def test_model_name_says_what_is_built():
    moe = get_config("vmoe-6x64-p32").replace(patch_size=8, num_experts=5, top_k=2)
    assert model_name(moe) == "vmoe-6x64-p8-e5-k2"
    assert model_name(moe.replace(routing="token", top_k=1, num_experts=10)) == "vmoe-6x64-p8-token"
    twin = dense_twin(moe.replace(name=model_name(moe)))
    assert (twin.name, twin.num_experts) == ("vit-6x64-p8", 0)
    assert dense_twin(moe.replace(name="mine")).name == "mine-dense"
    assert is_grid_name("vit-12x192-p32") and not is_grid_name("vmoe-6x64-p8-e5") and not is_grid_name("deit-tiny")
