"""Latency of an exported artifact: local runners per format, plus the dispatch to Android / iOS.

One timed run = one call of the artifact's runner on a batch-1 input (input already in memory,
outputs read back), timed by mobile_vmoe.profile.timing. The first `warmup` runs are dropped.
`mvmoe profile latency --json` prints (format: docs/formats.md)

    {"artifact", "device", "runtime", "runs", "min_ms", "median_ms", "p90_ms", "mean_ms"}
    + "threads", "warmup", "runs_ms", "input_shape", "per_op" (where the runner gives per-op times),
    and from the artifact's .json: "model", "target", "backend", "precision", "dispatch", "macs",
    "checkpoint_sha256"

Runners: the converters' own ``load_runner`` (the one export's parity check uses), so an artifact
is opened the same way everywhere; which module opens it, with which options (``latency_options``,
``per_op``), where it runs (``runs_on``) and which Android tool benchmarks it are its record in
converters.targets, and each converter module's ``load_runner`` says what ``threads`` sets.

The input shape comes from the artifact's metadata .json (input.shape) when it sits beside the
artifact, checked against the runtime's own input signature.
"""

from __future__ import annotations

import os
import platform
import warnings
from pathlib import Path

import numpy as np

from converters.target_modules import load_runner
from converters import targets as T

from ..artifact import artifact_meta, measured_meta, read_program_table
from ..errors import MvmoeError
from .android import profile_android
from .ios import IOS_HOWTO, profile_ios
from .timing import LatencyResult, time_ms

# ------------------------------------------------------------------------------------ artifacts

