"""The export-target table: the facts other modules read from it."""

from __future__ import annotations

import importlib.metadata
import sys
import types

import pytest
import torch
from helpers import tiny_checkpoint

from converters import apps, pipeline
from converters import targets as T
from converters.programs import export_each
from converters.runner import Runner, SplitChain
from mobile_vmoe.errors import MvmoeError
from mobile_vmoe.profile.latency import profile_latency


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
    assert {t.name: t.split_suffix for t in T.TARGETS if t.split_precisions} == {
        "coreml": ".mlpackage", "executorch": ".pte", "tflite": ""}
    assert apps.APP_RUNS == {"ios": {("coreml", None)},
                                 "android": {("tflite", None), ("executorch", "xnnpack"), ("executorch", "portable")}}


def test_every_record_names_a_module_with_the_same_facts():
    for t in T.TARGETS:
        mod = T.module_of(t.name)
        assert callable(mod.convert) and callable(mod.load_runner)
        assert not t.split_precisions or callable(mod.convert_split) and callable(mod.load_split_runner)
        assert pipeline.precisions_of(t.name, t.backend) == t.precisions


def add_target(monkeypatch, record: T.ExportTarget, module=None) -> None:
    """What adding a target is: its record in the table (and the tables derived from it), and its
    module in the converters package."""
    targets = (*T.TARGETS, record)
    monkeypatch.setattr(T, "TARGETS", targets)
    for name, value in T.derived(targets).items():
        monkeypatch.setattr(T, name, value)
    if module is not None:
        monkeypatch.setitem(sys.modules, f"converters.{record.module}", module)


def test_a_new_record_is_planned_and_split_by_the_table(monkeypatch):
    """A target added to the table alone: plan() and the split matrix take it."""
    add_target(monkeypatch, T.ExportTarget("fakert", None, "onnx_export", ".fake", "fakert", ("fp32",),
                                           split_precisions=("fp32",), split_suffix=".fake"))
    jobs, _ = pipeline.plan("fakert", None, "fp32", "split")
    assert [(j.target, j.experts) for j in jobs] == [("fakert", "split")]
    with pytest.raises(MvmoeError, match="on fakert exports fp32, not int8"):
        pipeline.plan("fakert", None, "int8", "split")


# ----------------------------------------------------------------------- a whole new target
def _fake_runtime_module() -> types.ModuleType:
    """A complete converter module for a runtime that runs saved torch.export programs: the four
    functions a target module has, and nothing else."""
    mod = types.ModuleType("converters.fakert")

    def convert(wrapper, ep, example, path, *, precision, backend=None, calibration=None):
        torch.export.save(ep, str(path))
        return {"kind": "fake", "nodes": len(ep.graph.nodes), "ops": {}}

    def run_saved(path):
        module = torch.export.load(str(path)).module()

        def run(*xs):
            out = module(*(torch.from_numpy(x) for x in xs))
            return [o.detach().numpy() for o in (out if isinstance(out, (tuple, list)) else (out,))]

        return run

    def load_runner(path, threads=None):
        return Runner(run_saved(path), "fakert", [1, 3, 16, 16], "float32", threads), None

    def convert_split(progs, path, table, *, precision, backend=None, calibration=None, metadata=None):
        path.mkdir()
        for name, ep in export_each(progs).items():
            torch.export.save(ep, str(path / f"{name}.fake"))
        return {"kind": "fake", "nodes": 0, "ops": {}}

    def load_split_runner(path, threads=None, max_tails=None, loader="mmap"):
        trunk = run_saved(path / "trunk.fake")

        def load_tail(e):
            tail = run_saved(path / f"tail_{e}.fake")
            return lambda s, g: tail(s, g)[0]

        chain = SplitChain(trunk, load_tail, len(list(path.glob("tail_*.fake"))), max_tails)
        chain.input_shape = [1, 3, 16, 16]
        return chain.runner("fakert", threads), None

    mod.convert, mod.load_runner, mod.convert_split, mod.load_split_runner = (
        convert, load_runner, convert_split, load_split_runner)
    return mod


@pytest.mark.parametrize("experts", ["fused", "split"])
def test_a_new_target_is_one_record_and_one_module(monkeypatch, tmp_path, experts):
    """Adding a target touches the table and one module: export, parity, the program table, the
    runtime an app needs and `profile latency` all come from them."""
    add_target(monkeypatch, T.ExportTarget("fakert", None, "fakert", ".fake", "fakert", ("fp32",),
                                           split_precisions=("fp32",), split_suffix="", platforms=("android",),
                                           runtime_package="torch"), _fake_runtime_module())
    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    (res,) = pipeline.export_checkpoint(ckpt, "fakert", None, "fp32", tmp_path / "out", parity_images=4,
                                        experts=experts)
    assert res.ok, res.error
    meta = res.metadata
    assert res.artifact.name.endswith(".fake") == (experts == "fused") and res.artifact.exists()
    assert meta["parity"]["ran"] and meta["parity"]["top1_agreement"] == 1.0
    assert meta["runtime"] == {"name": "fakert", "min_version": importlib.metadata.version("torch"), "backend": None,
                               "platforms": ["android"]}
    if experts == "split":
        assert sorted(p.name for p in res.artifact.iterdir()) == ["tail_0.fake", "tail_1.fake", "trunk.fake"]
        assert meta["programs"]["trunk"]["file"] == "trunk.fake"
    else:
        lat = profile_latency(res.artifact, runs=2, warmup=0)
        assert lat["runtime"] == "fakert" and lat["runs"] == 2


def test_ios_target_names_the_coremltools_member():
    from types import SimpleNamespace

    ct = pytest.importorskip("coremltools")

    fake = SimpleNamespace(target=SimpleNamespace(iOS17="seventeen", iOS18="eighteen"))
    assert T.ios_target(fake, "17.0") == "seventeen" and T.ios_target(fake, "18") == "eighteen"
    for record in T.TARGETS:  # every deployment target the table names exists in the installed coremltools
        for version in {record.min_ios, record.split_min_ios} - {None, ""}:
            assert T.ios_target(ct, version) in list(ct.target)
    assert T.ios_target(ct, "17.0") is ct.target.iOS17 and T.ios_target(ct, "18.0") is ct.target.iOS18
