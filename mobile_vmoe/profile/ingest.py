"""Read the demo apps' benchmark JSON (format: docs/formats.md) into `profile latency`'s keys.

Input  {"format": "mvmoe-app-benchmark", "version": 1, "artifact", "app", "device", "runtime",
        "compute_units", "threads", "warmup", "runs_ms": [...], "created"}
Output {"artifact", "device", "runtime", "runs", "min_ms", "median_ms", "p90_ms", "mean_ms",
        "threads", "warmup", "compute_units", "app", "created", "runs_ms", "source"}
        + "checkpoint_sha256" when the app copied it from the artifact's .json (then `mvmoe report`
        puts the number on the run of that checkpoint)
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import MvmoeError
from .latency import LatencyResult

FORMAT = "mvmoe-app-benchmark"
REQUIRED = ("artifact", "device", "runtime", "runs_ms")


def ingest_app_benchmark(path: str | Path) -> dict:
    """Validate one app benchmark file and summarise it; clear MvmoeError on anything malformed."""
    path = Path(path)
    if not path.is_file():
        raise MvmoeError(f"benchmark file not found: {path}")
    try:
        d = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MvmoeError(f"{path}: not valid JSON ({e})") from None
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
    return res.to_dict()
