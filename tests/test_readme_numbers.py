"""bench/readme_numbers.py: marked spans in the docs are rewritten from a run's summary.json."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from helpers import default_run_folder
from mobile_vmoe.errors import MvmoeError

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("readme_numbers", ROOT / "bench" / "readme_numbers.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(tmp_path):
    return default_run_folder(tmp_path / "run")


def test_spans_are_rewritten_and_the_rest_is_kept(tmp_path):
    mod = _module()
    vals = mod.values(_run(tmp_path))
    text = "before <!-- numbers:default-run -->96.67 % stale<!-- /numbers --> after; <!-- numbers:default-top1 -->1<!-- /numbers -->"
    new = mod.rewrite(text, vals)
    assert new == ("before <!-- numbers:default-run -->**95.56 %** top-1, top-5 100.00 %, router superclass accuracy "
                   "95.83 %, expert use 180/180 val images per expert. The dense stage's 80.83 % is not a baseline"
                   "<!-- /numbers --> after; <!-- numbers:default-top1 -->95.56 %<!-- /numbers -->")
    assert mod.rewrite(new, vals) == new  # idempotent
    assert "superclasses `0/5`, `1/8` (2 classes each)" in mod.rewrite(
        "<!-- numbers:default-run-training --><!-- /numbers -->", vals)


def test_unknown_span_and_unfinished_run_are_refused(tmp_path):
    mod = _module()
    with pytest.raises(MvmoeError, match="unknown numbers span 'nope'"):
        mod.rewrite("<!-- numbers:nope -->x<!-- /numbers -->", {}, "README.md")
    with pytest.raises(MvmoeError, match="not a finished default run"):
        mod.values(tmp_path)


def test_every_template_has_a_span_in_the_docs():
    mod = _module()
    used = set()
    for name in mod.DOCS:
        used |= {m.group(1) for m in mod.SPAN.finditer((ROOT / name).read_text())}
    assert used == set(mod.TEMPLATES)
