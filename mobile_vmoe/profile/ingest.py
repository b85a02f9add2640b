"""Read the demo apps' benchmark JSON (format: docs/formats.md) into `profile latency`'s keys.

Input  {"format": "mvmoe-app-benchmark", "version": 1, "artifact", "app", "device", "runtime",
        "compute_units", "threads", "warmup", "runs_ms": [...], "created"}
Output {"artifact", "device", "runtime", "runs", "min_ms", "median_ms", "p90_ms", "mean_ms",
        "threads", "warmup", "compute_units", "app", "created", "runs_ms", "source"}
        + "rss_mib", "rss_mib_after_load", "expert_layout", "tail_switch_ms", "tail_switch_median_ms",
        "tails_cached" when the app wrote its memory and split-expert figures
        + "checkpoint_sha256" when the app copied it from the artifact's .json (then `mvmoe report`
        puts the number on the run of that checkpoint)
"""

from __future__ import annotations

from pathlib import Path

from ..errors import MvmoeError
from ..fileio import read_json
from .timing import LatencyResult, percentile

FORMAT = "mvmoe-app-benchmark"
REQUIRED = ("artifact", "device", "runtime", "runs_ms")


def ingest_app_benchmark(path: str | Path) -> dict:
    """Validate one app benchmark file and summarise it; clear MvmoeError on anything malformed."""
    path = Path(path)
    if not path.is_file():
        raise MvmoeError(f"benchmark file not found: {path}")
    d = read_json(path)
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        got = d.get("format") if isinstance(d, dict) else type(d).__name__
        raise MvmoeError(f"{path}: not an app benchmark file (format {got!r}, expected {FORMAT!r})")
    if d.get("version") != 1:
        raise MvmoeError(f"{path}: unsupported benchmark version {d.get('version')!r} (this mvmoe reads 1)")
    missing = [k for k in REQUIRED if k not in d]
    if missing:
        raise MvmoeError(f"{path}: missing key(s) {', '.join(missing)}")
    runs = d["runs_ms"]
    if not isinstance(runs, list) or not runs:
        raise MvmoeError(f"{path}: runs_ms must be a non-empty list of milliseconds")
    if not all(isinstance(r, (int, float)) and not isinstance(r, bool) for r in runs):
        raise MvmoeError(f"{path}: runs_ms must hold numbers, got {runs[:3]}")
    res = LatencyResult(str(d["artifact"]), str(d["device"]), str(d["runtime"]), [float(r) for r in runs],
                        d.get("threads"), int(d.get("warmup") or 0),
                        {"compute_units": d.get("compute_units"), "app": d.get("app"), "created": d.get("created"),
                         "source": str(path)})
    if d.get("checkpoint_sha256"):
        res.extra["checkpoint_sha256"] = str(d["checkpoint_sha256"])
    res.extra.update(memory_keys(path, d))
    return res.to_dict()


def memory_keys(path: Path, d: dict) -> dict:
    """The optional memory and split-expert figures of an app benchmark file, checked."""
    out = {}
    for src, dst in (("rss_mib_after_runs", "rss_mib"), ("rss_mib_after_load", "rss_mib_after_load")):
        v = d.get(src)
        if v is not None:
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
                raise MvmoeError(f"{path}: {src} must be a number of MiB >= 0, got {v!r}")
            out[dst] = float(v)
    if d.get("expert_layout") is not None:
        if d["expert_layout"] not in ("fused", "split"):
            raise MvmoeError(f"{path}: expert_layout must be fused or split, got {d['expert_layout']!r}")
        out["expert_layout"] = d["expert_layout"]
    switches = d.get("tail_switch_ms") or []
    if not isinstance(switches, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in switches):
        raise MvmoeError(f"{path}: tail_switch_ms must be a list of milliseconds")
    if switches:
        out.update(tail_switch_ms=[float(v) for v in switches], tail_switch_median_ms=percentile(switches, 50),
                   tails_cached=d.get("tails_cached"))
    return out
