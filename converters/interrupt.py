"""Ctrl-C that stops an export, even inside libraries that swallow KeyboardInterrupt.

coremltools (and some other converters) catch KeyboardInterrupt and carry on, so a plain Ctrl-C
during a conversion would let the export finish. Inside ``sigint_guard()`` SIGINT both raises
KeyboardInterrupt (libraries that honour it stop at once) and sets a flag; the pipeline calls
``check()`` after every library call, which raises KeyboardInterrupt again if the flag is set.
Inside ``held()`` (moving finished files into place, cleaning up) SIGINT only sets the flag, so
those steps are never cut in half.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

_state = {"pending": False, "held": 0}


def _on_sigint(signum, frame) -> None:
    _state["pending"] = True
    if not _state["held"]:
        raise KeyboardInterrupt


def check() -> None:
    """Raise KeyboardInterrupt if Ctrl-C came since the guard started (even if a library ate it)."""
    if _state["pending"]:
        raise KeyboardInterrupt


@contextmanager
def sigint_guard():
    """Install the SIGINT handler for the duration (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, _on_sigint)
    _state["pending"] = False
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _state["pending"] = False


@contextmanager
def held():
    """A section Ctrl-C must not cut: the interrupt is remembered and raised by the next check()."""
    _state["held"] += 1
    try:
        yield
    finally:
        _state["held"] -= 1
