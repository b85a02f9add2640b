"""A target's converter module, found by its record's ``module`` (converters.targets), and the one
way to open an artifact: ``load_runner(record, path, threads, split=..., **options)``.

Every converter module has the same interface::

    convert(wrapper, ep, example, path, *, precision, backend, calibration, metadata) -> op audit dict
    load_runner(path, threads=None, **options) -> (Runner, None) or (None, why not)   (converters.runner)
    convert_split(progs, path, table, *, precision, backend, calibration, metadata) -> op audit dict
    load_split_runner(path, threads=None, **options) -> (Runner, None) or (None, why not)
    (the last two where the record has split programs; see converters.split)

``options`` are the record's ``runner_options`` (``split_runner_options``); any other is a one-line
MvmoeError here, before the runtime is imported.

The module is imported by name (importlib): the table names its module and imports nothing of the
converters, and this module names none, so that adding a target is its record and its module.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from mobile_vmoe.errors import MvmoeError

from . import targets as T


def module_of(name: str) -> ModuleType:
    """The converter module of ``--target name`` (its record's ``module``, in this package)."""
    record = T.find(name)
    if record is None:
        raise MvmoeError(f"--target {name!r}: expected one of {', '.join(T.TARGET_NAMES)}")
    return module_for(record)


def module_for(record: T.ExportTarget) -> ModuleType:
    """The converter module a record names (``record.module``, in this package)."""
    return importlib.import_module(f"{__package__}.{record.module}")


def module_file(record: T.ExportTarget) -> str:
    """The source file of the record's module: what a child process loads when the module is not
    importable there by name (one a program added to the package at run time)."""
    return str(module_for(record).__file__)


def adopt_module(record: T.ExportTarget, file: str) -> None:
    """In a child process: make the record's module importable, from ``file`` when its name is not
    found in this package (the parent's module_file)."""
    name = f"{__package__}.{record.module}"
    if name in sys.modules or importlib.util.find_spec(name) is not None:
        return
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise MvmoeError(f"cannot load the {record.label} converter module from {file}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)


def check_options(record: T.ExportTarget, options: dict, split: bool = False) -> None:
    """Only the options the record lists for its (split) runner; one line naming them otherwise."""
    allowed = record.split_runner_options if split else record.runner_options
    unknown = [k for k in options if k not in allowed]
    if unknown:
        what = "split runner" if split else "runner"
        raise MvmoeError(f"the {record.label} {what} takes no option {unknown[0]!r} "
                         f"(it takes {', '.join(allowed) or 'none'})")


def load_runner(record: T.ExportTarget, path: str | Path, threads: int | None = None, *, split: bool = False,
                **options):
    """``path`` opened by the record's module: -> (Runner, None), or (None, why) where the runtime
    cannot run here. ``split``: the split programs' chain (its Runner's ``native`` is the SplitChain)."""
    check_options(record, options, split)
    mod = module_for(record)
    return (mod.load_split_runner if split else mod.load_runner)(Path(path), threads, **options)
