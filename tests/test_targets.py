"""The export-target table: the facts other modules read from it."""

from __future__ import annotations

import pytest

from converters import pipeline, split
from converters import targets as T
from mobile_vmoe.errors import MvmoeError


def test_find_gives_the_default_backend_and_none_for_unknown_pairs():
    assert T.find("executorch").label == "executorch-xnnpack"
    assert T.find("executorch", "portable").split_precisions == ("fp32",)
    assert T.find("tflite").runtime == "litert" and T.find("tflite").split_suffix == ""
    assert T.find("onnx", "xnnpack") is None and T.find("tensorrt") is None


def test_derived_tables():
    assert T.TARGET_NAMES == ("coreml", "executorch", "tflite", "onnx")
    assert T.RUNTIME_OF_SUFFIX == {".mlpackage": "coreml", ".pte": "executorch", ".tflite": "litert",
                                   ".onnx": "onnxruntime"}
    assert T.LOADERS == {"executorch": ("mmap", "file"), "litert": ("mmap", "file"), "onnxruntime": ("file",)}
    assert split.TARGETS == {"coreml": ".mlpackage", "executorch": ".pte", "tflite": ""}
    assert pipeline.APP_RUNS == {"ios": {("coreml", None)},
                                 "android": {("tflite", None), ("executorch", "xnnpack"), ("executorch", "portable")}}


def test_every_record_names_a_module_with_the_same_facts():
    for t in T.TARGETS:
        mod = T.module_of(t.name)
        assert mod.TARGET == t.name and mod.EXT == t.suffix
        assert pipeline.precisions_of(t.name, t.backend) == t.precisions


def test_a_new_record_is_planned_and_split_by_the_table(monkeypatch):
    """A target added to the table alone: plan() and the split matrix take it."""
    fake = T.ExportTarget("fakert", None, "onnx_export", ".fake", "fakert", ("fp32",), split_precisions=("fp32",),
                          split_suffix=".fake")
    monkeypatch.setattr(T, "TARGETS", (*T.TARGETS, fake))
    monkeypatch.setattr(T, "TARGET_NAMES", (*T.TARGET_NAMES, "fakert"))
    jobs, _ = pipeline.plan("fakert", None, "fp32", "split")
    assert [(j.target, j.experts) for j in jobs] == [("fakert", "split")]
    with pytest.raises(MvmoeError, match="on fakert exports fp32, not int8"):
        pipeline.plan("fakert", None, "int8", "split")
