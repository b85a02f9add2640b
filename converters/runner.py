"""An opened artifact, the same for every runtime: parity (pipeline), `mvmoe profile latency` and
`profile memory` get theirs from the target module's ``load_runner`` (``load_split_runner`` for
split programs, whose Runner wraps a SplitChain), through converters.target_modules.load_runner.

``load_runner(path, threads=None, **options)`` returns ``(Runner, None)``, or ``(None, why not)``
where the runtime cannot run here (Core ML off macOS). A file the runtime cannot read is an
MvmoeError; so is an option the module does not take (``take``).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from mobile_vmoe.errors import MvmoeError


@dataclass
class Runner:
    """``runner(x)`` runs one input array and returns the outputs in the wrapper's order
    (logits first)."""

    fn: Callable[[np.ndarray], list[np.ndarray]]
    runtime: str  # the record's runtime (converters.targets)
    input_shape: list[int]  # what the runtime's input signature says
    input_dtype: str  # numpy dtype name
    threads: int | None  # the thread count in effect; None: the runtime decides
    native: Any = None  # the runtime's own object (program, interpreter, session, model)
    extra: dict = field(default_factory=dict)  # runtime facts worth recording (e.g. providers)
    per_op: Callable[[], list[dict]] | None = None  # per-op times of the runs so far (runner option per_op)

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        return self.fn(x)


def take(options: dict, what: str, **defaults) -> dict:
    """``options`` over ``defaults``; an option not among them is a one-line MvmoeError naming those
    the runner takes (``what``: "the ExecuTorch runner")."""
    unknown = [k for k in options if k not in defaults]
    if unknown:
        raise MvmoeError(f"{what} takes no option {unknown[0]!r} (it takes {', '.join(defaults) or 'none'})")
    return {**defaults, **options}


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


class SplitChain:
    """Runs split programs: the trunk always loaded, tails loaded on first use and kept in an LRU of
    ``max_tails`` (None: keep every tail loaded). Callable like a single program: image ->
    [logits, expert_probs]. ``tail_loads`` counts tail loads; ``switch_ms`` has the time of each
    (a cold tail switch: load, before the tail's first run)."""

    def __init__(self, run_trunk, load_tail, num_tails: int, max_tails: int | None = None):
        if max_tails is not None and max_tails < 1:
            raise MvmoeError(f"max_tails {max_tails}: must be at least 1")
        self.run_trunk, self.load_tail, self.num_tails, self.max_tails = run_trunk, load_tail, num_tails, max_tails
        self.tails: OrderedDict = OrderedDict()  # expert -> run(stream, gate) -> logits
        self.tail_loads, self.switch_ms = 0, []
        self.input_shape: list[int] | None = None  # the trunk's input, as the runtime reports it

    def tail(self, e: int):
        """The run function of tail ``e``, loading it (and evicting the least recently used) if needed."""
        if e in self.tails:
            self.tails.move_to_end(e)
            return self.tails[e]
        if self.max_tails is not None and len(self.tails) >= self.max_tails:
            self.tails.popitem(last=False)
        t0 = time.perf_counter()
        self.tails[e] = self.load_tail(e)
        self.switch_ms.append(1e3 * (time.perf_counter() - t0))
        self.tail_loads += 1
        return self.tails[e]

    def __call__(self, x):
        stream, index, gate, probs = self.run_trunk(x)
        e = int(np.asarray(index).reshape(-1)[0])
        return [np.asarray(self.tail(e)(stream, gate)), probs]

    def runner(self, runtime: str, threads: int | None) -> Runner:
        """This chain as a Runner (``native`` is the chain: its tail_loads and switch_ms)."""
        return Runner(self, runtime, self.input_shape, "float32", threads, self, {"expert_layout": "split"})
