"""Resident memory of an exported artifact, per runtime and loader, each in a fresh process.

    mvmoe profile memory ARTIFACT [--loader mmap|file] [--images N] [--threads N] [--max-tails N]

A child process (``python -m mobile_vmoe.profile.memory SPEC``) imports the runtime, reads
/proc/self/status (the baseline), loads the artifact, reads it again ("load"), runs N batch-1
images (seeded normal noise, one per image, so a per-image MoE routes them to several experts),
reading it after the first image ("first": a per-image MoE has used k experts) and after the
last ("run"). Every figure is in MiB over the baseline:

    rss_mib       VmRSS: resident pages, anonymous and file-backed
    heap_mib      RssAnon: anonymous pages (the heap: a whole-file load, packed weights, activations)
    file_mib      RssFile: file-backed pages (a memory-mapped artifact's pages that were touched)
    peak_rss_mib  VmHWM: the peak of VmRSS since the process started, less the baseline RSS

Loaders: the artifact's record (converters.targets) lists them (``loaders``; none: not measured
here) and names the runtime's module imported before the baseline (``runtime_module``); with
several loaders its runner takes the ``loader`` option, whose meaning each converter module's
``load_runner`` documents (mmap: the runtime maps the file; file: the whole file read into memory).
Split artifacts (``--experts split``) run their chain: the trunk, then the tail each image routes
to, loaded on first use and kept in an LRU of ``max_tails`` (default 1: an app with one tail in
memory); ``tails_loaded`` counts tail loads.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from converters import targets as T
from converters.target_modules import adopt_module, load_runner, module_file

from ..artifact import artifact_meta, measured_meta, read_program_table
from ..errors import MvmoeError
from ..fileio import to_json
from .latency import artifact_record, check_artifact, local_device, warn_threads

STATUS = {"VmRSS": "rss_mib", "RssAnon": "heap_mib", "RssFile": "file_mib", "VmHWM": "peak_rss_mib"}


def read_status(text: str | None = None) -> dict[str, float]:
    """VmRSS, RssAnon, RssFile, VmHWM of /proc/self/status (or of ``text``) in MiB."""
    if text is None:
        try:
            text = Path("/proc/self/status").read_text()
        except OSError:
            raise MvmoeError("profile memory reads /proc/self/status: Linux (or Android) only") from None
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in STATUS:
            out[key] = int(value.split()[0]) / 1024  # kB -> MiB
    missing = [k for k in STATUS if k not in out]
    if missing:
        raise MvmoeError(f"/proc/self/status lacks {', '.join(missing)}")
    return out


def over(now: dict, base: dict) -> dict:
    """MiB over the baseline per output key; the peak is taken over the baseline's RSS."""
    d = {STATUS[k]: round(now[k] - base[k], 2) for k in ("VmRSS", "RssAnon", "RssFile")}
    d["peak_rss_mib"] = round(now["VmHWM"] - base["VmRSS"], 2)
    return d


# ------------------------------------------------------------------------------------ the child
def open_artifact(spec: dict):
    """In the child: -> (run(x) -> outputs, input shape, chain or None), opened by the runner export's
    parity and `profile latency` use, with the loader asked for where the runner takes one."""
    record, path, threads = T.from_dict(spec["record"]), Path(spec["artifact"]), spec["threads"]
    if spec["split"]:
        runner, why = load_runner(record, path, threads, split=True, max_tails=spec["max_tails"],
                                  **loader_option(record, spec["loader"], "split_runner_options"))
        chain = runner.native if runner is not None else None
    else:
        runner, why = load_runner(record, path, threads, **loader_option(record, spec["loader"], "runner_options"))
        chain = None
    if runner is None:
        raise MvmoeError(f"{path.name}: cannot run here: {why}")
    return (chain or runner), runner.input_shape, chain


def loader_option(record: T.ExportTarget, loader: str, options: str) -> dict:
    """{"loader": loader} where the record's runner takes it (a runtime with one loader takes none)."""
    return {"loader": loader} if "loader" in getattr(record, options) else {}


