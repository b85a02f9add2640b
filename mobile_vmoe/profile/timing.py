"""The one timing loop: wall-clock milliseconds per call, optionally several functions interleaved.

Interleaving (A B C, A B C, ...) makes load from other processes hit every variant alike, so the
ratios between them hold even on a busy machine. ``inner`` calls per sample average out timer
resolution for sub-millisecond calls; ``sync`` (e.g. ``torch.cuda.synchronize``) runs before the
clock starts and before it stops, so asynchronous work is inside the sample.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..errors import MvmoeError


def time_interleaved(fns: dict[str, Callable[[], object]], rounds: int, warmup: int = 0, inner: int = 1,
                     sync: Callable[[], object] | None = None) -> dict[str, list[float]]:
    """Call every function ``warmup`` times untimed, then ``rounds`` rounds of one sample each, in
    turn. Returns {name: [ms per call, one per round]}."""
    if warmup < 0 or rounds < 1 or inner < 1:
        raise MvmoeError(f"need warmup >= 0, runs >= 1 and inner >= 1, got warmup={warmup} runs={rounds} inner={inner}")
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            if sync:
                sync()
            t0 = time.perf_counter_ns()
            for _ in range(inner):
                fn()
            if sync:
                sync()
            times[name].append((time.perf_counter_ns() - t0) / 1e6 / inner)
    return times


def time_ms(fn: Callable[[], object], runs: int, warmup: int = 0, inner: int = 1,
            sync: Callable[[], object] | None = None) -> list[float]:
    """``runs`` samples of ``fn`` in ms per call, after ``warmup`` untimed calls."""
    return time_interleaved({"fn": fn}, runs, warmup, inner, sync)["fn"]


# ---------------------------------------------------------------------------------------- stats
def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), q in [0, 100]."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def summarize(runs_ms: list[float]) -> dict:
    """min / median / p90 / mean of per-run times in ms (the latency JSON's keys)."""
    if not runs_ms:
        raise MvmoeError("no timed runs to summarise (runs must be >= 1)")
    bad = [r for r in runs_ms if not (isinstance(r, (int, float)) and math.isfinite(r) and r >= 0)]
    if bad:
        raise MvmoeError(f"run times must be finite and >= 0 ms, got {bad[:3]}")
    return {"runs": len(runs_ms), "min_ms": float(min(runs_ms)), "median_ms": percentile(runs_ms, 50),
            "p90_ms": percentile(runs_ms, 90), "mean_ms": float(sum(runs_ms) / len(runs_ms))}


@dataclass
class LatencyResult:
    """One latency measurement: where, with what, and the per-run times."""

    artifact: str  # file name
    device: str  # "local (Linux x86_64)", "Pixel 8 (Android 15)", ...
    runtime: str  # the record's runtime (converters.targets), or "<runtime> <Android tool>"
    runs_ms: list[float]
    threads: int | None = None
    warmup: int = 0
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = {"artifact": self.artifact, "device": self.device, "runtime": self.runtime}
        d.update(summarize(self.runs_ms))
        d.update({"threads": self.threads, "warmup": self.warmup, "runs_ms": [round(r, 4) for r in self.runs_ms]})
        d.update(self.extra)
        return d
