"""Start-up: what each entry point imports, checked on sys.modules of a fresh process.

`mvmoe --help` and every command's --help load no torch; the package's public names load on first
use; a training loads no export backend. (Times are measured by bench/bench_startup.py, not here.)
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import mobile_vmoe

ROOT = Path(__file__).resolve().parents[1]
EXPORT_BACKENDS = ("executorch", "coremltools", "litert_torch", "ai_edge_litert", "tensorflow", "onnxruntime", "onnx",
                   "onnxscript", "torchao")

# Runs ``mvmoe ARGS`` for each ARGS in argv[1] (JSON) in this one process; after each, prints which
# of the watched modules are loaded. Exits through the console entry point, as a shell call would.
PROBE = """
import json, sys
from mobile_vmoe.cli import main
watch = json.loads(sys.argv[2])
for args in json.loads(sys.argv[1]):
    sys.argv = ["mvmoe", *args]
    try:
        main()
    except SystemExit as e:
        code = e.code or 0
    else:
        code = 0
    print("PROBE " + json.dumps({"args": args, "code": code, "loaded": [m for m in watch if m in sys.modules]}))
"""


def probe(argvs: list[list[str]], watch: tuple[str, ...], timeout: float = 600) -> list[dict]:
    res = subprocess.run([sys.executable, "-c", PROBE, json.dumps(argvs), json.dumps(list(watch))], cwd=ROOT,
                         capture_output=True, text=True, timeout=timeout)
    rows = [json.loads(line[6:]) for line in res.stdout.splitlines() if line.startswith("PROBE ")]
    assert len(rows) == len(argvs), res.stdout[-2000:] + res.stderr[-2000:]
    return rows


def all_commands() -> list[list[str]]:
    """Every command path of the CLI, groups included: [[], ["train"], ["profile"], ["profile", "flops"], ...]."""
    import typer.main

    from mobile_vmoe.cli import app

    out = []

    def walk(cmd, path):
        out.append(path)
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return out


def test_help_of_every_command_imports_no_torch():
    commands = all_commands()
    assert ["train"] in commands and ["export"] in commands and ["profile", "latency"] in commands
    rows = probe([[*c, "--help"] for c in commands], ("torch", "torchvision", "numpy", "converters.pipeline"))
    for row in rows:
        assert row["code"] == 0, row
        assert row["loaded"] == [], f"mvmoe {' '.join(row['args'])} loaded {row['loaded']}"


def test_a_command_that_needs_torch_still_gets_it():
    """The lazy imports happen when the command runs: `mvmoe models` builds models (torch)."""
    [row] = probe([["models", "vit-6x64-p32", "--json"]], ("torch",))
    assert row["code"] == 0 and row["loaded"] == ["torch"], row


@pytest.mark.slow
def test_training_imports_no_export_backend(tmp_path):
    """A tiny two-stage training (dense twin -> superclasses -> MoE) in a fresh process, as a rank
    runs it: none of the export backends or the converters' pipeline is loaded."""
    args = ["train", "--data", "synthetic:4:2", "--epochs", "1", "-q", "--out", str(tmp_path / "run"),
            "--set", "img_size=16", "--set", "depth=2", "--set", "width=32", "--set", "heads=2",
            "--set", "patch_size=8", "--set", "num_experts=2", "--set", "moe_blocks=1"]
    [row] = probe([args], (*EXPORT_BACKENDS, "converters.pipeline", "torch"))
    assert row["code"] == 0, row
    assert (tmp_path / "run" / "summary.json").is_file()
    assert row["loaded"] == ["torch"], f"training loaded {row['loaded']}"


def test_the_package_imports_its_public_names_on_first_use():
    code = ("import sys, mobile_vmoe; before = 'torch' in sys.modules; f = mobile_vmoe.create_model; "
            "print(before, 'torch' in sys.modules, f.__module__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300).stdout
    assert out.split() == ["False", "True", "mobile_vmoe.models.registry"]


def test_the_lazy_table_matches_the_type_checking_imports():
    """The names type checkers (and the import-rules test) see are exactly the lazily served ones,
    each from the module named, and each resolves."""
    tree = ast.parse((ROOT / "mobile_vmoe" / "__init__.py").read_text())
    block = next(n for n in tree.body if isinstance(n, ast.If) and getattr(n.test, "id", "") == "TYPE_CHECKING")
    seen = {a.name: "." + node.module for node in block.body for a in node.names}
    assert seen == mobile_vmoe.LAZY
    for name in mobile_vmoe.LAZY:
        assert getattr(mobile_vmoe, name) is not None and name in dir(mobile_vmoe)
    assert set(mobile_vmoe.__all__) == {*mobile_vmoe.LAZY, "__version__"}
    try:
        mobile_vmoe.no_such_name  # noqa: B018
    except AttributeError as e:
        assert "no_such_name" in str(e)
    else:
        raise AssertionError("an unknown name must raise AttributeError")