def child(spec: dict) -> dict:
    """Measure in this (fresh) process; -> the status figures over the baseline."""
    import torch  # noqa: F401 - part of the baseline: every runtime here is used next to torch

    import converters.pipeline  # noqa: F401 - the runners' code, also in the baseline
    import converters.split  # noqa: F401 - the split runners' code, also in the baseline

    record = T.from_dict(spec["record"])
    adopt_module(record, spec["module_file"])
    if record.runtime_module:
        importlib.import_module(record.runtime_module)  # the runtime the record names, part of the baseline
    base = read_status()
    run, shape, chain = open_artifact(spec)
    loaded = read_status()
    rng = np.random.default_rng(0)
    after = {"load": over(loaded, base)}
    for i in range(spec["images"]):
        run(rng.standard_normal(shape).astype(np.float32))
        if i == 0:
            after["first"] = over(read_status(), base)
    after["run"] = over(read_status(), base)
    out = {"baseline_mib": round(base["VmRSS"], 2), "input_shape": shape, "after": after}
    if chain is not None:
        out.update(tails_loaded=chain.tail_loads, tails_resident=len(chain.tails), max_tails=chain.max_tails)
    return out


# ------------------------------------------------------------------------------------ the parent
def check_options(path: Path, record: T.ExportTarget, loader: str, images: int, threads: int | None,
                  max_tails: int) -> None:
    if not record.loaders:
        where = f" (it runs only on {T.OS_NAMES.get(record.runs_on, record.runs_on)})" if record.runs_on else ""
        raise MvmoeError(f"{path.name}: profile memory does not measure {record.label} artifacts here{where}; "
                         "measure it on the device")
    if loader not in record.loaders:
        raise MvmoeError(f"--loader {loader}: {record.runtime} loads with {' or '.join(record.loaders)} here")
    if images < 1:
        raise MvmoeError(f"--images {images}: must be >= 1 (the load alone is always measured too: after.load)")
    if threads is not None and threads < 1:
        raise MvmoeError(f"--threads must be >= 1, got {threads}")
    warn_threads(threads)
    if max_tails < 1:
        raise MvmoeError(f"--max-tails {max_tails}: must be >= 1")


def default_loader(record: T.ExportTarget) -> str:
    """The loader ``--loader`` defaults to: mmap where the runtime maps files, else what it supports."""
    loaders = record.loaders or ("mmap",)
    return "mmap" if "mmap" in loaders else loaders[0]


def profile_memory(artifact: str | Path, loader: str | None = None, *, images: int = 20, threads: int | None = None,
                   max_tails: int = 1, verify: bool = True) -> dict:
    """Resident memory of ``artifact`` loaded with ``loader`` (None: ``default_loader`` of its runtime)
    and after ``images`` runs, measured in a fresh process; the memory JSON (docs/formats.md).
    ``verify``: refuse an artifact whose size or sha256 differ from its .json's (mobile_vmoe.artifact.measured_meta)."""
    path = check_artifact(artifact)
    split = read_program_table(path) is not None
    record = artifact_record(path)
    runtime = record.runtime
    loader = loader or default_loader(record)
    check_options(path, record, loader, images, threads, max_tails)
    _, carried = measured_meta(path, verify)
    spec = {"artifact": str(path.resolve()), "record": dataclasses.asdict(record), "module_file": module_file(record),
            "loader": loader, "images": images, "threads": threads, "split": split, "max_tails": max_tails}
    proc = subprocess.run([sys.executable, "-m", "mobile_vmoe.profile.memory", json.dumps(spec)],
                          capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        err = [ln for ln in proc.stderr.strip().splitlines() if ln.strip() and not ln.startswith(("[", "W1", "I0"))]
        why = err[-1][:200] if err else f"exit status {proc.returncode}"
        raise MvmoeError(f"{path.name}: the memory probe failed ({why})")
    got = json.loads(lines[-1])
    if "error" in got:
        raise MvmoeError(got["error"])
    d = {"artifact": path.name, "device": local_device(), "runtime": runtime, "threads": threads, "loader": loader,
         "images": images, **got["after"]["run"], **got}
    if split:
        d["expert_layout"] = "split"
    d.update(carried)
    return d


def main(argv: list[str]) -> int:
    """The child's entry point: one JSON line on stdout ({"error": ...} for an MvmoeError)."""
    try:
        out = child(json.loads(argv[0]))
    except MvmoeError as e:
        out = {"error": str(e)}
    print(to_json(out, nonfinite="null"), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