def check_artifact(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise MvmoeError(f"artifact not found: {path}")
    split = read_program_table(path) is not None
    folders = tuple(dict.fromkeys(t.suffix for t in T.TARGETS if t.is_folder))
    if path.is_dir() and path.suffix not in folders and not split:
        raise MvmoeError(f"{path.name}: a folder that is neither a {' or '.join(folders) or 'package'} nor a split "
                         "artifact (its .json beside it has no \"programs\")")
    if path.suffix not in T.ARTIFACT_SUFFIXES and not split:
        raise MvmoeError(f"{path.name}: unknown artifact type {path.suffix!r}; expected one of {', '.join(T.ARTIFACT_SUFFIXES)}")
    return path


def artifact_record(path: Path) -> T.ExportTarget:
    """The target record of an artifact: the target and backend its .json names, else its suffix's."""
    meta = artifact_meta(path) or {}
    record = T.of_artifact(path.suffix, meta.get("target"), meta.get("backend"))
    if record is None:
        raise MvmoeError(f"{path.name}: no export target makes it (its .json names target {meta.get('target')!r}, "
                         f"backend {meta.get('backend')!r}; targets: {', '.join(t.label for t in T.TARGETS)})")
    return record


def check_runs_here(path: Path, record: T.ExportTarget) -> None:
    """A runtime bound to one system (the record's ``runs_on``): a one-line error elsewhere."""
    here = platform.system()
    if record.runs_on and here != record.runs_on:
        howto = f"for an iPhone {IOS_HOWTO}" if "ios" in record.platforms else "measure it on the device"
        raise MvmoeError(f"{path.name}: {record.label} runs only on {T.OS_NAMES.get(record.runs_on, record.runs_on)} "
                         f"(this is {T.OS_NAMES.get(here, here)}); there run the same command, {howto}")


def example_input(shape, dtype: str = "float32", seed: int = 0) -> np.ndarray:
    """A deterministic normal-distributed input (what normalised pixels look like)."""
    if any((not isinstance(s, int)) or s <= 0 for s in shape):
        raise MvmoeError(f"input shape must be positive integers, got {list(shape)}")
    x = np.random.default_rng(seed).standard_normal(tuple(shape))
    return x.astype(np.dtype(dtype))


def _meta_shape(meta: dict | None) -> tuple[list[int] | None, str]:
    if not meta or "input" not in meta:
        return None, "float32"
    inp = meta["input"]
    return list(inp.get("shape") or []) or None, inp.get("dtype", "float32")


# -------------------------------------------------------------------------------------- runners
def open_runner(path: Path, record: T.ExportTarget, threads: int | None, per_op: bool = False):
    """The artifact opened by its converter's ``load_runner`` (the same runner export's parity
    uses), with the record's ``latency_options``, and ``per_op`` where the runner takes it (a
    single program); MvmoeError where it cannot run here."""
    check_runs_here(path, record)
    if read_program_table(path) is not None:
        runner, why = load_runner(record, path, threads, split=True)
    else:
        options = dict(record.latency_options)
        if per_op and "per_op" in record.runner_options:
            options["per_op"] = True
        runner, why = load_runner(record, path, threads, **options)
    if runner is None:
        raise MvmoeError(f"{path.name}: cannot run here: {why}")
    return runner


def check_shape(path: Path, meta_shape: list[int] | None, native: list[int]) -> None:
    """The metadata may say NCHW while a converted graph takes NHWC (or the reverse): trust the
    runtime, but only when it is the same tensor in another layout."""
    if meta_shape and list(meta_shape) != native and sorted(meta_shape) != sorted(native):
        raise MvmoeError(f"{path.name}: metadata input shape {list(meta_shape)} does not match the model's {native}")


def run_local(path: Path, warmup: int, runs: int, threads: int | None, shape=None,
              per_op: bool = False) -> LatencyResult:
    """Time ``runs`` calls of the artifact's runner on this machine, after ``warmup`` untimed ones."""
    split = read_program_table(path) is not None
    record = artifact_record(path)
    runner = open_runner(path, record, threads, per_op=per_op)
    check_shape(path, shape, runner.input_shape)
    x = example_input(runner.input_shape, runner.input_dtype)
    times = time_ms(lambda: runner(x), runs, warmup)
    device = local_device() if not record.runs_on else f"local ({platform.platform()})"
    extra: dict = {"input_shape": runner.input_shape, **runner.extra}
    if split:
        extra.update(cold_tail_switches(runner.native, x))
    elif runner.per_op is not None:
        extra["per_op"] = runner.per_op()
    return LatencyResult(path.name, device, runner.runtime, times, runner.threads, warmup, extra)


def cold_tail_switches(chain, x: np.ndarray) -> dict:
    """A split artifact's cold tail switches, apart from the warm runs: every tail not loaded yet is
    loaded and run once on the stream of ``x``. ``tail_switch_ms``: the load alone (ms), what the
    demo apps write under the same key; ``tail_load_run_ms``: load + first run. The warm runs above
    used the one tail ``x`` routes to."""
    stream, _, gate, _ = chain.run_trunk(x)
    switch, first = [], []
    for e in range(chain.num_tails):
        if e in chain.tails:
            continue
        t0 = len(chain.switch_ms)
        first.append(time_ms(lambda e=e: chain.tail(e)(stream, gate), 1, 0)[0])
        switch.append(chain.switch_ms[t0])
    switch = [round(v, 4) for v in switch]  # the median is of the values written
    return {"expert_layout": "split", "tail_switch_ms": switch,
            "tail_switch_median_ms": float(np.median(switch)) if switch else None,
            "tail_load_run_ms": [round(v, 4) for v in first], "tails": chain.num_tails}


# --------------------------------------------------------------------------------------- device

def local_device() -> str:
    return f"local ({platform.system()} {platform.machine()})"


def per_op_unavailable(path: Path, kind: str) -> str | None:
    """Why ``--per-op`` gives no per-op times for this artifact and device, or None when it does."""
    if "per_op" not in artifact_record(path).runner_options:
        givers = ", ".join(t.label for t in T.TARGETS if "per_op" in t.runner_options)
        return f"per-op: not measured; per-op times come from the runners of {givers} only"
    if read_program_table(path) is not None:
        return ("per-op: not measured for split programs (trunk and expert tails are separate programs); export "
                "the single program with --experts fused for per-op times")
    if kind != "local":
        return "per-op: not measured; ETDump per-op times are read on this machine only (--device local)"
    return None


def warn_threads(threads: int | None) -> None:
    """One warning line when more threads are asked for than this machine has cores: the runs then
    time the threads' contention, not the model."""
    cores = os.cpu_count() or 1
    if threads is not None and threads > cores:
        warnings.warn(f"--threads {threads} is more than the {cores} CPU cores here: the threads will take turns "
                      f"and the times measure that; use at most --threads {cores}")


def parse_device(device: str) -> tuple[str, str | None]:
    """'local' | 'android[:SERIAL]' | 'ios[:UDID]' -> (kind, id)."""
    kind, _, ident = device.partition(":")
    if kind not in ("local", "android", "ios") or (kind == "local" and ident):
        raise MvmoeError(f"--device {device!r}: expected local, android[:SERIAL] or ios[:UDID]")
    return kind, ident or None


def profile_latency(artifact: str | Path, device: str = "local", *, warmup: int = 10, runs: int = 50,
                    threads: int | None = None, per_op: bool = False, binary: str | Path | None = None,
                    adb_host: str = "127.0.0.1", adb_port: int = 5037, verify: bool = True) -> dict:
    """Measure `artifact` on `device`; returns the latency JSON dict (docs/formats.md). ``verify``:
    refuse an artifact whose size or sha256 differ from its .json's (measured_meta)."""
    path = check_artifact(artifact)
    if warmup < 0 or runs < 1:
        raise MvmoeError(f"need --warmup >= 0 and --runs >= 1, got {warmup} and {runs}")
    if threads is not None and threads < 1:
        raise MvmoeError(f"--threads must be >= 1, got {threads}")
    warn_threads(threads)
    kind, ident = parse_device(device)
    meta, carried = measured_meta(path, verify)
    shape, _ = _meta_shape(meta)
    if kind == "android":
        res = profile_android(path, binary=binary, serial=ident, warmup=warmup, runs=runs, threads=threads,
                              host=adb_host, port=adb_port, record=artifact_record(path))
    elif kind == "ios":
        res = profile_ios(path, udid=ident, warmup=warmup, runs=runs)
    else:
        res = run_local(path, warmup, runs, threads, shape, per_op=per_op)
    if per_op and (note := per_op_unavailable(path, kind)):
        res.extra["per_op"] = None
        res.extra["per_op_note"] = note  # printed under the table: --per-op is never dropped silently
    res.extra.update(carried)
    return res.to_dict()
