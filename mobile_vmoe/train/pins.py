"""Pinned inputs: a run refuses to continue on a file that changed behind its back.

A training run reads some files again after it wrote or was given them: ``--resume`` re-reads
run.json's settings and the data index, the MoE stage reads the superclasses file and (for stage 2
or an upcycled MoE) the dense checkpoint. Each is pinned in run.json when the run first has it::

    "pins": {"settings":         {"file": "run.json",          "sha256": "..."},
             "data_index":       {"file": "data_index.npz",    "sha256": "..."},
             "superclasses":     {"file": "superclasses.json", "sha256": "..."},
             "dense_checkpoint": {"file": "dense/model.pt",    "sha256": "..."}}

``file`` is relative to the run folder when it lies inside it, else as given. Before a pinned file
is used again, :func:`verify` recomputes its digest and raises one MvmoeError naming the file when
it differs. What each digest covers:

- ``settings``: run.json less ``pins`` itself, ``provenance`` (who ran it, not what runs), ``lr``
  (derived from the train config) and the train config's RESUMABLE_KEYS, which ``--resume --set``
  may change (``resumable``). A hand edit of anything else (epochs, lr, the model) is refused.
- ``data_index``: the index content (per split: classes, file names, labels), not the .npz bytes:
  a cache rebuilt because a folder's mtime moved, with the same files, is the same data.
- files (superclasses, dense checkpoint): the file's bytes.

Runs written before pins existed carry none and are not checked. Only rank 0 writes run.json.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable

from ..data.index import load_indexes
from ..errors import MvmoeError
from ..fileio import atomic_write_json, file_sha256, read_json_object

PINS_KEY = "pins"
UNPINNED_RUN_KEYS = (PINS_KEY, "provenance", "lr")
DESCRIBE = {
    "data_index": "the dataset's file index (files added, removed or renamed)",
    "superclasses": "the superclasses file",
    "dense_checkpoint": "the dense stage's checkpoint",
}
HINT = {
    "data_index": "resume needs the data the run started with: restore it or start a new --out",
    "superclasses": "the MoE must train on the mapping it started with: put the file back or start a new --out",
    "dense_checkpoint": "the superclasses and the MoE derive from it: put it back or start a new --out",
}


def settings_digest(run: dict[str, Any], resumable: Iterable[str]) -> str:
    """sha256 of run.json's settings: every key but UNPINNED_RUN_KEYS, the train config less ``resumable``."""
    kept = {k: v for k, v in run.items() if k not in UNPINNED_RUN_KEYS}
    tc = dict(kept.get("train_config") or {})
    for k in (*resumable, "stop_after_steps"):
        tc.pop(k, None)
    kept["train_config"] = tc
    return _sha256_json(kept)


def index_digest(path: str | os.PathLike) -> str | None:
    """sha256 of a data index's content (mobile_vmoe.data.index .npz), or None when it cannot be read."""
    indexes = load_indexes(path)
    if indexes is None:
        return None
    h = hashlib.sha256()
    for split in sorted(indexes):
        ix = indexes[split]
        h.update(split.encode() + b"\0" + "\n".join(ix.classes).encode() + b"\0")
        h.update(b"\n".join(bytes(f) for f in ix.files) + b"\0")
        h.update(ix.labels.astype("<i4").tobytes())
    return h.hexdigest()


def _sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _display(out: Path, path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(out).resolve()))
    except ValueError:
        return str(path)


def _digest(role: str, path: Path) -> str | None:
    if role == "data_index":
        return index_digest(path)
    return file_sha256(path) if Path(path).is_file() else None


def pin(out: str | os.PathLike, role: str, path: str | os.PathLike, *, run: dict | None = None,
        write: bool = True) -> dict:
    """Record ``path``'s digest under ``role`` in DIR/run.json (``run``: its dict, when the caller is
    about to write it itself; then nothing is written here). Returns the run dict."""
    out = Path(out)
    run = run if run is not None else read_json_object(out / "run.json")
    digest = _digest(role, Path(path))
    if digest is None:
        return run
    run.setdefault(PINS_KEY, {})[role] = {"file": _display(out, Path(path)), "sha256": digest}
    if write:
        atomic_write_json(out / "run.json", run)
    return run


def pin_settings(run: dict, resumable: Iterable[str]) -> dict:
    """Pin run.json's own settings in ``run`` (before it is written)."""
    run.setdefault(PINS_KEY, {})["settings"] = {"file": "run.json", "sha256": settings_digest(run, resumable)}
    return run


def pin_new_run(run: dict, out: str | os.PathLike, superclasses: str, resumable: Iterable[str]) -> dict:
    """The pins of a run about to start (``run``: run.json's dict, written by the caller): its settings,
    the data index when the run folder holds one, and a given superclasses file."""
    out = Path(out)
    pin_settings(run, resumable)
    if (out / "data_index.npz").is_file():
        pin(out, "data_index", out / "data_index.npz", run=run, write=False)
    if superclasses not in ("auto", "none"):
        pin(out, "superclasses", superclasses, run=run, write=False)
    return run


def pinned(out: str | os.PathLike, role: str) -> dict | None:
    """The pin of ``role`` in DIR/run.json, or None (no run.json, an older run, or not pinned yet)."""
    path = Path(out) / "run.json"
    if not path.is_file():
        return None
    return (read_json_object(path).get(PINS_KEY) or {}).get(role)


def _changed(out: Path, role: str, shown: str, want: str, got: str | None) -> MvmoeError:
    what = "is gone" if got is None else f"changed since the run pinned it (sha256 {want[:12]}… now {got[:12]}…)"
    return MvmoeError(f"{shown} in {out}: {DESCRIBE.get(role, f'the {role} file')} {what}; "
                      f"{HINT.get(role, 'put it back or start a new --out')}")


def verify(out: str | os.PathLike, role: str, path: str | os.PathLike | None = None) -> None:
    """Raise one MvmoeError naming the file when ``role``'s pinned digest no longer matches.

    ``path``: where the file is now (default: the pinned ``file``, relative to the run folder)."""
    out = Path(out)
    pin_ = pinned(out, role)
    if pin_ is None:
        return
    where = Path(path) if path is not None else (out / pin_["file"] if not Path(pin_["file"]).is_absolute()
                                                  else Path(pin_["file"]))
    got = _digest(role, where)
    if got != pin_["sha256"]:
        raise _changed(out, role, _display(out, where), pin_["sha256"], got)


def verify_settings(out: str | os.PathLike, run: dict, resumable: Iterable[str]) -> None:
    """Raise one MvmoeError naming run.json when its settings differ from the ones pinned at start."""
    pin_ = (run.get(PINS_KEY) or {}).get("settings")
    if pin_ is None:
        return
    resumable = tuple(resumable)
    got = settings_digest(run, resumable)
    if got != pin_["sha256"]:
        raise MvmoeError(f"run.json in {out}: its settings were edited since the run started (sha256 "
                         f"{pin_['sha256'][:12]}… now {got[:12]}…); only {', '.join(resumable)} may change, on the "
                         "command line (mvmoe train --out DIR --resume --set KEY=VALUE): put the file back or start "
                         "a new --out")


def verify_or_pin(out: str | os.PathLike, role: str, path: str | os.PathLike, *, is_main: bool = True) -> None:
    """Before reading ``path`` again: verify it against its pin, or pin it when it has none yet (rank 0)."""
    if pinned(out, role) is not None:
        verify(out, role, path)
    elif is_main and (Path(out) / "run.json").is_file():
        pin(out, role, path)
