"""The export-target table: the facts other modules read from it."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import json
import os
import sys

import pytest
from conftest import mvmoe
from helpers import run_summary, tiny_checkpoint
from test_android import BENCHMARK_MODEL_OUT, adb  # noqa: F401 - the fake adb server's fixture

from converters import apps, pipeline
from converters import targets as T
from converters.target_modules import load_runner, module_of
from mobile_vmoe.errors import MvmoeError
from mobile_vmoe.profile.latency import profile_latency
from mobile_vmoe.profile.memory import profile_memory
from mobile_vmoe.profile.report import make_report


def test_find_gives_the_default_backend_and_none_for_unknown_pairs():
    assert T.find("executorch").label == "executorch-xnnpack"
    assert T.find("executorch", "portable").split_precisions == ("fp32",)
    assert T.find("tflite").runtime == "litert" and T.find("tflite").split_suffix == ""
    assert T.find("onnx", "xnnpack") is None and T.find("tensorrt") is None


def test_derived_tables():
    assert T.TARGET_NAMES == ("coreml", "executorch", "tflite", "onnx")
    assert T.ARTIFACT_SUFFIXES == (".mlpackage", ".pte", ".tflite", ".onnx")
    assert T.BACKEND_TARGETS == ("executorch",) and T.PRECISIONS == ("fp32", "fp16", "int8")
    assert {t.label: t.loaders for t in T.TARGETS if t.loaders} == {
        "executorch-xnnpack": ("mmap", "file"), "executorch-coreml": ("mmap", "file"),
        "executorch-portable": ("mmap", "file"), "tflite": ("mmap", "file"), "onnx": ("file",)}
    assert T.of_artifact(".pte").label == "executorch-xnnpack" and T.of_artifact(".pte", "executorch", "coreml").backend == "coreml"
    assert T.of_artifact(".bin") is None and T.from_dict(dataclasses.asdict(T.TARGETS[0])) == T.TARGETS[0]
    assert {t.name: t.split_suffix for t in T.TARGETS if t.split_precisions} == {
        "coreml": ".mlpackage", "executorch": ".pte", "tflite": ""}
    assert apps.APP_RUNS == {"ios": {("coreml", None)},
                                 "android": {("tflite", None), ("executorch", "xnnpack"), ("executorch", "portable")}}


def test_every_record_names_a_module_with_the_same_facts():
    for t in T.TARGETS:
        mod = module_of(t.name)
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
# The record of a runtime that runs saved torch.export programs (its module: tests/fake_target.py),
# benchmarked on Android by a benchmark_model-compatible binary.
FAKE = T.ExportTarget("fakert", None, "fakert", ".fake", "fakert", ("fp32",), split_precisions=("fp32",),
                      split_suffix="", loaders=("mmap", "file"), platforms=("android",), runtime_package="torch",
                      packages=("torch",), runtime_module="torch", runner_options=("loader",),
                      split_runner_options=("max_tails", "loader"), android_tool="benchmark_model")


@pytest.mark.parametrize("experts", ["fused", "split"])
def test_a_new_target_is_one_record_and_one_module(monkeypatch, tmp_path, experts, adb):
    """Adding a target touches the table and one module: export, parity, the program table, the
    runtime an app needs, `profile flops`, `profile latency` (local and Android), `profile memory`
    and `report` all come from them."""
    add_target(monkeypatch, FAKE, importlib.import_module("fake_target"))
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
    code, out, err = mvmoe("profile", "flops", res.artifact, "--json")
    assert code == 0, err
    assert json.loads(out)["macs"] == meta["macs"]
    lat = profile_latency(res.artifact, runs=2, warmup=0)
    assert lat["runtime"] == "fakert" and lat["runs"] == 2 and lat["target"] == "fakert"
    assert ("tail_switch_ms" in lat) == (experts == "split")
    loader = "mmap" if experts == "split" else "file"
    mem = profile_memory(res.artifact, loader, images=2)
    assert mem["runtime"] == "fakert" and mem["loader"] == loader and mem["verified"] is True
    assert mem["after"]["load"]["rss_mib"] > 0  # the program loaded over torch's baseline
    assert (mem.get("tails_loaded", 0) >= 1) == (experts == "split")
    files = [tmp_path / "lat.json", tmp_path / "mem.json"]
    for f, d in zip(files, (lat, mem)):
        f.write_text(json.dumps(d))
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps(run_summary(model=meta["model"], checkpoint=str(ckpt))))
    make_report([run], files, tmp_path / "report", published=False)
    table = (tmp_path / "report" / "table.md").read_text()
    assert "fakert fp32" in table, table
    if experts == "fused":  # a folder is not pushed to a phone
        adb.binary_outputs = [(BENCHMARK_MODEL_OUT, 0)]
        phone = profile_latency(res.artifact, device="android", binary=_binary(tmp_path), adb_port=adb.port, runs=50)
        assert phone["runtime"] == "fakert benchmark_model" and phone["median_ms"] == pytest.approx(14.512)
        assert any(c.endswith(f"--graph=/data/local/tmp/mvmoe-{os.getpid()}/{res.artifact.name} --warmup_runs=10 "
                              "--num_runs=50 --min_secs=0 --report_peak_memory_footprint=true") for c in adb.commands)


def _binary(tmp_path):
    binary = tmp_path / "benchmark_model"
    binary.write_bytes(b"\x7fELF fake")
    return binary


def test_runner_options_are_the_records(monkeypatch, tmp_path):
    """Every module takes exactly the options its record lists; any other is one line, before the
    runtime is imported (the record check and the module's own)."""
    for t in [*T.TARGETS]:
        mod = module_of(t.name)
        for fn, allowed in ((mod.load_runner, t.runner_options), (getattr(mod, "load_split_runner", None),
                                                                    t.split_runner_options)):
            if fn is None:
                continue
            with pytest.raises(MvmoeError, match=f"takes no option 'bogus' \\(it takes {', '.join(allowed) or 'none'}\\)"):
                fn(tmp_path / f"m{t.suffix}", None, bogus=1)
        with pytest.raises(MvmoeError, match=f"the {t.label} runner takes no option 'bogus'"):
            load_runner(t, tmp_path / f"m{t.suffix}", None, bogus=1)
        assert len(t.loaders) < 2 or "loader" in t.runner_options  # several loaders: the runner picks one


def test_a_record_without_loaders_is_not_measured(monkeypatch, tmp_path):
    """loaders=() and no android_tool (the defaults): `profile memory` and Android profiling say so in
    one line, for a new record too."""
    add_target(monkeypatch, dataclasses.replace(FAKE, loaders=(), android_tool=None), importlib.import_module("fake_target"))
    art = tmp_path / "m.fake"
    art.write_bytes(b"x")
    with pytest.raises(MvmoeError, match="profile memory does not measure fakert artifacts here"):
        profile_memory(art)
    with pytest.raises(MvmoeError, match="m.fake: fakert artifacts have no Android benchmark tool"):
        profile_latency(art, device="android", binary=_binary(tmp_path), verify=False)


def test_ios_target_names_the_coremltools_member():
    from types import SimpleNamespace

    ct = pytest.importorskip("coremltools")

    fake = SimpleNamespace(target=SimpleNamespace(iOS17="seventeen", iOS18="eighteen"))
    assert T.ios_target(fake, "17.0") == "seventeen" and T.ios_target(fake, "18") == "eighteen"
    for record in T.TARGETS:  # every deployment target the table names exists in the installed coremltools
        for version in {record.min_ios, record.split_min_ios} - {None, ""}:
            assert T.ios_target(ct, version) in list(ct.target)
    assert T.ios_target(ct, "17.0") is ct.target.iOS17 and T.ios_target(ct, "18.0") is ct.target.iOS18
