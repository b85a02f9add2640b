"""`mvmoe train` / `mvmoe superclasses` errors: one line, exit 1, no traceback; and a 2-process
gloo DDP run through torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from pathlib import Path

from conftest import mvmoe


def run_cli(args: list[str]) -> tuple[int, str, str]:
    return mvmoe(*args)


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 1, err
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for n in needles:
        assert n in lines[0], lines[0]


def test_bad_set_key(tmp_path):
    code, _, err = run_cli(["train", "--set", "learning_rate=1", "--out", str(tmp_path / "r")])
    assert_one_line_error(code, err, "learning_rate", "unknown key")
    code, _, err = run_cli(["train", "--set", "lr=fast", "--out", str(tmp_path / "r")])
    assert_one_line_error(code, err, "lr=fast", "expected float")


def test_missing_data_path(tmp_path):
    code, _, err = run_cli(["train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r")])
    assert_one_line_error(code, err, "nowhere")
    assert not (tmp_path / "r").exists()


def test_resume_without_last_pt(tmp_path):
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(["train", "--resume", "--out", str(tmp_path / "empty")])
    assert_one_line_error(code, err, "nothing to resume", "run.json")


def test_resume_truncated_and_foreign_checkpoints(tmp_path):
    from mobile_vmoe.checkpoint import save_checkpoint
    from mobile_vmoe.config import ModelConfig, TrainConfig

    run = tmp_path / "run"
    run.mkdir()
    cfg = ModelConfig(name="t", img_size=16, patch_size=4, num_classes=4, depth=1, width=16, heads=2)
    (run / "run.json").write_text(json.dumps({"superclasses": "none", "data": "synthetic:4:2",
                                              "train_config": TrainConfig(model=cfg, batch_size=16).to_dict()}))
    save_checkpoint(run / "last.pt", {"model_config": cfg.to_dict(), "model": {}})
    data = (run / "last.pt").read_bytes()
    (run / "last.pt").write_bytes(data[: len(data) // 2])  # a copy cut short
    code, _, err = run_cli(["train", "--resume", "--out", str(run)])
    assert_one_line_error(code, err, "last.pt", "not")
    torch.save({"weights": torch.zeros(2)}, run / "last.pt")  # someone else's file
    code, _, err = run_cli(["train", "--resume", "--out", str(run)])
    assert_one_line_error(code, err, "not an mvmoe checkpoint")
    code, _, err = run_cli(["superclasses", "--checkpoint", str(run / "last.pt"), "--data", "digits", "--num", "2",
                            "--out", str(tmp_path / "sc.json")])
    assert_one_line_error(code, err, "not an mvmoe checkpoint")


def test_resume_refuses_changed_settings_and_existing_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"model_config": {}, "train_config": {"epochs": 3}, "data": "digits",
                                              "superclasses": "none"}))
    code, _, err = run_cli(["train", "--resume", "--out", str(run), "--set", "lr=1"])
    assert_one_line_error(code, err, "cannot change lr")
    (run / "last.pt").write_bytes(b"x")
    code, _, err = run_cli(["train", "--data", "synthetic:4:2", "--set", "num_experts=2", "--out", str(run)])
    assert_one_line_error(code, err, "already holds a run", "--resume")


def test_unknown_recipe_and_superclasses_file(tmp_path):
    code, _, err = run_cli(["train", "--recipe", "imagenet-vmoe-12x192-p16"])
    assert_one_line_error(code, err, "unknown recipe", "imagenet-vmoe-12x192-p32")
    code, _, err = run_cli(["train", "--superclasses", str(tmp_path / "none.json"), "--data", "synthetic:4:2",
                            "--out", str(tmp_path / "r")])
    assert_one_line_error(code, err, "--superclasses", "none.json")


def test_recipes_listed_with_paper_numbers():
    code, out, _ = run_cli(["train", "--list-recipes"])
    assert code == 0
    line = next(l for l in out.splitlines() if l.startswith("imagenet-vmoe-12x192-p32 "))
    assert "62.90%" in line and "300 epochs" in line
    from mobile_vmoe.train.recipes import get_recipe

    r = get_recipe("imagenet-vit-6x96-p32")
    assert r.paper_top1 == 36.64 and r.train["lr"] == pytest.approx(5e-4)  # per 512 images
    from mobile_vmoe.config import TrainConfig

    assert TrainConfig(**r.train).effective_lr == pytest.approx(1e-3)  # 5e-4 x 1024 / 512
    assert "torchrun" in r.doc


@pytest.mark.slow
def test_ddp_two_gloo_processes(tmp_path):
    """torchrun --nproc_per_node 2 (gloo on CPU): both ranks train, rank 0 writes the run."""
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "--no-python", str(Path(sys.executable).parent / "mvmoe"), "train", "--model", "vmoe-6x64-p32", "--data", "synthetic:4:2", "--epochs", "2",
           "--superclasses", "none", "--out", str(out), "-q",
           "--set", "depth=2", "--set", "width=32", "--set", "heads=2", "--set", "num_experts=2",
           "--set", "moe_blocks=1", "--set", "img_size=16", "--set", "batch_size=64"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["world_size"] == 2 and s["epochs"] == 2
    from mobile_vmoe.checkpoint import load_checkpoint

    ck = load_checkpoint(out / "last.pt")
    # 400 images / 2 ranks = 200 each, 32 per rank per step -> 6 steps per epoch, 12 in all
    assert (ck["epoch"], ck["step"], ck["steps_per_epoch"]) == (2, 12, 6)
    assert len(ck["rng_per_rank"]) == 2
    assert not torch.equal(ck["rng_per_rank"][0]["torch"], ck["rng_per_rank"][1]["torch"])  # ranks draw differently


def test_default_model_wiring_and_stop_message(tmp_path):
    """No --model: the embedded default (vmoe-6x64 with 5 experts, 1 thread), adapted to the data;
    stop_after_steps stops inside the dense stage and says how to continue."""
    out = tmp_path / "run"
    code, stdout, err = run_cli(["train", "--data", "synthetic:10:5", "--out", str(out), "-q", "--set", "img_size=16",
                                 "--set", "stop_after_steps=1"])
    assert code == 0, err
    assert "stopped at epoch 0 (step 1)" in stdout
    assert f"mvmoe train --out {out} --resume" in stdout  # the run's folder, not its dense/ stage
    run = json.loads((out / "run.json").read_text())
    t = run["train_config"]
    m = t["model"]
    assert (m["name"], m["num_experts"], m["patch_size"], m["num_classes"], m["depth"], m["width"]) == \
        ("vmoe-6x64-p4-e5", 5, 4, 10, 6, 64)
    assert (t["threads"], t["stop_after_steps"], run["superclasses"]) == (1, 0, "auto")  # the limit is not saved
    assert (out / "dense" / "last.pt").exists() and not (out / "superclasses.json").exists()
    code, stdout, err = run_cli(["train", "--out", str(out), "--resume", "-q", "--set", "stop_after_steps=1"])
    assert code == 0 and f"mvmoe train --out {out} --resume" in stdout, err  # the printed command works


def test_resume_refuses_options_that_would_change_the_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for extra in (["--model", "vit-6x64-p32"], ["--data", "synthetic"], ["--epochs", "3"], ["--seed", "1"],
                  ["--superclasses", "none"], ["--recipe", "imagenet-vit-6x64-p32"], ["--teacher", "t.pt"]):
        code, _, err = run_cli(["train", "--resume", "--out", str(run), *extra])
        assert_one_line_error(code, err, "--resume", f"drop {extra[0]}")


def test_config_and_data_checks_run_before_any_training(tmp_path):
    """More experts than classes (needs only config + data) fails at once and leaves no run folder."""
    out = tmp_path / "run"
    code, _, err = run_cli(["train", "--data", "synthetic:4:2", "--set", "num_experts=6", "--out", str(out)])
    assert_one_line_error(code, err, "6 experts", "4 classes")
    assert not out.exists()
    code, _, err = run_cli(["train", "--data", "synthetic:4:2", "--set", "num_experts=2", "--set", "batch_size=100000", "--out", str(out)])
    assert_one_line_error(code, err, "batch_size=N")
    assert not out.exists()


def test_out_that_is_a_file_or_unwritable(tmp_path, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("x")
    small = ["--data", "synthetic:4:2", "--superclasses", "none", "--epochs", "1", "-q", "--set", "img_size=16",
             "--set", "depth=2", "--set", "num_experts=2", "--set", "moe_blocks=1"]
    code, _, err = run_cli(["train", *small, "--out", str(afile)])
    assert_one_line_error(code, err, "is a file")
    code, _, err = run_cli(["train", *small, "--out", str(afile / "run")])  # below a file: not a directory
    assert_one_line_error(code, err, "cannot write", "afile")
    import errno

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("mobile_vmoe.fileio.os.replace", full)
    code, _, err = run_cli(["train", *small, "--out", str(tmp_path / "full")])
    assert_one_line_error(code, err, "cannot write", "No space left on device")
    assert not [p for p in (tmp_path / "full").rglob("*.tmp")]  # no temporary file left behind


def test_missing_teacher_is_one_line(tmp_path):
    code, _, err = run_cli(["train", "--data", "synthetic:4:2", "--superclasses", "none", "--teacher",
                            str(tmp_path / "nope.pt"), "--out", str(tmp_path / "r")])
    assert_one_line_error(code, err, "checkpoint not found", "nope.pt")
    assert not (tmp_path / "r").exists()


def test_epochs_applies_to_the_dense_stage_too(tmp_path):
    out = tmp_path / "run"
    code, _, err = run_cli(["train", "--data", "synthetic:4:2", "--epochs", "1", "-q", "--out", str(out),
                            "--set", "img_size=16", "--set", "depth=2", "--set", "num_experts=2",
                            "--set", "moe_blocks=1", "--set", "stop_after_steps=1"])
    assert code == 0, err
    assert json.loads((out / "run.json").read_text())["train_config"]["dense_epochs"] == 1
