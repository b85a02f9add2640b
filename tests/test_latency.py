"""Local latency runners on tiny real artifacts (.onnx, .pte, .tflite built here), stats, ingest, CLI."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from helpers import TinyConvNet, write_artifact_meta, write_tiny_onnx

from mobile_vmoe.errors import MvmoeError
from mobile_vmoe.profile.ingest import ingest_app_benchmark
from mobile_vmoe.profile.latency import parse_device, profile_latency
from mobile_vmoe.profile.timing import summarize


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    d = tmp_path_factory.mktemp("artifacts")
    m, x = TinyConvNet().eval(), (torch.randn(1, 3, 16, 16),)
    out = {}
    out["onnx"] = d / "tiny_onnx_fp32.onnx"
    write_tiny_onnx(m, out["onnx"])
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    prog = to_edge_transform_and_lower(torch.export.export(m, x), partitioner=[XnnpackPartitioner()]).to_executorch()
    out["pte"] = d / "tiny_executorch-xnnpack_fp32.pte"
    out["pte"].write_bytes(prog.buffer)
    import litert_torch

    out["tflite"] = d / "tiny_tflite_fp32.tflite"
    litert_torch.convert(m, x).export(str(out["tflite"]))
    for path in out.values():
        write_artifact_meta(path)
    return out


def test_summarize_hand_numbers():
    s = summarize([4.0, 1.0, 3.0, 2.0, 10.0])
    # sorted 1 2 3 4 10: median 3; p90 at rank 0.9*4 = 3.6 -> 4 + 0.6*(10-4) = 7.6; mean 20/5
    assert s == {"runs": 5, "min_ms": 1.0, "median_ms": 3.0, "p90_ms": pytest.approx(7.6), "mean_ms": 4.0}
    with pytest.raises(MvmoeError, match="no timed runs"):
        summarize([])
    with pytest.raises(MvmoeError, match="finite and >= 0"):
        summarize([1.0, float("nan")])


@pytest.mark.parametrize("kind, runtime", [("onnx", "onnxruntime"), ("pte", "executorch"), ("tflite", "litert")])
def test_local_runner(artifacts, kind, runtime):
    d = profile_latency(artifacts[kind], warmup=2, runs=15, threads=1)
    assert d["artifact"] == artifacts[kind].name and d["runtime"] == runtime and d["device"].startswith("local")
    assert d["runs"] == 15 and len(d["runs_ms"]) == 15
    assert 0 < d["min_ms"] <= d["median_ms"] <= d["p90_ms"] < 1000
    assert d["min_ms"] <= d["mean_ms"]
    assert sorted(d["input_shape"]) == [1, 3, 16, 16]


def test_pte_threads_are_honoured_and_recorded(artifacts):
    """The ExecuTorch threadpool is sized by --threads; the JSON records the count in effect."""
    assert profile_latency(artifacts["pte"], warmup=0, runs=2, threads=1)["threads"] == 1
    assert profile_latency(artifacts["pte"], warmup=0, runs=2, threads=2)["threads"] == 2
    assert profile_latency(artifacts["pte"], warmup=0, runs=2)["threads"] == 2  # as left, never null


def test_latency_opens_artifacts_with_the_converters_runner(artifacts, monkeypatch):
    """One place opens each runtime: profile latency uses converters' load_runner (as parity does)."""
    import numpy as np

    from converters import onnx_export
    from converters.runner import Runner

    opened = []

    def load_runner(path, threads=None, **options):
        opened.append((path.name, threads, options))
        return Runner(lambda x: [np.zeros((1, 5), np.float32)], "fake-ort", [1, 3, 16, 16], "float32", threads), None

    monkeypatch.setattr(onnx_export, "load_runner", load_runner)
    d = profile_latency(artifacts["onnx"], warmup=1, runs=3, threads=3)
    assert opened == [("tiny_onnx_fp32.onnx", 3, {})] and d["runtime"] == "fake-ort" and d["threads"] == 3


