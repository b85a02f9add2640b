"""One-line answers of the CLI: suggestions for misspelt names, refusals, exit codes."""

from __future__ import annotations

import signal

import pytest

from conftest import mvmoe
from mobile_vmoe.errors import MvmoeError, did_you_mean

TINY = ["--data", "synthetic:4:2", "--superclasses", "none", "-q", "--set", "depth=2", "--set", "width=32",
        "--set", "heads=2", "--set", "num_experts=2", "--set", "moe_blocks=1", "--set", "img_size=16"]


def test_did_you_mean_by_hand():
    assert did_you_mean("num_expert", ["num_experts", "top_k"]) == "; did you mean num_experts?"
    assert did_you_mean("zzz", ["coreml", "onnx"]) == ""


@pytest.mark.parametrize("args, hint", [
    (["train", "--set", "num_expert=3"], "did you mean num_experts?"),
    (["train", "--set", "lrr=0.1"], "did you mean lr?"),
    (["export", "missing.pt", "--target", "tflte"], "did you mean tflite?"),
    (["export", "missing.pt", "--target", "executorch", "--backend", "xnnpak"], "did you mean xnnpack?"),
    (["export", "missing.pt", "--target", "onnx", "--precision", "fp61"], "did you mean fp16?"),
])
def test_misspelt_names_get_a_suggestion(args, hint):
    code, out, err = mvmoe(*args)
    assert code == 1 and hint in err and len(err.strip().splitlines()) == 1


def test_with_settings_suggests_too():
    from mobile_vmoe.config import TrainConfig

    with pytest.raises(MvmoeError, match="did you mean top_k"):
        TrainConfig().with_settings({"topk": 2})


def test_superclasses_refuses_an_moe_checkpoint(tmp_path):
    """An MoE trained on the whole training split, the holdout included: its confusions there are
    not held out, so `mvmoe superclasses` refuses it in one line and writes nothing."""
    from helpers import save_tiny_checkpoint, tiny_moe

    ckpt = save_tiny_checkpoint(tmp_path / "model.pt", tiny_moe(4, 2, depth=2, moe_blocks=1))
    code, _, err = mvmoe("superclasses", "--checkpoint", ckpt, "--data", "synthetic:4:2", "--num", "2",
                         "--out", tmp_path / "sc.json")
    assert code == 1 and "is an MoE" in err and "dense/model.pt" in err
    assert not (tmp_path / "sc.json").exists()


def test_ctrl_c_in_training_saves_last_pt_and_exits_130(tmp_path, monkeypatch):
    """Ctrl-C (SIGINT) during the first step: the step finishes, last.pt is written, exit 130 as
    `mvmoe export` does; the message says how to continue."""
    import mobile_vmoe.train.loop as loop

    real = loop.train_step
    calls = []

    def step_then_ctrl_c(*a, **kw):
        out = real(*a, **kw)
        if not calls:
            signal.raise_signal(signal.SIGINT)  # handled by the loop: sets the stop flag
        calls.append(1)
        return out

    monkeypatch.setattr(loop, "train_step", step_then_ctrl_c)
    out = tmp_path / "run"
    code, stdout, err = mvmoe("train", *TINY, "--epochs", "2", "--out", out)
    assert code == 130, err
    assert (out / "last.pt").is_file() and not (out / "model.pt").exists()
    assert f"mvmoe train --out {out} --resume" in stdout


def test_profile_help_names_every_profiler():
    code, out, _ = mvmoe("--help")
    line = " ".join(out.split())  # rich wraps the help text
    assert code == 0 and all(w in line for w in ("flops", "latency", "memory", "ingest"))


def test_readme_profile_loop_skips_the_core_ml_delegate_and_takes_split_folders(tmp_path):
    """The README's loop, run by bash over a fake exports/ folder with `echo` for the profiler."""
    import re
    import subprocess
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    loop = re.search(r"^for a in exports/.*?^done$", readme, re.S | re.M).group(0)
    loop = re.sub(r"uv run mvmoe profile latency .*", 'echo "$a"', loop)
    exports = tmp_path / "exports"
    exports.mkdir()
    for name in ("m_executorch-xnnpack_fp32.pte", "m_executorch-coreml_fp16.pte", "m_tflite_fp32.tflite",
                 "m_onnx_fp32.onnx", "m_tflite_fp32-split/trunk.tflite", "m_executorch-xnnpack_fp32-split.pte"):
        (exports / name).parent.mkdir(exist_ok=True)
        (exports / name).write_text("x")
    res = subprocess.run(["bash", "-c", loop], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert res.stdout.split() == ["exports/m_executorch-xnnpack_fp32-split.pte", "exports/m_executorch-xnnpack_fp32.pte",
                                  "exports/m_tflite_fp32.tflite", "exports/m_tflite_fp32-split", "exports/m_onnx_fp32.onnx"]


def test_infinite_lr_is_one_line():
    code, _, err = mvmoe("train", *TINY, "--set", "lr=inf", "--epochs", "1")
    assert code == 1 and "lr=inf must be a finite number > 0" in err
    assert err.count("\n") == 1 and "UserWarning" not in err


def test_warnings_are_one_clean_line(tmp_path):
    """A corrupt image in an ImageFolder: `warning: ...` lines, no Python source location or code line."""
    import numpy as np
    from PIL import Image

    for split in ("train", "val"):
        for c in ("a", "b"):
            d = tmp_path / "data" / split / c
            d.mkdir(parents=True)
            for i in range(3):
                Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(d / f"{i}.png")
    (tmp_path / "data" / "train" / "a" / "bad.png").write_bytes(b"not a png")
    code, _, err = mvmoe("train", *TINY[2:], "--data", tmp_path / "data", "--epochs", "1", "--set", "batch_size=2",
                         "--out", tmp_path / "run")
    lines = err.strip().splitlines()
    assert any(ln.startswith("warning: skipping") and "bad.png" in ln for ln in lines), err
    assert not [ln for ln in lines if "UserWarning" in ln or "warnings.warn" in ln or ".py:" in ln], err


def test_export_without_target_exports_every_target(tmp_path, monkeypatch):
    """`mvmoe export CKPT` alone means --target all (no 'Missing option'); what the pipeline is asked
    for is recorded, not run."""
    import converters.pipeline as pipeline

    asked = []
    monkeypatch.setattr(pipeline, "export_checkpoint", lambda ckpt, target, *a, **kw: asked.append(target) or [])
    code, out, err = mvmoe("export", tmp_path / "model.pt", "--out", tmp_path / "x")
    assert (code, asked) == (0, ["all"]), err
    code, _, _ = mvmoe("export", tmp_path / "model.pt", "--target", "onnx", "--out", tmp_path / "x")
    assert asked == ["all", "onnx"]
    jobs, _ = pipeline.plan("all", None, "fp32")  # what `all` plans at the default precision
    assert sorted({j.target for j in jobs}) == ["coreml", "executorch", "onnx", "tflite"]


@pytest.mark.parametrize("command", [[], ["train"], ["export"], ["profile", "latency"], ["report"]])
def test_help_shows_no_type_for_on_off_flags(command):
    from typer.testing import CliRunner

    from mobile_vmoe.cli import app

    out = CliRunner().invoke(app, [*command, "--help"], terminal_width=120).output
    assert "--help" in out and "<bool>" not in out
    if command == ["train"]:
        assert "<int>" in out  # options that take a value keep their type
