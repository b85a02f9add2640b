"""Training at scale: lr per 512 images, gradient accumulation, amp modes and GradScaler, compile,
the process-group timeout, and evaluation sharded over 2 gloo processes == one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch

from mobile_vmoe.checkpoint import load_checkpoint
from mobile_vmoe.config import ModelConfig, TrainConfig
from mobile_vmoe.data.synthetic import build_synthetic
from mobile_vmoe.errors import MvmoeError
from mobile_vmoe.train import fit
from mobile_vmoe.train.loop import amp_dtype_for

TINY = dict(name="t", img_size=16, patch_size=4, num_classes=4, depth=2, width=32, heads=2, mlp_ratio=2.0)
MOE = dict(TINY, num_experts=2, moe_blocks=1)


def _bundle(per_class: int = 16):
    return build_synthetic(4, 2, 16, "none", train_per_class=per_class, val_per_class=2, seed=0)


# ------------------------------------------------------------------------------ lr scaling
def test_lr_per_512_scaled_by_the_global_batch():
    assert TrainConfig(lr=5e-4, batch_size=1024).effective_lr == pytest.approx(1e-3)  # 5e-4 x 1024 / 512
    assert TrainConfig(lr=5e-4, batch_size=1024, grad_accum=2).effective_lr == pytest.approx(2e-3)  # x 2048 / 512
    assert TrainConfig(lr=5e-4, batch_size=128).global_batch == 128
    assert TrainConfig(lr=5e-4, batch_size=128).effective_lr == pytest.approx(1.25e-4)  # 5e-4 / 4
    # the default run keeps its old peak lr, 3e-3 at batch 32, to the last bit
    assert TrainConfig().effective_lr == 3e-3 and TrainConfig().lr == 0.048
    with pytest.raises(MvmoeError, match="min_lr=0.01 must be in"):
        TrainConfig(lr=0.048, batch_size=32, min_lr=0.01)  # 0.01 > the effective 3e-3


def test_optimizer_and_run_json_use_the_scaled_lr(tmp_path):
    from mobile_vmoe.train import train

    tcfg = TrainConfig(model=ModelConfig(**TINY), epochs=1, batch_size=16, lr=0.064, warmup_epochs=0,
                       stop_after_steps=1, ema_decay=0.0)
    train(tcfg, _bundle(), tmp_path, superclasses="none", quiet=True)
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["lr"] == {"per_512": 0.064, "global_batch": 16, "effective": pytest.approx(0.002)}  # 0.064 x 16 / 512
    ck = load_checkpoint(tmp_path / "last.pt")
    assert ck["optimizer"]["param_groups"][0]["initial_lr"] == pytest.approx(0.002)


# ------------------------------------------------------------------------- grad accumulation
@pytest.mark.parametrize("model", [TINY, MOE])
def test_grad_accum_equals_one_big_batch(tmp_path, model):
    """batch 16 x 2 micro-batches == batch 32 in one: same images per step, same lr, same weights."""
    bundle = _bundle()  # 64 images: 2 optimizer steps of 32 per epoch either way
    sc = {"num_superclasses": 2, "class_to_superclass": bundle.planted_superclasses, "names": ["a", "b"]}
    base = TrainConfig(model=ModelConfig(**model), epochs=2, lr=0.05, warmup_epochs=0, ema_decay=0.9, log_every=1)
    one = fit(base.replace(batch_size=32), bundle, tmp_path / "one", superclasses=sc, quiet=True)
    acc = fit(base.replace(batch_size=16, grad_accum=2), bundle, tmp_path / "acc", superclasses=sc, quiet=True)
    a, b = load_checkpoint(tmp_path / "one" / "last.pt"), load_checkpoint(tmp_path / "acc" / "last.pt")
    assert a["step"] == b["step"] == 4 and a["steps_per_epoch"] == b["steps_per_epoch"] == 2
    for key in ("model", "ema"):
        for name, t in a[key].items():
            torch.testing.assert_close(b[key][name], t, rtol=1e-4, atol=1e-5, msg=f"{key}.{name}")
    assert one["top1"] == pytest.approx(acc["top1"])


def test_grad_accum_resume_mid_epoch_equals_uninterrupted(tmp_path):
    bundle = _bundle()
    tcfg = TrainConfig(model=ModelConfig(**TINY), epochs=2, batch_size=8, grad_accum=2, lr=0.05, warmup_epochs=1,
                       ema_decay=0.9)  # 64 / 16 = 4 steps per epoch
    fit(tcfg, bundle, tmp_path / "full", quiet=True)
    part = fit(tcfg.replace(stop_after_steps=3), bundle, tmp_path / "split", quiet=True)
    assert (part["epoch"], part["step"]) == (0, 3)
    fit(tcfg, bundle, tmp_path / "split", resume=True, quiet=True)
    a, b = load_checkpoint(tmp_path / "full" / "model.pt"), load_checkpoint(tmp_path / "split" / "model.pt")
    assert a["step"] == b["step"] == 8
    for name, t in a["model"].items():
        assert torch.equal(t, b["model"][name]), name


# ------------------------------------------------------------------------------- amp, compile
def test_amp_modes(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert [amp_dtype_for(m, cpu) for m in ("auto", "none", "bf16", "fp16")] == \
        [None, None, torch.bfloat16, torch.float16]
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert amp_dtype_for("auto", cuda) == torch.float16  # no native bf16 (pre-Ampere): fp16 + GradScaler
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert amp_dtype_for("auto", cuda) == torch.bfloat16
    assert amp_dtype_for("none", cuda) is None
    with pytest.raises(MvmoeError, match="amp='fp8'"):
        TrainConfig(amp="fp8")


def test_fp16_trains_with_a_grad_scaler_saved_in_last_pt(tmp_path):
    tcfg = TrainConfig(model=ModelConfig(**MOE), epochs=1, batch_size=32, amp="fp16", ema_decay=0.0)
    s = fit(tcfg, _bundle(), tmp_path, quiet=True)
    ck = load_checkpoint(tmp_path / "last.pt")
    assert ck["scaler"]["scale"] > 0 and ck["step"] == 2 and s["top1"] is not None


def test_train_state_without_a_scaler_steps_through_a_disabled_one():
    from mobile_vmoe.train import TrainState

    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    state = TrainState(model, opt, torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0))  # as bench/routing_study.py
    assert not state.scaler.is_enabled()
    model.weight.grad = torch.ones_like(model.weight)
    w = model.weight.detach().clone()
    state.scaler.step(opt)
    torch.testing.assert_close(model.weight.detach(), w - 0.5)  # a plain optimizer step


def test_fp32_run_keeps_no_scaler_state(tmp_path):
    fit(TrainConfig(model=ModelConfig(**TINY), epochs=1, batch_size=32, ema_decay=0.0), _bundle(), tmp_path, quiet=True)
    assert load_checkpoint(tmp_path / "last.pt")["scaler"] == {}  # a disabled GradScaler's state


def test_compile_option_compiles_the_training_module(monkeypatch, tmp_path):
    """compile=true wraps the training module in torch.compile (here with the eager backend, so
    the test does not build C++ kernels); the run trains as usual."""
    calls = []
    real = torch.compile

    def spy(module, **kw):
        calls.append(type(module).__name__)
        return real(module, backend="eager", **kw)

    monkeypatch.setattr(torch, "compile", spy)
    fit(TrainConfig(model=ModelConfig(**MOE), epochs=1, batch_size=32, compile=True, ema_decay=0.0), _bundle(),
        tmp_path, quiet=True)
    assert calls == ["RoutingForward"]
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 2


# ------------------------------------------------------------------------- process group
def test_process_group_gets_the_configured_timeout(monkeypatch):
    import torch.distributed as dist

    from mobile_vmoe.train.distributed import setup_distributed

    seen = {}
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda **kw: seen.update(kw))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    info = setup_distributed(timeout_min=TrainConfig(dist_timeout_min=90).dist_timeout_min)
    assert seen["timeout"] == timedelta(minutes=90) and seen["backend"] == "gloo"
    assert (info.rank, info.world_size) == (1, 2)
    assert TrainConfig().dist_timeout_min == 60
    with pytest.raises(MvmoeError, match="dist_timeout_min=0"):
        TrainConfig(dist_timeout_min=0)


# ------------------------------------------------------------------------- sharded evaluation
def test_shards_cover_every_item_once():
    from mobile_vmoe.train.distributed import DistInfo, shard

    items = list(range(7))
    parts = [list(shard(items, DistInfo(rank=r, world_size=3))) for r in range(3)]
    assert parts == [[0, 3, 6], [1, 4], [2, 5]]


@pytest.mark.slow
def test_eval_on_two_gloo_processes_equals_one_process(tmp_path):
    import dist_worker

    out = tmp_path / "dist.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(Path(dist_worker.__file__)), str(out)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(out.read_text())
    assert got["world_size"] == 2 and got["shards"] == [11, 10]  # 21 images: no padding, none twice
    ref = dist_worker.run(*dist_worker.case())
    assert got["metrics"] == ref["metrics"]  # counts summed exactly: the same floats
    assert got["confusion"] == ref["confusion"]
    assert got["metrics"]["images"] == 21 and sum(map(sum, got["confusion"])) == 21
    assert len(set(i for i, n in enumerate(got["metrics"]["expert_counts"]) if n)) > 1  # routes differ


# ------------------------------------------------------------------------- the GPU check, dry
def _gpu_check(monkeypatch, tmp_path, *extra: str) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import gpu_check

    out = tmp_path / "gpu.json"
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", "--dry", "--out", str(out), *extra])
    gpu_check.main()
    return json.loads(out.read_text())


def test_gpu_check_dry_train_and_dali(monkeypatch, tmp_path, capsys):
    r = _gpu_check(monkeypatch, tmp_path, "--parts", "train,dali")
    assert r["dry"] and r["device"] == "cpu" and "ddp" not in r and r["done"] == ["train", "dali", "finished"]
    rows = r["train"]["rows"]
    assert [(x["model"], x["compile"]) for x in rows] == [("vmoe-2x32-p8", False), ("vit-2x32-p8", False),
                                                           ("vmoe-2x32-p8", True), ("vit-2x32-p8", True)]
    assert all(x["images_per_sec"] > 0 and x["ms_per_step"] > 0 for x in rows)
    eager = rows[0]["images_per_sec"] / rows[1]["images_per_sec"]
    assert r["train"]["moe_over_dense"]["eager"] == pytest.approx(eager, abs=1e-3)
    from mobile_vmoe.data.loader import dali_available

    if not dali_available():
        assert r["dali"] == "not installed"
        return
    d = r["dali"]
    assert d["batches"] >= 20 and d["pipelines_built"] == 1 and d["images"] == d["batches"] * d["batch"], d
    assert {"n00000000/z_empty.JPEG", "n00000001/z_truncated.JPEG"} <= set(d["skipped_files"])


def test_gpu_check_writes_its_json_after_each_part(monkeypatch, tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import gpu_check

    seen = []
    real = gpu_check.check_train

    def train_then_look(p, device):
        out = real(p, device)
        seen.append(json.loads((tmp_path / "gpu.json").read_text()) if (tmp_path / "gpu.json").exists() else None)
        return out

    def failing_dali(*args):
        seen.append(json.loads((tmp_path / "gpu.json").read_text()))
        raise RuntimeError("boom")

    monkeypatch.setattr(gpu_check, "check_train", train_then_look)
    monkeypatch.setattr(gpu_check, "check_dali", failing_dali)
    r = _gpu_check(monkeypatch, tmp_path, "--parts", "train,dali")
    assert seen[0] is None and seen[1]["done"] == ["train"] and "rows" in seen[1]["train"]  # on disk before dali
    assert r["dali"] == {"error": "RuntimeError: boom"} and r["done"] == ["train", "dali", "finished"]


@pytest.mark.slow
def test_gpu_check_dry_ddp_preempts_and_resumes_the_recipe_on_two_gloo_processes(monkeypatch, tmp_path, capsys):
    r = _gpu_check(monkeypatch, tmp_path, "--parts", "ddp")
    d = r["ddp"]
    assert d["ok"], d
    assert (d["backend"], d["processes"], d["world_size"]) == ("gloo", 2, 2)
    assert d["preempt"]["exit"] == 143 and d["preempt"]["signal_sent"] and d["resume"]["exit"] == 0
    assert d["stages"] == ["dense", "model.pt", "superclasses.json"] and d["router_superclass_top1"] is not None
    assert d["skipped_images"] >= 2 and d["val_images"] > 0  # broken train files skipped; the flat val read
