"""One training per run folder: an OS file lock held for the run's whole life.

``DIR/run.lock`` is locked with ``fcntl.flock`` (exclusive, non-blocking) by rank 0 before it
writes anything into DIR, and released when the run ends. The file holds the holder's pid, host,
command and start time (one JSON object), so a second ``mvmoe train --out DIR`` (new or
``--resume``) fails with one line naming it. The kernel drops the lock when its process dies, even
by SIGKILL or a power cut of the process, so a lock left by a killed run is simply taken over: no
stale-pid guessing. The file itself stays (it is emptied on release); only the lock counts.

Forked children (DataLoader workers) close their copy of the descriptor, so a worker that outlives
a killed parent for a moment does not keep the folder locked. Where ``fcntl`` does not exist
(Windows) the folder is not locked.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from .errors import MvmoeError

LOCK_NAME = "run.lock"
_held: set[int] = set()  # descriptors of locks this process holds


def _close_in_child() -> None:
    for fd in list(_held):
        try:
            os.close(fd)  # close, not LOCK_UN: the parent's lock stays
        except OSError:
            pass
    _held.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_child)


def holder_text(info: dict) -> str:
    """'pid 123 on host since 07:50:01 UTC: mvmoe train ...' from a lock file's JSON."""
    when = time.strftime("%H:%M:%S UTC", time.gmtime(info["since"])) if isinstance(info.get("since"), (int, float)) else "?"
    return f"pid {info.get('pid', '?')} on {info.get('host', '?')} since {when}: {info.get('command', '?')}"


def _read_holder(path: Path) -> str:
    try:
        return holder_text(json.loads(path.read_text()))
    except (OSError, ValueError, AttributeError):
        return "a process that has not written its name yet"


def acquire(folder: str | os.PathLike) -> int | None:
    """Lock ``folder`` (created if needed) for this process; -> the descriptor to ``release``.
    MvmoeError naming the holder when another live process has it."""
    try:
        import fcntl
    except ImportError:  # no flock on this platform
        return None
    folder = Path(folder)
    path = folder / LOCK_NAME
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise MvmoeError(f"cannot write {path}: {e.strerror or e}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise MvmoeError(f"{folder} is in use by another training ({_read_holder(path)}); "
                         "wait for it to end or pick another --out") from None
    info = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv), "since": time.time()}
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    except OSError as e:
        os.close(fd)
        raise MvmoeError(f"cannot write {path}: {e.strerror or e}") from None
    _held.add(fd)
    return fd


def release(fd: int | None) -> None:
    """Empty the lock file and unlock it (closing the descriptor drops the flock)."""
    if fd is None or fd not in _held:
        return
    _held.discard(fd)
    try:
        os.ftruncate(fd, 0)
    except OSError:
        pass
    os.close(fd)