def test_timing_helper_interleaves_and_warms_up():
    from mobile_vmoe.profile.timing import time_interleaved, time_ms

    calls = []
    times = time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=3, warmup=2, inner=2)
    assert calls == ["a", "a", "b", "b"] + ["a", "a", "b", "b"] * 3
    assert [len(v) for v in times.values()] == [3, 3] and all(t >= 0 for v in times.values() for t in v)
    syncs = []
    assert len(time_ms(lambda: None, runs=4, sync=lambda: syncs.append(1))) == 4 and len(syncs) == 8
    with pytest.raises(MvmoeError, match="runs >= 1"):
        time_ms(lambda: None, runs=0)


def test_pte_per_op_from_etdump(artifacts):
    d = profile_latency(artifacts["pte"], warmup=1, runs=5, per_op=True)
    ops = {r["op"]: r for r in d["per_op"]}
    # XNNPACK takes the conv and the linear: they show up under its own kernel names, delegated
    assert any(name.startswith("Convolution") and r["delegated"] for name, r in ops.items())
    assert any(name.startswith("Fully Connected") and r["delegated"] for name, r in ops.items())
    assert all(r["calls"] >= 1 and r["ms"] >= 0 for r in d["per_op"])
    assert "Method::execute" not in ops and "DELEGATE_CALL" not in ops


def test_metadata_json_is_read_and_checked(artifacts, tmp_path):
    onnx = artifacts["onnx"]
    meta = onnx.with_suffix(".json")
    try:
        write_artifact_meta(onnx, model="tiny", target="onnx", precision="fp32", dispatch="gather", macs=123,
                  input={"shape": [1, 3, 16, 16], "dtype": "float32"})
        d = profile_latency(onnx, warmup=0, runs=2)
        assert (d["model"], d["target"], d["macs"], d["dispatch"]) == ("tiny", "onnx", 123, "gather")
        assert meta.exists()
        with pytest.raises(MvmoeError, match="does not match"):
            profile_latency(_with_meta(artifacts["pte"], tmp_path, [1, 3, 32, 32]), runs=1)
    finally:
        write_artifact_meta(onnx)


def _with_meta(pte, tmp_path, shape):
    copy = tmp_path / pte.name
    copy.write_bytes(pte.read_bytes())
    return write_artifact_meta(copy, input={"shape": shape})


def test_bad_inputs(artifacts, tmp_path):
    with pytest.raises(MvmoeError, match="artifact not found"):
        profile_latency(tmp_path / "missing.onnx")
    (tmp_path / "m.bin").write_bytes(b"x")
    with pytest.raises(MvmoeError, match="unknown artifact type '.bin'"):
        profile_latency(tmp_path / "m.bin")
    (tmp_path / "junk.tflite").write_bytes(b"not a flatbuffer")
    with pytest.raises(MvmoeError, match="LiteRT cannot load it"):
        profile_latency(tmp_path / "junk.tflite", runs=1, verify=False)
    (tmp_path / "junk.pte").write_bytes(b"not a program")
    with pytest.raises(MvmoeError, match="ExecuTorch runtime cannot load it"):
        profile_latency(tmp_path / "junk.pte", runs=1, verify=False)
    with pytest.raises(MvmoeError, match="runs >= 1"):
        profile_latency(artifacts["onnx"], runs=0)
    with pytest.raises(MvmoeError, match="expected local, android"):
        profile_latency(artifacts["onnx"], device="windows")
    with pytest.raises(MvmoeError, match="needs Xcode"):
        profile_latency(artifacts["onnx"], device="ios:00008110-000A")
    assert parse_device("android:R58M") == ("android", "R58M") and parse_device("ios") == ("ios", None)
    if sys.platform != "darwin":
        (tmp_path / "m.mlpackage").mkdir()
        with pytest.raises(MvmoeError, match=r"m.mlpackage: coreml runs only on macOS \(this is Linux\)"):
            profile_latency(tmp_path / "m.mlpackage", runs=1, verify=False)


def _app_json(tmp_path, **over):
    d = {"format": "mvmoe-app-benchmark", "version": 1, "artifact": "vmoe_coreml_fp16.mlpackage", "app": "ios_demo",
         "device": "iPhone 15 Pro (iOS 18.1)", "runtime": "coreml", "compute_units": "all", "threads": None,
         "warmup": 5, "runs_ms": [2.0, 1.0, 4.0, 3.0], "created": "2026-11-23T09:00:00Z"}
    d.update(over)
    p = tmp_path / "bench.json"
    p.write_text(json.dumps(d))
    return p


