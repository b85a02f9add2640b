"""Every script in bench/ runs: each is started as `python bench/<script>.py` in a subprocess at tiny
settings (its --quick / --dry / small flags), must exit 0 and print a line it prints when it works.
Nothing is timed; the figures the scripts print mean nothing at these sizes.

The studies whose tiny end-to-end runs already have tests of their own (tests/test_routing_study.py,
tests/test_capacity_study.py) are started here with --help only (that they start as scripts);
``COVERED`` names the test that runs each for real.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import default_run_folder

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"


@dataclass(frozen=True)
class Case:
    script: str
    args: tuple[str, ...]  # "{tmp}" is replaced by the test's temporary folder
    expect: str  # a piece of stdout that only a run that got through prints
    slow: bool = False


TINY_EXPORT = ("--model", "vmoe-6x64-p32", "--img-size", "32", "--rounds", "1", "--inner", "1", "--threads", "1")
SMALL_MOE = ("--set", "depth=3", "width=32", "heads=2", "num_experts=2")  # 3 split programs, small graphs to convert
CASES = [
    Case("bench_export.py", (*TINY_EXPORT, "--runtimes", "eager"), "| eager |"),
    Case("bench_export.py", (*TINY_EXPORT, *SMALL_MOE, "--runtimes", "xnnpack,litert,onnxruntime,litert-int8",
                             "--split"), "int8 split / int8 dense", slow=True),  # every runtime kind and split in one
    # run; XNNPACK int8 (minutes of conversion) is left to tests/test_split.py and tests/test_export.py
    Case("bench_delegation.py", ("--model", "vmoe-6x64-p32", "--layer-norms", "native,decomposed"),
         "| none | decomposed |", slow=True),
    Case("bench_moe.py", ("--model", "vmoe-6x64-p32", "--runs", "2", "--train-runs", "1", "--train-batch", "4",
                          "--threads", "1"), "x dense twin"),
    Case("bench_train.py", ("--batch", "8", "--repeats", "1", "--warmup", "0", "--threads", "1"),
         "grouped / gather throughput"),
    Case("bench_loader.py", ("--classes", "2", "--per-class", "4", "--rounds", "1", "--batches", "1", "--batch", "4",
                             "--size", "32", "--index-n", "100", "--folder", "{tmp}/data"), "| mvmoe cached index |",
         slow=True),
    Case("bench_startup.py", ("--runs", "1",), "mvmoe --help", slow=True),
    Case("gpu_check.py", ("--dry", "--out", "{tmp}/gpu.json", "--parts", "train"), '"finished": true', slow=True),
    Case("graded_samples.py", ("--levels", "0", "1", "--out", "{tmp}/samples.png"), "levels [0.0, 1.0]"),
    Case("options_study.py", ("--quick", "--jobs", "1", "--out", "{tmp}/options"), "| distill |", slow=True),
    Case("upcycle_bench.py", ("--quick", "--seeds", "0", "--procs", "1", "--out", "{tmp}/upcycle"), "upcycled",
         slow=True),
    Case("readme_numbers.py", ("--run", "{tmp}/run", "--root", "{tmp}/docs"),
         "rewrote: README.md, docs/training.md, docs/export.md"),
    # started only; their tiny runs are the tests COVERED names
    *(Case(s, ("--help",), "usage:") for s in ("routing_study.py", "distill_study.py", "study_gpu.py",
                                                         "capacity_study.py", "capacity_gpu.py")),
]
# script -> the test that runs it at tiny settings (in process)
COVERED = {
    "routing_study.py": "tests/test_routing_study.py::test_tiny_study_end_to_end",
    "distill_study.py": "tests/test_routing_study.py::test_tiny_distillation_2x2",
    "study_gpu.py": "tests/test_routing_study.py::test_gpu_script_dry_run_plans_on_cpu",
    "capacity_study.py": "tests/test_capacity_study.py::test_tiny_study_end_to_end",
    "capacity_gpu.py": "tests/test_capacity_study.py::test_gpu_variant_dry_run_plans_on_cpu",
    "study_stats.py": "tests/test_routing_study.py (the statistics by hand; a module with no command line)",
}


def test_every_bench_script_is_run_somewhere():
    scripts = {p.name for p in BENCH.glob("*.py")}
    assert scripts == {c.script for c in CASES} | set(COVERED), "a bench script without a smoke test"
    for script, where in COVERED.items():
        path, _, name = where.partition("::")
        path = path.split(" ")[0]
        assert (ROOT / path).is_file() and (not name or f"def {name}(" in (ROOT / path).read_text()), where


def fake_default_run(tmp: Path) -> None:
    """A finished default run's summaries, and copies of the docs readme_numbers rewrites."""
    default_run_folder(tmp / "run")
    for name in ("README.md", "docs/training.md", "docs/export.md"):
        (tmp / "docs" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / "docs" / name).write_text((ROOT / name).read_text())


@pytest.mark.parametrize("case", [pytest.param(c, id=f"{c.script}-{i}",
                                               marks=[pytest.mark.slow] if c.slow else []) for i, c in enumerate(CASES)])
def test_bench_script_runs_at_tiny_settings(case, tmp_path):
    if case.script == "readme_numbers.py":
        fake_default_run(tmp_path)
    args = [a.replace("{tmp}", str(tmp_path)) for a in case.args]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(BENCH / case.script), *args], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=1800)
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    assert case.expect in r.stdout, r.stdout[-3000:]
