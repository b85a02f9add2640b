"""An opened artifact, the same for every runtime: parity (pipeline) and `mvmoe profile latency`
both get theirs from the target module's ``load_runner``.

``load_runner(path, threads=None)`` returns ``(Runner, None)``, or ``(None, why not)`` where the
runtime cannot run here (Core ML off macOS). A file the runtime cannot read is an MvmoeError.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np


@dataclass
class Runner:
    """``runner(x)`` runs one input array and returns the outputs in the wrapper's order
    (logits first)."""

    fn: Callable[[np.ndarray], list[np.ndarray]]
    runtime: str  # executorch | litert | onnxruntime | coreml
    input_shape: list[int]  # what the runtime's input signature says
    input_dtype: str  # numpy dtype name
    threads: int | None  # the thread count in effect; None: the runtime decides
    native: Any = None  # the runtime's own object (program, interpreter, session, model)
    extra: dict = field(default_factory=dict)  # runtime facts worth recording (e.g. providers)

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        return self.fn(x)


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__
