"""Provenance: which code, command, library versions and machine produced a number.

``provenance()`` returns::

    {"commit": "40-hex" | None,   # git HEAD of the checkout the package was imported from; None outside git
     "dirty": bool | None,        # uncommitted changes to tracked files (None when commit is None)
     "command": "mvmoe train ...",# the command line of this process
     "versions": {"python", "torch", "torchvision", "mvmoe", ...},  # VERSIONED, where installed
     "host": "name"}              # platform.node()

Training writes it into run.json (``provenance``) and the commit alone into summary.json
(``commit``); every study writes it into its results. Git is asked with a short timeout and any
failure (no git, not a checkout, a package installed from a wheel) gives ``commit: None``.
"""

from __future__ import annotations

import platform
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from converters.targets import PACKAGES

PACKAGE_DIR = Path(__file__).resolve().parent
# reported when installed: the training stack, and every package that converts or runs an export target
VERSIONED = ("mvmoe", "torch", "torchvision", "numpy", "scikit-learn", *PACKAGES)


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        r = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def git_state(path: Path = PACKAGE_DIR) -> tuple[str | None, bool | None]:
    """-> (HEAD commit, dirty) of the git checkout holding ``path``, or (None, None) outside one."""
    top = _git(["rev-parse", "--show-toplevel"], path)
    if top is None:
        return None, None
    commit = _git(["rev-parse", "HEAD"], path)
    if commit is None:
        return None, None
    status = _git(["status", "--porcelain", "--untracked-files=no"], path)
    return commit, (None if status is None else bool(status))


def versions() -> dict[str, str]:
    """python, mvmoe and the installed versions of the libraries that shape results."""
    out = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def provenance(argv: list[str] | None = None, path: Path = PACKAGE_DIR) -> dict:
    """The provenance record of this process (see the module docstring)."""
    commit, dirty = git_state(path)
    argv = sys.argv if argv is None else argv
    return {"commit": commit, "dirty": dirty, "command": shlex.join(str(a) for a in argv),
            "versions": versions(), "host": platform.node()}
