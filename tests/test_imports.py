"""The import rules of docs/architecture.md ("What may import what"), checked on the source: every
import in mobile_vmoe/ and converters/ (at module top or inside a function) goes from a layer to
one it may use, the layers form no cycle, and function-level imports are only of the optional heavy
backends (or say why with a ``noqa`` comment). The CLI is the other way round: its modules import
at the top only what ``mvmoe --help`` needs (the standard library, typer, the base layer and the
target table), and each command imports the rest inside its body when it runs."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Module name prefix -> layer; the longest matching prefix wins.
LAYER_OF = {
    "mobile_vmoe": "api",  # the package's own __init__: the public names
    "mobile_vmoe.errors": "base", "mobile_vmoe.fileio": "base", "mobile_vmoe.config": "base",
    "mobile_vmoe.artifact_name": "base", "mobile_vmoe.provenance": "base", "mobile_vmoe.runlock": "base",
    "mobile_vmoe.artifact": "base",
    "mobile_vmoe.models": "models",
    "mobile_vmoe.data": "data",
    "mobile_vmoe.checkpoint": "checkpoint",
    "mobile_vmoe.train": "train",
    "converters.targets": "targets",
    "converters": "converters",
    "mobile_vmoe.profile": "profile",
    "mobile_vmoe.cli": "cli",
}
# Layer -> the layers it may import (besides itself).
MAY_IMPORT = {
    "base": {"targets"},  # provenance lists the versions of the packages the target table names
    "targets": set(),
    "models": {"base"},
    "data": {"base"},
    "api": {"base", "models"},
    "checkpoint": {"base", "models", "data"},
    "train": {"base", "models", "data", "checkpoint"},
    "converters": {"base", "models", "data", "checkpoint", "targets"},
    "profile": {"base", "models", "data", "checkpoint", "targets", "converters"},
    "cli": {"base", "models", "data", "checkpoint", "train", "targets", "converters", "profile", "api"},
}
# Imported inside functions only: optional or heavy backends, and platform modules.
LAZY = {"executorch", "coremltools", "litert_torch", "ai_edge_litert", "onnxruntime", "onnx", "onnxscript",
        "torchao", "nvidia", "matplotlib", "adbutils", "sklearn", "scipy", "tensorflow", "fcntl", "msvcrt"}
# Layers whose modules import lazily: at the top only these project layers and these outside
# packages (besides the standard library); anything may be imported inside their functions.
LAZY_LAYERS = {"cli": {"base", "targets", "cli"}}
LIGHT_PACKAGES = {"typer", "click"}
# Modules that import by a computed name (importlib / __import__), each with its reason: an import
# the AST cannot follow is an import the layer check cannot see.
DYNAMIC_IMPORTS = {
    "mobile_vmoe": "PEP 562: the public names' submodules on first use (the same imports stand under TYPE_CHECKING)",
    "mobile_vmoe.cli": "registers every cmd_* module of the package (each a cli module, checked here)",
    "converters.target_modules": "a target's converter module by its record's name: the table imports no converter",
    "mobile_vmoe.profile.memory": "the runtime module a record names, imported for the memory baseline",
}
NOQA = re.compile(r"#\s*noqa(?::\s*[A-Z]+[0-9]+(?:\s*,\s*[A-Z]+[0-9]+)*)?(?P<rest>.*)$")


def layer(module: str) -> str | None:
    """"mobile_vmoe.train.loop" -> "train"; None for modules outside the project."""
    best = max((p for p in LAYER_OF if module == p or module.startswith(p + ".")), key=len, default=None)
    return LAYER_OF[best] if best else None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(module: str, source: str, is_package: bool = False) -> list[tuple[str, int, bool, str]]:
    """(imported module, line, inside a function, the line's text) for every import in ``source``."""
    lines = source.splitlines()
    package = module if is_package else module.rpartition(".")[0]
    out = []

    def visit(node, in_func):
        for child in ast.iter_child_nodes(node):
            inner = in_func or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                out.extend((a.name, child.lineno, in_func, lines[child.lineno - 1]) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    up = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    base = ".".join(up + ([base] if base else []))
                names = [f"{base}.{a.name}" if layer(f"{base}.{a.name}") != layer(base) else base for a in child.names]
                out.extend((n, child.lineno, in_func, lines[child.lineno - 1]) for n in dict.fromkeys(names))
            visit(child, inner)

    visit(ast.parse(source), False)
    return out


def check(module: str, source: str, is_package: bool = False) -> list[str]:
    """The rule breaks in one module's source, one line each."""
    own = layer(module)
    bad = []
    for name, line, in_func, text in imports(module, source, is_package):
        other = layer(name)
        if other is not None and other != own and other not in MAY_IMPORT[own]:
            bad.append(f"{module}:{line}: {own} may not import {other} ({name})")
        if own in LAZY_LAYERS:
            if not in_func and not light_at_top(name, LAZY_LAYERS[own]):
                bad.append(f"{module}:{line}: {name} is imported at the top of a {own} module (import it in the "
                           "command that uses it: `mvmoe --help` must not load it)")
        elif in_func and name.split(".")[0] not in LAZY and "noqa" not in text:
            bad.append(f"{module}:{line}: {name} is imported inside a function (not an optional backend)")
    return bad


def dynamic_imports(module: str, source: str) -> list[str]:
    """importlib.import_module / importlib.util / __import__ in ``source``, unless DYNAMIC_IMPORTS
    gives the module a reason."""
    if module in DYNAMIC_IMPORTS:
        return []
    bad = []
    for node in ast.walk(ast.parse(source)):
        name = None
        if isinstance(node, ast.Name) and node.id == "__import__":
            name = "__import__"
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "importlib" \
                and node.attr in ("import_module", "util", "__import__"):
            name = f"importlib.{node.attr}"
        if name:
            bad.append(f"{module}:{node.lineno}: {name} imports by a computed name (add the module to "
                       "DYNAMIC_IMPORTS with its reason, or import it by name)")
    return bad


def bare_noqa(module: str, source: str) -> list[str]:
    """``# noqa`` comments without a reason: ``# noqa: X123 - why`` (or ``# noqa: X123  why``)."""
    bad = []
    for i, line in enumerate(source.splitlines(), 1):
        m = NOQA.search(line)
        if m and not re.match(r"\s*(?:[-–:]\s*)?\w", m.group("rest")):
            bad.append(f"{module}:{i}: a noqa without a reason (write `# noqa: CODE - why`)")
    return bad


def light_at_top(name: str, layers: set[str]) -> bool:
    """May a lazily importing layer import ``name`` at module top? Its allowed project layers, the
    standard library and LIGHT_PACKAGES."""
    other = layer(name)
    if other is not None:
        return other in layers
    top = name.split(".")[0]
    return top in sys.stdlib_module_names or top in LIGHT_PACKAGES or top == "__future__"


def sources():
    for top in ("mobile_vmoe", "converters"):
        for path in sorted((ROOT / top).rglob("*.py")):
            yield module_name(path), path.read_text(), path.name == "__init__.py"


def test_the_layers_form_no_cycle():
    done: set[str] = set()
    while len(done) < len(MAY_IMPORT):
        ready = {k for k, v in MAY_IMPORT.items() if k not in done and v <= done}
        assert ready, f"a cycle among {sorted(set(MAY_IMPORT) - done)}"
        done |= ready


def test_every_module_has_a_layer():
    assert [m for m, _, _ in sources() if layer(m) is None] == []


def test_the_project_keeps_its_import_rules():
    bad = [b for m, src, pkg in sources() for b in check(m, src, pkg)]
    assert bad == [], "\n".join(bad)


def test_imports_by_computed_name_and_noqa_comments_say_why():
    bad = [b for m, src, _ in sources() for b in (*dynamic_imports(m, src), *bare_noqa(m, src))]
    assert bad == [], "\n".join(bad)
    assert all(m in {name for name, _, _ in sources()} for m in DYNAMIC_IMPORTS)  # no stale reason


@pytest.mark.parametrize("source, message", [
    ("import importlib\nm = importlib.import_module('converters.tflite')\n", "importlib.import_module imports"),
    ("m = __import__('converters.tflite')\n", "__import__ imports"),
    ("import importlib.util\nspec = importlib.util.find_spec('x')\n", "importlib.util imports"),
    ("import os  # noqa\n", "a noqa without a reason"),
    ("import os  # noqa: F401\n", "a noqa without a reason"),
])
def test_a_computed_import_or_a_bare_noqa_is_caught(source, message):
    bad = [*dynamic_imports("converters.pipeline", source), *bare_noqa("converters.pipeline", source)]
    assert any(message in b for b in bad), bad


def test_reasoned_noqa_and_importlib_metadata_pass():
    src = ("from importlib import metadata\nimport importlib.metadata as md\nv = md.version('torch')\n"
           "import os  # noqa: F401 - re-exported\nimport sys  # noqa: F401  the baseline\n")
    assert dynamic_imports("converters.pipeline", src) == [] and bare_noqa("converters.pipeline", src) == []


def test_the_base_layer_loads_no_torch():
    """``import mobile_vmoe.errors`` (and the rest of the base layer, with the target table) in a
    fresh process leaves torch unloaded: the package __init__ serves its names lazily."""
    code = ("import sys, mobile_vmoe.errors, mobile_vmoe.provenance, mobile_vmoe.artifact_name, converters.targets; "
            "print(sorted(m for m in ('torch', 'numpy', 'converters.target_modules') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.split() == ["[]"], out


@pytest.mark.parametrize("module, source, message", [
    ("mobile_vmoe.models.vmoe", "from converters import pipeline\n", "models may not import converters"),
    ("mobile_vmoe.models.vmoe", "from ..train import loop\n", "models may not import train"),
    ("converters.pipeline", "from mobile_vmoe.profile import latency\n", "converters may not import profile"),
    ("converters.targets", "from . import prepare\n", "targets may not import converters"),
    ("mobile_vmoe.train.loop", "def f():\n    import json\n", "json is imported inside a function"),
    ("mobile_vmoe.cli.cmd_train", "import torch\n", "torch is imported at the top of a cli module"),
    ("mobile_vmoe.cli.cmd_train", "from ..train import train\n", "mobile_vmoe.train is imported at the top"),
    ("mobile_vmoe.cli.cmd_export", "from converters.pipeline import plan\n", "converters.pipeline is imported at the top"),
    ("mobile_vmoe.cli.cmd_models", "from mobile_vmoe import create_model\n", "mobile_vmoe is imported at the top"),
    ("mobile_vmoe.cli.cmd_models", "from rich.table import Table\n", "rich.table is imported at the top"),
    ("mobile_vmoe.cli.cmd_data", "from ..data.imagenet_val import sort_val\n", "mobile_vmoe.data.imagenet_val is imported at the top"),
])
def test_a_forbidden_import_is_caught(module, source, message):
    """The checker itself: each of these added to the project would fail the test above."""
    assert any(message in b for b in check(module, source)), check(module, source)


def test_lazy_backends_and_said_reasons_may_stay_in_functions():
    src = "def f():\n    import coremltools as ct\n    import torch  # noqa: F401 - part of the baseline\n"
    assert check("converters.coreml", src) == []


def test_cli_commands_import_in_their_bodies():
    """The CLI's top may hold the standard library, typer, the base layer and the target table; a
    command body imports torch, the trainer or the converters when it runs."""
    src = ("from __future__ import annotations\nimport os\nfrom pathlib import Path\nimport typer\n"
           "from converters.targets import TARGET_NAMES\nfrom ..errors import MvmoeError\nfrom . import app\n"
           "def cmd():\n    import torch\n    from ..train import train\n    from converters.pipeline import plan\n")
    assert check("mobile_vmoe.cli.cmd_train", src) == []