def test_ingest_app_benchmark(tmp_path):
    d = ingest_app_benchmark(_app_json(tmp_path))
    # sorted 1 2 3 4: median 2.5, p90 at rank 2.7 -> 3 + 0.7 = 3.7, mean 2.5
    assert (d["artifact"], d["device"], d["runtime"], d["runs"]) == ("vmoe_coreml_fp16.mlpackage", "iPhone 15 Pro (iOS 18.1)", "coreml", 4)
    assert (d["min_ms"], d["median_ms"], d["mean_ms"]) == (1.0, 2.5, 2.5)
    assert d["p90_ms"] == pytest.approx(3.7) and d["compute_units"] == "all" and d["app"] == "ios_demo"
    assert "checkpoint_sha256" not in d
    assert ingest_app_benchmark(_app_json(tmp_path, checkpoint_sha256="ab" * 32))["checkpoint_sha256"] == "ab" * 32


def test_ingest_memory_and_tail_switches(tmp_path):
    d = ingest_app_benchmark(_app_json(tmp_path, rss_mib_after_load=12.5, rss_mib_after_runs=14.0, expert_layout="split",
                                       tail_switch_ms=[3.0, 1.0, 2.0], tails_cached=2))
    assert (d["rss_mib"], d["rss_mib_after_load"], d["expert_layout"], d["tails_cached"]) == (14.0, 12.5, "split", 2)
    assert d["tail_switch_median_ms"] == 2.0 and d["tail_switch_ms"] == [3.0, 1.0, 2.0]
    assert "rss_mib" not in ingest_app_benchmark(_app_json(tmp_path))


@pytest.mark.parametrize("over, message", [
    ({"rss_mib_after_runs": "big"}, "rss_mib_after_runs must be a number"),
    ({"expert_layout": "sparse"}, "expert_layout must be fused or split"),
    ({"tail_switch_ms": ["slow"]}, "tail_switch_ms must be a list"),
    ({"format": "other"}, "not an app benchmark file"),
    ({"version": 2}, "unsupported benchmark version 2"),
    ({"runs_ms": []}, "non-empty list"),
    ({"runs_ms": ["fast"]}, "must hold numbers"),
    ({"runs_ms": [1.0, -2.0]}, "finite and >= 0"),
])
def test_ingest_rejects_malformed(tmp_path, over, message):
    with pytest.raises(MvmoeError, match=message):
        ingest_app_benchmark(_app_json(tmp_path, **over))


def test_cli_latency_json_and_errors(artifacts, tmp_path):
    from typer.testing import CliRunner

    from mobile_vmoe.cli import app

    out = tmp_path / "lat.json"
    r = CliRunner().invoke(app, ["profile", "latency", str(artifacts["onnx"]), "--runs", "3", "--warmup", "1",
                                 "--json", "--out", str(out)])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(d) >= {"artifact", "device", "runtime", "runs", "min_ms", "median_ms", "p90_ms", "mean_ms"}
    assert json.loads(out.read_text())["runs"] == 3
    r = CliRunner().invoke(app, ["profile", "ingest", str(_app_json(tmp_path)), "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["median_ms"] == 2.5


@pytest.mark.parametrize("kind", ["pte", "tflite"])
def test_cli_latency_hides_the_runtimes_chatter(artifacts, kind):
    """No torch pytree warning, cpuinfo lines or LiteRT INFO line: only the table (a fresh process,
    since the runtimes write to the file descriptors themselves)."""
    import subprocess
    import sys
    from pathlib import Path

    mvmoe = Path(sys.executable).parent / "mvmoe"
    res = subprocess.run([str(mvmoe), "profile", "latency", str(artifacts[kind]), "--runs", "2", "--warmup", "1"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stderr == "", res.stderr
    assert res.stdout.splitlines()[0] == artifacts[kind].name  # the heading keeps the file name whole
    assert not [ln for ln in res.stdout.splitlines() if "cpuinfo" in ln or "INFO" in ln or "_pytree" in ln]
