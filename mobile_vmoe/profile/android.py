"""Android latency over adb (adbutils): push the model and a benchmark binary, run, parse, clean up.

The user brings the benchmark binary built for the phone's ABI (we ship none); which one runs an
artifact is its record's ``android_tool`` (converters.targets). The tools (``TOOLS``):
- LiteRT `benchmark_model` (tensorflow/lite/tools/benchmark). Run as
  `benchmark_model --graph=M --num_threads=T --warmup_runs=W --num_runs=R --report_peak_memory_footprint=true`.
  It prints per-phase stats in microseconds, e.g.
      count=50 first=14730 curr=14382 min=14206 max=15283 avg=14575.2 std=232 p5=14231 median=14512 p95=15001
      Inference timings in us: Init: 5685, First inference: 18535, Warmup (avg): 14462.3, Inference (avg): 14575.2
      Overall peak memory footprint (MB) via periodic monitoring: 13.3281
  It does not print single runs: min / mean (avg) come from its last `count=` line, median when it
  prints one (newer builds print p5/median/p95); p90 is null and p95 is reported instead when present.
- ExecuTorch `executor_runner` (examples/portable/executor_runner, built with the XNNPACK backend).
  Run as `executor_runner --model_path=M --num_executions=K`; it prints
      Model executed successfully K time(s) in 123.456000 ms.
  i.e. only the total. We run it `samples` times (one process each, K executions each, after one
  untimed warmup process when warmup > 0); one sample = total / K. Its threadpool is its own.

Everything goes to /data/local/tmp/mvmoe-<pid>/ and is removed afterwards, also on failure.
Errors are MvmoeError with one clear line: no adb server, no device, several devices and no serial,
unknown serial, unauthorized / offline device, missing binary, failed run, unparsable output.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
from dataclasses import dataclass, field
from pathlib import Path

from converters import targets as T

from ..errors import MvmoeError
from .timing import percentile

REMOTE_ROOT = "/data/local/tmp"

_STAT_LINE = re.compile(r"count=(\d+)((?:\s+\w+=[-\d.]+)+)")
_TIMINGS = re.compile(r"Inference timings in us:(.*)")
_PEAK = re.compile(r"Overall peak memory footprint \(MB\)[^:]*:\s*([\d.]+)")
_ET_DONE = re.compile(r"Model executed successfully (\d+) time\(s\) in ([\d.]+) ms")


@dataclass
class AndroidResult:
    """Summary of an on-phone run; p90 / median may be None when the binary does not print them."""

    artifact: str
    device: str
    runtime: str
    runs: int
    min_ms: float
    median_ms: float | None
    p90_ms: float | None
    mean_ms: float
    threads: int | None
    warmup: int
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("artifact", "device", "runtime", "runs", "min_ms", "median_ms",
                                           "p90_ms", "mean_ms", "threads", "warmup")}
        d.update(self.extra)
        return d


# -------------------------------------------------------------------------------------- parsers

def parse_benchmark_model(output: str) -> dict:
    """Parse LiteRT benchmark_model's stdout. Times in ms; raises MvmoeError if no timing line."""
    stats = _STAT_LINE.findall(output)
    if not stats:
        raise MvmoeError("benchmark_model printed no timing line (count=... avg=...); output ends: "
                         + _tail(output))
    count, rest = stats[-1]  # the last stat line is the timed runs (the first is warmup)
    kv = {k: float(v) for k, v in re.findall(r"(\w+)=([-\d.]+)", rest)}
    out = {"runs": int(count), "min_ms": kv["min"] / 1e3, "mean_ms": kv["avg"] / 1e3,
           "median_ms": kv["median"] / 1e3 if "median" in kv else None, "p90_ms": None,
           "max_ms": kv.get("max", float("nan")) / 1e3, "std_ms": kv.get("std", float("nan")) / 1e3}
    if "p95" in kv:
        out["p95_ms"] = kv["p95"] / 1e3
    m = _TIMINGS.search(output)
    if m:
        phases = dict(re.findall(r"([A-Za-z][\w ()]*?):\s*([\d.]+)", m.group(1)))
        out["init_ms"] = float(phases["Init"]) / 1e3 if "Init" in phases else None
        out["first_inference_ms"] = float(phases["First inference"]) / 1e3 if "First inference" in phases else None
    m = _PEAK.search(output)
    if m:
        out["peak_memory_mb"] = float(m.group(1))
    return out


