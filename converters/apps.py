"""The demo apps (apps/): which artifacts each runs, from the target records' ``apps``, and
``copy_to_app`` (``mvmoe export --app``), which puts an artifact and its .json where the app looks
for models (converters.targets.APP_DIRS)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from mobile_vmoe.errors import MvmoeError
from mobile_vmoe.fileio import move_into_place, read_json_object

from . import targets as T

# What each demo app runs (apps/*/README.md), from the target records' ``apps``; where it looks
# for models is converters.targets.APP_DIRS.
APP_RUNS = {app: {(t.name, t.backend) for t in T.TARGETS if app in t.apps} for app in T.APP_DIRS}


def app_runs_text(app: str) -> str:
    """"the iOS demo app runs coreml (.mlpackage) artifacts only", from the target table."""
    labels = [f"{t.label} ({t.suffix})" for t in T.TARGETS if app in t.apps]
    return f"the {T.APP_NAMES[app]} demo app runs {', '.join(labels)} artifacts only"


def check_app(app: str) -> None:
    if app not in T.APP_DIRS:
        raise MvmoeError(f"--app {app!r}: expected ios or android")


def app_runs(app: str, target: str, backend: str | None) -> bool:
    check_app(app)
    return (target, backend) in APP_RUNS[app]


def project_root() -> Path:
    """The source checkout this package lives in (the folder holding apps/), whatever the cwd."""
    for parent in Path(__file__).resolve().parents:
        if (parent / "apps" / "ios_demo").is_dir() and (parent / "apps" / "android_demo").is_dir():
            return parent
    raise MvmoeError(f"--app needs the demo apps of a source checkout; none is around {Path(__file__).resolve().parent}")


def copy_to_app(artifact: Path, app: str, root: Path | None = None) -> Path:
    """Copy an artifact and its .json into a demo app's model folder, atomically; only what the
    app runs (by the .json's target and backend). ``root``: the project folder (default: the
    checkout this package lives in). Returns the folder."""
    check_app(app)
    artifact = Path(artifact)
    meta_path = artifact.with_suffix(".json")
    if not meta_path.is_file():
        raise MvmoeError(f"{meta_path} not found: an app needs the .json beside {artifact.name}")
    meta = read_json_object(meta_path)
    if not app_runs(app, meta.get("target"), meta.get("backend")):
        raise MvmoeError(f"not copying {artifact.name}: {app_runs_text(app)}")
    dest = (root if root is not None else project_root()) / T.APP_DIRS[app]
    dest.mkdir(parents=True, exist_ok=True)
    for src in (artifact, meta_path):
        tmp = dest / f".{src.name}.tmp-{os.getpid()}"
        shutil.copytree(src, tmp) if src.is_dir() else shutil.copyfile(src, tmp)
        move_into_place(tmp, dest / src.name)
    return dest
