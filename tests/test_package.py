"""The wheel: built with `uv build`, installed into a clean virtual environment, it gives a working
`mvmoe` (models, train, export) and installs exactly two import packages: `mobile_vmoe` and
`converters` (the same names a checkout imports, with no import hook)."""

from __future__ import annotations

import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], cwd: Path, env: dict | None = None, timeout: int = 600) -> str:
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{' '.join(map(str, cmd))}\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    return res.stdout


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("uv") is None, reason="needs uv (the project's installer)")
def test_wheel_installs_into_a_clean_venv_and_runs(tmp_path):
    _run(["uv", "build", "--wheel", "--out-dir", str(tmp_path / "dist"), str(ROOT)], cwd=tmp_path)
    wheel = next((tmp_path / "dist").glob("mvmoe-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"mobile_vmoe", "converters"}, tops
    assert "converters/pipeline.py" in names

    # the locked versions (so the install comes from uv's cache, as `uv sync` left it), then the wheel
    req = tmp_path / "requirements.txt"
    _run(["uv", "export", "--frozen", "--no-hashes", "--no-emit-project", "--no-dev", "-o", str(req)], cwd=ROOT)
    venv = tmp_path / "venv"
    _run(["uv", "venv", "-q", "-p", "3.11", str(venv)], cwd=tmp_path)
    _run(["uv", "pip", "install", "-q", "-p", str(venv / "bin" / "python"), "-r", str(req), str(wheel)], cwd=tmp_path)

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["OMP_NUM_THREADS"] = "1"
    mvmoe = str(venv / "bin" / "mvmoe")
    where = _run([str(venv / "bin" / "python"), "-c", "import converters as c; print(c.__file__)"],
                 cwd=tmp_path, env=env)
    assert str(venv) in where  # the installed copy, not the source tree
    assert "vmoe-12x192-p32" in _run([mvmoe, "models"], cwd=tmp_path, env=env)
    _run([mvmoe, "train", "--data", "synthetic:4:2", "--epochs", "1", "--superclasses", "none", "-q", "--out", "run",
          "--set", "img_size=16", "--set", "depth=2", "--set", "width=32", "--set", "heads=2",
          "--set", "num_experts=2", "--set", "moe_blocks=1"], cwd=tmp_path, env=env)
    _run([mvmoe, "export", "run/model.pt", "--target", "onnx", "--out", "exports"], cwd=tmp_path, env=env)
    assert list((tmp_path / "exports").glob("*.onnx")) and list((tmp_path / "exports").glob("*.json"))