def parse_executor_runner(output: str) -> tuple[int, float]:
    """(executions, total ms) from executor_runner's stdout."""
    m = _ET_DONE.search(output)
    if not m:
        raise MvmoeError("executor_runner printed no 'Model executed successfully N time(s) in X ms' line; "
                         "output ends: " + _tail(output))
    return int(m.group(1)), float(m.group(2))


def _tail(text: str, n: int = 200) -> str:
    text = " ".join(text.split())
    return repr(text[-n:]) if text else "(nothing)"


# --------------------------------------------------------------------------------------- device

def connect_device(serial: str | None, host: str = "127.0.0.1", port: int = 5037):
    """An adbutils AdbDevice for `serial` (or the only device), with clear errors.

    We check the server socket ourselves first: adbutils would otherwise try to spawn its bundled
    adb server, which is not what a user with a misconfigured port wants.
    """
    import adbutils

    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError:
        raise MvmoeError(f"no adb server at {host}:{port}; start one with `adb start-server` "
                         "(and connect the phone with USB debugging on)") from None
    client = adbutils.AdbClient(host=host, port=port, socket_timeout=30)
    try:
        infos = client.list(extended=True)
    except adbutils.AdbError as e:
        raise MvmoeError(f"adb server at {host}:{port} failed to list devices: {e}") from None
    if not infos:
        raise MvmoeError("no Android device connected (adb devices is empty); plug in the phone and enable USB debugging")
    if serial is None:
        if len(infos) > 1:
            raise MvmoeError(f"{len(infos)} Android devices connected ({', '.join(i.serial for i in infos)}); "
                             "pick one with --device android:SERIAL")
        info = infos[0]
    else:
        match = [i for i in infos if i.serial == serial]
        if not match:
            raise MvmoeError(f"no Android device with serial {serial!r}; connected: {', '.join(i.serial for i in infos)}")
        info = match[0]
    if info.state == "unauthorized":
        raise MvmoeError(f"device {info.serial} is unauthorized: accept the USB debugging prompt on the phone")
    if info.state != "device":
        raise MvmoeError(f"device {info.serial} is {info.state}, not ready (expected state 'device')")
    dev = client.device(serial=info.serial)
    model = info.tags.get("model", "").replace("_", " ")
    return dev, model


def device_label(dev, model_tag: str) -> str:
    """'Pixel 8 (Android 15)' from getprop, falling back to the serial."""
    try:
        model = dev.shell("getprop ro.product.model").strip() or model_tag
        release = dev.shell("getprop ro.build.version.release").strip()
    except Exception:  # noqa: BLE001 - a label is best effort, the run decides success
        model, release = model_tag, ""
    name = model or dev.serial
    return f"{name} (Android {release})" if release else name


def _run(dev, cmd: str, what: str, timeout: float = 600) -> str:
    res = dev.shell2(cmd, timeout=timeout)
    if res.returncode != 0:
        raise MvmoeError(f"{what} failed on the device (exit {res.returncode}): {_tail(res.output)}")
    return res.output


# ------------------------------------------------------------------------------------------- run

def run_benchmark_model(dev, r_bin: str, r_model: str, run: dict) -> dict:
    """LiteRT benchmark_model: one process, its own warmup and timed runs; -> AndroidResult fields."""
    cmd = (f"{r_bin} --graph={r_model} --warmup_runs={run['warmup']} --num_runs={run['runs']} "
           f"--min_secs=0 --report_peak_memory_footprint=true")
    if run["threads"]:
        cmd += f" --num_threads={run['threads']}"
    out = parse_benchmark_model(_run(dev, cmd, "benchmark_model"))
    return {"runs": out.pop("runs"), "min_ms": out.pop("min_ms"), "median_ms": out.pop("median_ms"),
            "p90_ms": out.pop("p90_ms"), "mean_ms": out.pop("mean_ms"), "threads": run["threads"], "extra": out}


