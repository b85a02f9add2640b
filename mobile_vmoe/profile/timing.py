"""The one timing loop: wall-clock milliseconds per call, optionally several functions interleaved.

Interleaving (A B C, A B C, ...) makes load from other processes hit every variant alike, so the
ratios between them hold even on a busy machine. ``inner`` calls per sample average out timer
resolution for sub-millisecond calls; ``sync`` (e.g. ``torch.cuda.synchronize``) runs before the
clock starts and before it stops, so asynchronous work is inside the sample.
"""

from __future__ import annotations

import time
from typing import Callable

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
