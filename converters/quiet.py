"""Hide what the conversion libraries print (LiteRT-Torch progress, coremltools warnings, cpuinfo,
absl / oneDNN / XNNPACK INFO lines), so `mvmoe export` shows its own lines only; ``--verbose``
shows everything.

Native libraries write straight to file descriptors 1 and 2, so those are pointed at a log file
(or /dev/null) for the duration, which also takes Python-level prints and progress bars. Our own
progress lines go out inside ``loud()``, which points ``sys.stderr`` at the real terminal for one
call. Logging is held back with ``logging.disable`` and warnings with a filter; the log level
variables of TensorFlow / glog are set as well (read when those libraries load).
"""

from __future__ import annotations

import io
import logging
import os
import sys
import threading
import time
import warnings
from contextlib import contextmanager, nullcontext
from pathlib import Path

_terminals: list = []  # the stderr each active redirect replaced, outermost (the terminal) first
QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "GLOG_minloglevel": "3"}  # log levels only: no behaviour change


def _fileno(stream) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None


@contextmanager
def _redirect_fds(target: Path | None):
    """fd 1 and 2 -> ``target`` (appended) or /dev/null; sys.stderr keeps the real fd 2 if it was
    writing to it. Restored on exit."""
    for s in (sys.stdout, sys.stderr):
        try:
            s.flush()
        except (AttributeError, ValueError):
            pass
    sink = os.open(str(target) if target else os.devnull, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    _terminals.append(os.fdopen(os.dup(saved[2]), "w", buffering=1, encoding="utf-8", errors="replace"))
    try:
        for fd in (1, 2):
            os.dup2(sink, fd)
        yield
    finally:
        for s in (sys.stdout, sys.stderr):
            try:
                s.flush()
            except (AttributeError, ValueError):
                pass
        _terminals.pop().close()
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)
        os.close(sink)


_loud_lock = threading.RLock()  # one loud() block at a time, across threads (the ticker and the pipeline)


@contextmanager
def loud():
    """Inside ``quiet()``: let this block's writes to sys.stderr reach the real terminal.

    sys.stderr is process-wide, so blocks from different threads take turns: otherwise one thread
    could restore the redirect while another is still writing its line, which then lands in the
    log. Library output written by another thread during a block reaches the terminal too."""
    with _loud_lock:
        if not _terminals or _fileno(sys.stderr) != 2:  # not redirected (or captured by a test runner)
            yield
            return
        real = sys.stderr
        sys.stderr = _terminals[0]  # the outermost redirect saved the real terminal
        try:
            yield
        finally:
            sys.stderr.flush()
            sys.stderr = real


@contextmanager
def quiet(verbose: bool = False, log: Path | None = None):
    """Silence third-party output inside the block unless ``verbose``; native output goes to
    ``log`` if given (kept for the error notes of a failed conversion)."""
    if verbose:
        yield
        return
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    previous_tqdm = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"
    previous_disable = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), (_redirect_fds(log) if _fileno(sys.__stderr__) == 2 else nullcontext()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous_disable)
        if previous_tqdm is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = previous_tqdm


TICK_SECONDS = 20.0  # how often a long conversion says it is still running


def _elapsed(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m} min {s:02d} s" if m else f"{s} s"


@contextmanager
def ticking(say, what: str):
    """While the block runs, ``say("<what>: still running, <elapsed>")`` every TICK_SECONDS from a
    daemon thread; afterwards ``say("<what>: done after <elapsed>")`` ("failed", "stopped" on Ctrl-C)."""
    t0, stop = time.monotonic(), threading.Event()

    def tick():
        while not stop.wait(TICK_SECONDS):
            say(f"{what}: still running, {_elapsed(time.monotonic() - t0)}")

    thread = threading.Thread(target=tick, daemon=True, name="mvmoe-ticker")
    thread.start()
    end = "done"
    try:
        yield
    except BaseException as e:
        end = "stopped" if isinstance(e, KeyboardInterrupt) else "failed"
        raise
    finally:
        stop.set()
        thread.join()
        say(f"{what}: {end} after {_elapsed(time.monotonic() - t0)}")