def run_executor_runner(dev, r_bin: str, r_model: str, run: dict) -> dict:
    """ExecuTorch executor_runner: an untimed warmup process, then samples of K executions each."""
    k = max(1, min(run["executions_per_sample"], run["runs"]))
    samples = max(1, run["runs"] // k)
    if run["warmup"] > 0:
        _run(dev, f"{r_bin} --model_path={r_model} --num_executions={run['warmup']}", "executor_runner (warmup)")
    per_sample = []
    for _ in range(samples):
        n, total = parse_executor_runner(
            _run(dev, f"{r_bin} --model_path={r_model} --num_executions={k}", "executor_runner"))
        per_sample.append(total / n)
    return {"runs": len(per_sample), "min_ms": min(per_sample), "median_ms": percentile(per_sample, 50),
            "p90_ms": percentile(per_sample, 90), "mean_ms": sum(per_sample) / len(per_sample), "threads": None,
            "extra": {"executions_per_sample": k, "runs_ms": per_sample,
                      "note": "one sample = mean of executions_per_sample executions in one process"}}


# a record's ``android_tool`` -> how it is run and read
TOOLS = {"benchmark_model": run_benchmark_model, "executor_runner": run_executor_runner}


def android_tool(artifact: Path, record: T.ExportTarget | None) -> str:
    """The benchmark binary the artifact's record names; a one-line error where it names none."""
    if record is None or record.android_tool not in TOOLS:
        have = ", ".join(dict.fromkeys(f"{t.suffix} ({t.runtime} {t.android_tool})" for t in T.TARGETS
                                       if t.android_tool in TOOLS))
        what = f"{record.label} artifacts have no Android benchmark tool" if record else "no export target makes it"
        raise MvmoeError(f"{artifact.name}: {what}; on Android we benchmark {have}")
    return record.android_tool


def profile_android(artifact: Path, binary: str | Path | None, serial: str | None = None, *,
                    warmup: int = 10, runs: int = 50, threads: int | None = None,
                    host: str = "127.0.0.1", port: int = 5037, executions_per_sample: int = 10,
                    record: T.ExportTarget | None = None) -> AndroidResult:
    """Push `artifact` + `binary` to the phone, run the benchmark its record names (``record``:
    default, the record of its suffix), parse it, clean up."""
    artifact = Path(artifact)
    record = record or T.of_artifact(artifact.suffix)
    tool = android_tool(artifact, record)
    if binary is None:
        raise MvmoeError(f"--device android needs --binary PATH: the {tool} binary built for the phone")
    binary = Path(binary)
    if not binary.is_file():
        raise MvmoeError(f"benchmark binary not found: {binary}")
    dev, model_tag = connect_device(serial, host, port)
    label = device_label(dev, model_tag)
    remote_dir = f"{REMOTE_ROOT}/mvmoe-{os.getpid()}"
    r_model, r_bin = f"{remote_dir}/{artifact.name}", f"{remote_dir}/{binary.name}"
    q = shlex.quote
    try:
        _run(dev, f"mkdir -p {q(remote_dir)}", "mkdir")
        dev.sync.push(artifact, r_model, mode=0o644)
        dev.sync.push(binary, r_bin, mode=0o755)
        _run(dev, f"chmod 755 {q(r_bin)}", "chmod")
        got = TOOLS[tool](dev, q(r_bin), q(r_model), {"warmup": warmup, "runs": runs, "threads": threads,
                                                       "executions_per_sample": executions_per_sample})
        return AndroidResult(artifact.name, label, f"{record.runtime} {tool}", got["runs"], got["min_ms"],
                             got["median_ms"], got["p90_ms"], got["mean_ms"], got["threads"], warmup,
                             {"serial": dev.serial, **got["extra"]})
    finally:
        try:
            dev.shell2(f"rm -rf {q(remote_dir)}", timeout=30)
        except Exception:  # noqa: BLE001 - cleanup must not hide the real error
            pass
