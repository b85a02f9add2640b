"""Files written so that nothing is lost: atomic replace, and readers with one-line errors.

Every file the tool writes (checkpoints, JSON, reports, artifacts' metadata) goes through
``atomic_write_bytes``: a temporary file beside the target, fsync, then ``os.replace``. A crash or
Ctrl-C leaves the old file or the new one, never half of one. A write that the filesystem refuses
(the path is a file's child, read-only, full) is an MvmoeError naming the path.

JSON is always strict (``to_json``): NaN and Infinity are not JSON, so a non-finite number is
either refused (an MvmoeError naming its key) or, where the caller asks for it, written as null.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .errors import MvmoeError


def default_file_mode() -> int:
    """What ``open(path, "w")`` would give a new file: 0o666 less the process umask (0o644 usually)."""
    mask = os.umask(0)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: str | os.PathLike, write) -> Path:
    """Call ``write(fileobj)`` on a temporary file next to ``path``, fsync, then os.replace.

    A crash or Ctrl-C leaves either the old file or the new one, never half of one. The file gets
    the usual permissions (0o666 less the umask), not mkstemp's private 0o600. An OSError of the
    filesystem (not a directory, read-only, no space) becomes one MvmoeError naming ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise MvmoeError(f"cannot write {path}: {e.strerror or e}") from None
    try:
        os.fchmod(fd, default_file_mode())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise MvmoeError(f"cannot write {path}: {e.strerror or e}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def probe_write(folder: str | os.PathLike) -> None:
    """Create and remove a temporary file in ``folder``; raises the OSError when it cannot."""
    fd, probe = tempfile.mkstemp(dir=folder, prefix=".mvmoe-write-test-")
    os.close(fd)
    os.unlink(probe)


def writable_dir(path: str | os.PathLike, what: str = "--out", create: bool = True) -> Path:
    """``path`` as a folder this process can write into (created if missing): one MvmoeError
    naming it when it is a file, sits below a file, or is read-only / on a full or read-only disk.
    ``create=False`` creates nothing (a refusal later leaves no empty folder): a file is written and
    removed in ``path``, or in its nearest existing parent."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise MvmoeError(f"{what} {path} is a file, not a folder")
    where = path
    if not create:
        where = next(p for p in (path.absolute(), *path.absolute().parents) if p.exists())
        if not where.is_dir():
            raise MvmoeError(f"{what} {path}: cannot write there ({where} is a file)")
    try:
        if create:
            path.mkdir(parents=True, exist_ok=True)
        probe_write(where)
    except OSError as e:
        raise MvmoeError(f"{what} {path}: cannot write there ({e.strerror or e})") from None
    return path


def move_into_place(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Move ``src`` (a file or a folder such as an .mlpackage) onto ``dst`` atomically, on one file
    system; an old ``dst`` is replaced (a folder: renamed aside, then removed)."""
    src, dst = Path(src), Path(dst)
    if src.is_dir() and dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, lambda f: f.write(text.encode()))


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 hex digest of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_json(path: str | os.PathLike) -> Any:
    """A JSON file's value; MvmoeError naming the file when it is not JSON (or not UTF-8 text)."""
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MvmoeError(f"{path}: not valid JSON ({e})") from None


def read_json_object(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON file that must hold one object (metadata, summaries); MvmoeError naming the file if not."""
    d = read_json(path)
    if not isinstance(d, dict):
        raise MvmoeError(f"{path}: expected a JSON object")
    return d


def nonfinite_keys(obj: Any, where: str = "") -> list[str]:
    """Dotted keys (``parity.max_abs_diff``, ``runs_ms[3]``) of every NaN / Infinity float in ``obj``."""
    if isinstance(obj, float):
        return [] if math.isfinite(obj) else [where or "(the value)"]
    if isinstance(obj, dict):
        return [k for key, v in obj.items() for k in nonfinite_keys(v, f"{where}.{key}" if where else str(key))]
    if isinstance(obj, (list, tuple)):
        return [k for i, v in enumerate(obj) for k in nonfinite_keys(v, f"{where}[{i}]")]
    return []


def _nan_to_null(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_null(v) for v in obj]
    return obj


def to_json(obj: Any, *, indent: int | None = None, nonfinite: str = "refuse", what: str = "JSON") -> str:
    """Strict JSON text of ``obj``. A NaN / Infinity anywhere is refused with an MvmoeError naming
    its key (``nonfinite="refuse"``) or written as null (``"null"``: logs of a run that diverged)."""
    if nonfinite == "null":
        obj = _nan_to_null(obj)
    else:
        bad = nonfinite_keys(obj)
        if bad:
            shown = ", ".join(bad[:3]) + (" ..." if len(bad) > 3 else "")
            raise MvmoeError(f"refusing to write {what}: {shown} is not a finite number (NaN/Infinity is not JSON)")
    return json.dumps(obj, indent=indent, allow_nan=False)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """``obj`` as indented strict JSON with a final newline, atomically; NaN / Infinity are refused
    (MvmoeError naming the key and the file)."""
    return atomic_write_text(path, to_json(obj, indent=1, what=str(path)) + "\n")
