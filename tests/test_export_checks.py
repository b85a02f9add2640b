"""Export refusals that depend on the checkpoint come before any export or conversion work and
leave no --out folder behind."""

from __future__ import annotations

import pytest

from helpers import save_tiny_checkpoint, tiny_moe
from converters import pipeline
from mobile_vmoe.errors import MvmoeError


class Reached(Exception):
    """The export got as far as torch.export."""


@pytest.fixture
def no_export(monkeypatch):
    def refuse(*a, **kw):
        raise Reached

    monkeypatch.setattr(pipeline, "export_static", refuse)


def _ckpt(tmp_path, class_names=None, **cfg):
    """A tiny 10-class checkpoint that names no dataset."""
    return save_tiny_checkpoint(tmp_path / "model.pt", tiny_moe(10, 2, depth=2, moe_blocks=1, **cfg), class_names)


def test_split_of_a_token_model_is_refused_before_export(tmp_path, no_export):
    out = tmp_path / "out" / "deeper"
    with pytest.raises(MvmoeError, match="not a per-image MoE"):
        pipeline.export_checkpoint(_ckpt(tmp_path, routing="token"), "executorch", None, "fp32", out, experts="split",
                                   parity_images=4)
    assert not out.exists() and not out.parent.exists()


def test_int8_without_real_images_is_refused_before_export(tmp_path, no_export):
    out = tmp_path / "out"
    with pytest.raises(MvmoeError, match="int8 export needs real images"):  # the checkpoint names no dataset
        pipeline.export_checkpoint(_ckpt(tmp_path), "tflite", None, "int8", out, parity_images=4)
    assert not out.exists()


def test_parity_data_of_other_classes_warns_for_int8(tmp_path, no_export):
    lines = []
    ckpt = _ckpt(tmp_path, class_names=[f"c{i}" for i in range(10)])  # not digits' classes
    with pytest.raises(Reached):
        pipeline.export_checkpoint(ckpt, "tflite", None, "int8", tmp_path / "out", parity_images=4,
                                   parity_data="digits", progress=lines.append)
    assert any(ln.startswith("warning: --parity-data digits has other classes") for ln in lines), lines
    lines.clear()
    with pytest.raises(Reached):  # fp32: nothing is calibrated, nothing to warn about
        pipeline.export_checkpoint(ckpt, "tflite", None, "fp32", tmp_path / "out", parity_images=4,
                                   parity_data="digits", progress=lines.append)
    assert not any("other classes" in ln for ln in lines)


def test_a_long_conversion_says_it_is_still_running(tmp_path, monkeypatch):
    """The ticker's lines come while the converter runs (it waits for the first one), then a
    closing line with the elapsed time; no clock is compared."""
    import threading

    from converters import quiet as Q

    lines, ticked = [], threading.Event()

    def say(line):
        lines.append(line)
        if "still running" in line:
            ticked.set()

    monkeypatch.setattr(Q, "TICK_SECONDS", 0.01)
    with Q.ticking(say, "m_onnx_fp32"):
        assert ticked.wait(30)
    assert lines[0].startswith("m_onnx_fp32: still running, ") and lines[-1].startswith("m_onnx_fp32: done after ")
    with pytest.raises(ValueError), Q.ticking(lines.append, "m_tflite_fp32"):
        raise ValueError
    assert lines[-1].startswith("m_tflite_fp32: failed after ")
    assert Q._elapsed(83.4) == "1 min 23 s" and Q._elapsed(9.9) == "9 s"
