"""The per-token V-MoE exports to Core ML and LiteRT: its dispatch has no scatter and no range
assert (coremltools and litert-torch fail on both), and the conversions run."""

from __future__ import annotations

import pytest
import torch

from mobile_vmoe.models.registry import create_model

TINY = dict(depth=2, width=32, heads=2, num_experts=2, moe_blocks=1, img_size=16, patch_size=8, num_classes=4,
            routing="token")


def test_token_model_exports_without_scatter_or_asserts():
    from converters.static_export import export_static
    from converters.wrapper import prepare_for_export

    model = create_model("vmoe-6x64-p32", **TINY).eval()
    wrapper = prepare_for_export(model)
    ep = export_static(wrapper, torch.randn(1, 3, 16, 16))
    ops = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert not [o for o in ops if "scatter" in o or "_assert_async" in o or "one_hot" in o], sorted(ops)
    x = torch.randn(1, 3, 16, 16)
    for got, want in zip(ep.module()(x), wrapper(x)):  # every output the same as eager
        assert torch.allclose(got, want, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("target", ["coreml", "tflite"])
def test_token_model_converts_to_core_ml_and_litert(tmp_path, target):
    from mobile_vmoe.checkpoint import save_checkpoint
    from converters.pipeline import export_checkpoint

    model = create_model("vmoe-6x64-p32", **TINY)
    save_checkpoint(tmp_path / "model.pt", {"model_config": model.cfg.to_dict(), "model": model.state_dict()})
    [r] = export_checkpoint(tmp_path / "model.pt", target, None, "fp32", tmp_path / "out", parity_images=4)
    assert r.ok, r.error
    assert r.metadata["parity"]["ran"] == (target == "tflite")  # Core ML predicts on macOS only
