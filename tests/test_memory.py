"""`mvmoe profile memory`: /proc parsing by hand, refusals, and the memory bound of split experts on a
small model with many experts (fresh processes, real ExecuTorch programs)."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import mvmoe
from helpers import save_tiny_checkpoint
from mobile_vmoe import create_model
from mobile_vmoe.errors import MvmoeError
from mobile_vmoe.models.registry import dense_twin
from mobile_vmoe.profile import memory

STATUS = """Name:\tpython
VmHWM:\t  204800 kB
VmRSS:\t  153600 kB
RssAnon:\t  102400 kB
RssFile:\t   51200 kB
RssShmem:\t       0 kB
"""


def test_read_status_in_mib():
    assert memory.read_status(STATUS) == {"VmHWM": 200.0, "VmRSS": 150.0, "RssAnon": 100.0, "RssFile": 50.0}
    with pytest.raises(MvmoeError, match="lacks RssFile"):
        memory.read_status("VmRSS: 1 kB\nVmHWM: 1 kB\nRssAnon: 1 kB\n")


def test_over_the_baseline_hand_worked():
    base = {"VmHWM": 120.0, "VmRSS": 100.0, "RssAnon": 80.0, "RssFile": 20.0}
    now = {"VmHWM": 190.0, "VmRSS": 150.0, "RssAnon": 110.0, "RssFile": 40.0}
    # the peak is over the baseline's RSS: 190 - 100
    assert memory.over(now, base) == {"rss_mib": 50.0, "heap_mib": 30.0, "file_mib": 20.0, "peak_rss_mib": 90.0}


@pytest.mark.parametrize("name, loader, message", [
    ("m.onnx", "mmap", "onnxruntime loads with file here"),
    ("m.pte", "bogus", "executorch loads with mmap or file"),
])
def test_refusals_are_one_line(tmp_path, name, loader, message):
    (tmp_path / name).write_bytes(b"x")
    code, out, err = mvmoe("profile", "memory", str(tmp_path / name), "--loader", loader)
    assert code == 1 and message in err and len(err.strip().splitlines()) == 1, err


def test_coreml_is_refused_off_macos(tmp_path):
    (tmp_path / "m.mlpackage").mkdir()
    with pytest.raises(MvmoeError, match="macOS"):
        memory.profile_memory(tmp_path / "m.mlpackage")


@pytest.mark.slow
def test_split_experts_cost_one_expert_over_the_dense_twin(tmp_path):
    """E = 16 experts of hidden 1024 in 2 MoE blocks (16 MiB of expert weights, 1 MiB per expert
    over both blocks) on a small trunk. With one image (k = 1 expert used), the split program must
    stay within dense twin + one expert + 10 % (+ 1 MiB for allocator noise between processes);
    the stacked program, whose expert stacks the loader maps and pins, must not."""
    from converters.pipeline import export_checkpoint

    torch.manual_seed(0)
    moe = create_model("vmoe-6x64-p32", depth=4, width=64, heads=4, img_size=16, patch_size=8, num_classes=10,
                       num_experts=16, mlp_ratio=16.0)
    dense = create_model(dense_twin(moe.cfg))
    bank = moe.blocks[-1].mlp.experts
    expert_mib = 2 * bank.params_per_expert() * 4 / 2**20  # one expert in both MoE blocks, fp32
    arts = {}
    for name, model, experts in [("dense", dense, "fused"), ("stacked", moe, "fused"), ("split", moe, "split")]:
        ckpt = save_tiny_checkpoint(tmp_path / f"{name}.pt", model, data=None)
        (res,) = export_checkpoint(ckpt, "executorch", out_dir=tmp_path / name, parity_images=2, experts=experts)
        assert res.ok, res.error
        arts[name] = memory.profile_memory(res.artifact, "mmap", images=1)
    first = {k: v["after"]["first"]["rss_mib"] for k, v in arts.items()}
    print(json.dumps(first), f"one expert {expert_mib:.2f} MiB")
    bound = (first["dense"] + expert_mib) * 1.10 + 1.0
    assert first["split"] <= bound, (first, bound)
    assert first["stacked"] > first["dense"] + 8 * expert_mib, first  # the stacked program holds the experts
    assert arts["split"]["tails_loaded"] == 1 and arts["split"]["expert_layout"] == "split"
