"""The export pipeline around the converters: parity data, artifact names and identity, overwrite
protection, demo-app copies, Ctrl-C, early option checks, library noise.

A fake target stands in for ONNX here (it writes a few bytes and "runs" the PyTorch wrapper), so
these tests take seconds; the real converters are exercised in tests/test_export.py.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import signal
import sys
from pathlib import Path

import pytest
import torch

from helpers import DIGITS, tiny_checkpoint
from converters import apps, pipeline
from converters import target_modules
from converters.images import eval_images
from converters import targets as T
from mobile_vmoe.errors import MvmoeError

GONE = {**DIGITS, "name": "gone", "spec": "/nonexistent/imagefolder"}


class FakeTarget:
    """Writes a small file per artifact and runs the exported wrapper itself (exact parity)."""

    PRECISIONS = ("fp32", "fp16", "int8")  # its record in the target table (``fake`` puts it there)

    def __init__(self, during_convert=None):
        self.during_convert = during_convert
        self.converted: list[str] = []

    def convert(self, wrapper, ep, example, path, *, precision, backend=None, calibration=None, metadata=None):
        self.wrapper = wrapper
        self.converted.append(Path(path).name)
        if self.during_convert:
            self.during_convert()
        Path(path).write_bytes(b"fake " + precision.encode())
        return {"kind": "fake", "nodes": 1, "ops": {}}

    def load_runner(self, path, threads=None, **options):
        w = self.wrapper
        return (lambda x: [w(torch.from_numpy(x))[0].detach().numpy()]), None


@pytest.fixture
def fake(monkeypatch):
    """The onnx record of the target table with the fake's precisions, converted by the fake."""
    target = FakeTarget()
    record = dataclasses.replace(T.find("onnx"), precisions=FakeTarget.PRECISIONS)
    monkeypatch.setattr(T, "TARGETS", tuple(record if t.name == "onnx" else t for t in T.TARGETS))
    real = target_modules.module_for
    monkeypatch.setattr(target_modules, "module_for", lambda record: target if record.name == "onnx" else real(record))
    return target


def export(ckpt, out, **kw):
    kw = {"parity_images": 4, "calibration_images": 2, **kw}
    return pipeline.export_checkpoint(ckpt, kw.pop("target", "onnx"), None, kw.pop("precision", "fp32"), out, **kw)


# ----------------------------------------------------------------------------------- parity data
def test_fp32_parity_on_random_pixels_is_said_loudly(fake, tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "gone.pt", GONE)
    lines = []
    [r] = export(ckpt, tmp_path / "out", progress=lines.append)
    assert r.ok, r.error
    assert r.metadata["parity"]["data"] == "random" and r.metadata["parity"]["ran"]
    assert any(line.startswith("warning: parity runs on random pixels") for line in lines)
    from rich.console import Console

    from mobile_vmoe.cli.cmd_export import results_table

    con = Console(record=True, width=200)
    con.print(results_table([r], tmp_path / "out"))
    assert "RANDOM pixels" in con.export_text()


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_lossy_export_without_data_names_parity_data(fake, tmp_path, precision):
    ckpt = tiny_checkpoint(tmp_path / "gone.pt", GONE)
    with pytest.raises(MvmoeError, match="--parity-data PATH|digits|synthetic") as e:
        export(ckpt, tmp_path / "out", precision=precision)
    assert "\n" not in str(e.value) and fake.converted == []


def test_parity_data_replaces_the_missing_dataset(fake, tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "gone.pt", GONE)
    [r] = export(ckpt, tmp_path / "out", precision="int8", parity_data="digits")
    p = r.metadata["parity"]
    assert r.ok and p["data"] == "digits" and p["images_source"].startswith("digits val split")
    assert p["top1_agreement"] == 1.0 and "reference_top1" in p  # digits has the checkpoint's 10 classes: labels used
    with pytest.raises(MvmoeError, match="--parity-data '/nowhere/imgs': cannot use it"):
        export(ckpt, tmp_path / "out2", parity_data="/nowhere/imgs")


def test_parity_data_images_are_fed_with_the_checkpoint_normalisation(tmp_path):
    """digits normalises with its own mean/std; the model expects the checkpoint's (0.5, 0.5 here)."""
    ckpt = torch.load(tiny_checkpoint(tmp_path / "a.pt"), weights_only=True)
    imgs = eval_images(ckpt, count=5, spec="digits")
    assert imgs.data == "digits" and imgs.labels is not None and len(imgs.labels) == 5
    assert torch.allclose(imgs.normalised, (imgs.raw / 255 - 0.5) / 0.5, atol=1e-5)
    assert 0 <= float(imgs.raw.min()) and float(imgs.raw.max()) <= 255


# ------------------------------------------------------------------------- names and identity
def test_dense_dispatch_has_its_own_name_and_the_json_names_the_checkpoint(fake, tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "a.pt")
    out = tmp_path / "out"
    [g] = export(ckpt, out)
    [d] = export(ckpt, out, dispatch="dense")
    assert g.artifact.name == "vmoe-6x64-p32_onnx_fp32.onnx" and d.artifact.name == "vmoe-6x64-p32_onnx_fp32-dense.onnx"
    assert sorted(p.name for p in out.iterdir()) == sorted([g.artifact.name, d.artifact.name,
                                                            "vmoe-6x64-p32_onnx_fp32.json", "vmoe-6x64-p32_onnx_fp32-dense.json"])
    meta = json.loads(d.artifact.with_suffix(".json").read_text())
    import hashlib

    assert meta["dispatch"] == "dense" and meta["checkpoint"] == str(ckpt.resolve())
    assert meta["checkpoint_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert meta["artifact_size"] == len(b"fake fp32")
    assert meta["artifact_sha256"] == hashlib.sha256(b"fake fp32").hexdigest()


def test_another_checkpoint_does_not_overwrite_without_force(fake, tmp_path):
    a, b = tiny_checkpoint(tmp_path / "a.pt", seed=0), tiny_checkpoint(tmp_path / "b.pt", seed=1)
    out = tmp_path / "out"
    export(a, out)
    export(a, out)  # the same checkpoint again: a plain re-export
    with pytest.raises(MvmoeError, match="exported from another checkpoint; use --force"):
        export(b, out)
    assert json.loads((out / "vmoe-6x64-p32_onnx_fp32.json").read_text())["checkpoint"] == str(a.resolve())
    (out / "vmoe-6x64-p32_onnx_fp32.json").unlink()  # an artifact of unknown origin is protected too
    with pytest.raises(MvmoeError, match="unknown checkpoint"):
        export(b, out)
    [r] = export(b, out, force=True)
    assert r.ok and json.loads(r.artifact.with_suffix(".json").read_text())["checkpoint"] == str(b.resolve())


# ------------------------------------------------------------------------------------ demo apps
def _artifact(folder: Path, name: str, target: str, backend=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(b"x")
    (folder / name).with_suffix(".json").write_text(json.dumps({"target": target, "backend": backend}))
    return folder / name


def test_app_copies_only_what_the_app_runs(tmp_path):
    ex = tmp_path / "exports"
    onnx = _artifact(ex, "m_onnx_fp32.onnx", "onnx")
    et_coreml = _artifact(ex, "m_executorch-coreml_fp16.pte", "executorch", "coreml")
    et_xnn = _artifact(ex, "m_executorch-xnnpack_fp32.pte", "executorch", "xnnpack")
    with pytest.raises(MvmoeError, match=r"iOS demo app runs coreml \(\.mlpackage\) artifacts only"):
        apps.copy_to_app(onnx, "ios", root=tmp_path)
    for art in (onnx, et_coreml):
        with pytest.raises(MvmoeError, match="Android demo app runs"):
            apps.copy_to_app(art, "android", root=tmp_path)
    dest = apps.copy_to_app(et_xnn, "android", root=tmp_path)
    assert sorted(p.name for p in dest.iterdir()) == ["m_executorch-xnnpack_fp32.json", "m_executorch-xnnpack_fp32.pte"]


def test_app_folder_is_this_checkout_whatever_the_cwd(tmp_path, monkeypatch):
    repo = Path(apps.__file__).resolve().parents[1]
    monkeypatch.chdir(tmp_path)
    assert apps.project_root() == repo
    monkeypatch.setattr(apps, "project_root", lambda: tmp_path / "checkout")
    art = _artifact(tmp_path / "exports", "m_tflite_fp32.tflite", "tflite")
    assert apps.copy_to_app(art, "android") == tmp_path / "checkout" / T.APP_DIRS["android"]
    assert not (tmp_path / "apps").exists()


def test_cli_app_refuses_a_target_the_app_cannot_run(tmp_path):
    from conftest import mvmoe

    code, _, err = mvmoe("export", tmp_path / "none.pt", "--target", "onnx", "--app", "ios")
    err = err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "runs coreml (.mlpackage) artifacts only" in err[0]


def test_cli_app_copies_what_the_app_runs_and_says_where(fake, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from mobile_vmoe.cli import app

    monkeypatch.setattr(target_modules, "module_for", lambda record: fake)  # tflite through the fake converter
    monkeypatch.setattr(apps, "project_root", lambda: tmp_path / "checkout")
    ckpt = tiny_checkpoint(tmp_path / "a.pt")
    r = CliRunner().invoke(app, ["export", str(ckpt), "--target", "tflite", "--out", str(tmp_path / "out"),
                                 "--parity-images", "4", "--app", "android", "--experts", "fused"])
    assert r.exit_code == 0, r.output
    dest = tmp_path / "checkout" / T.APP_DIRS["android"]
    assert f"copied vmoe-6x64-p32_tflite_fp32.tflite and vmoe-6x64-p32_tflite_fp32.json to {dest}" in r.stderr
    assert sorted(p.name for p in dest.iterdir()) == ["vmoe-6x64-p32_tflite_fp32.json", "vmoe-6x64-p32_tflite_fp32.tflite"]


# ---------------------------------------------------------------------------------- interrupts
def _ctrl_c_swallowed():
    """What coremltools does with Ctrl-C: catches the KeyboardInterrupt and carries on."""
    try:
        os.kill(os.getpid(), signal.SIGINT)
    except KeyboardInterrupt:
        pass


def test_ctrl_c_inside_a_converter_that_swallows_it_stops_the_export(monkeypatch, tmp_path):
    target = FakeTarget(during_convert=_ctrl_c_swallowed)
    monkeypatch.setattr(target_modules, "module_for", lambda record: target)  # every target of "all"
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        pipeline.export_checkpoint(tiny_checkpoint(tmp_path / "a.pt"), "all", None, "fp32", out, parity_images=4,
                                   experts="fused")
    assert len(target.converted) == 1  # the next target never started
    assert list(out.iterdir()) == []  # no artifact, no .json, no temporary folder
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_cli_ctrl_c_is_one_line_and_exit_130(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from mobile_vmoe.cli import app

    target = FakeTarget(during_convert=_ctrl_c_swallowed)
    monkeypatch.setattr(target_modules, "module_for", lambda record: target)
    ckpt = tiny_checkpoint(tmp_path / "a.pt")
    r = CliRunner().invoke(app, ["export", str(ckpt), "--target", "onnx", "--out", str(tmp_path / "out"),
                                 "--parity-images", "4"])
    assert r.exit_code == 130, r.output
    assert r.stderr.strip().splitlines()[-1] == "error: interrupted: export stopped, no partial files left"
    assert list((tmp_path / "out").iterdir()) == []


# ---------------------------------------------------------------------------- early checks
@pytest.mark.parametrize("kw, message", [
    ({"parity_images": 0}, "--parity-images 0: must be at least 1"),
    ({"parity_images": -3}, "--parity-images -3: must be at least 1"),
    ({"fp32_tol": -1e-4}, "--fp32-tol -0.0001: must be >= 0"),
    ({"max_top1_drop": 1.5}, "--max-top1-drop 1.5"),
])
def test_bad_numbers_fail_before_the_checkpoint_is_read(tmp_path, kw, message):
    with pytest.raises(MvmoeError, match=message):
        pipeline.export_checkpoint(tmp_path / "missing.pt", "onnx", None, "fp32", tmp_path / "out", **kw)


def test_out_that_is_a_file_or_cannot_be_written(tmp_path, monkeypatch):
    (tmp_path / "f").write_text("x")
    with pytest.raises(MvmoeError, match="--out .*f is a file, not a folder"):
        pipeline.export_checkpoint(tmp_path / "missing.pt", "onnx", None, "fp32", tmp_path / "f")

    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(pipeline.tempfile, "mkstemp", read_only)
    with pytest.raises(MvmoeError, match=r"cannot write there \(Read-only file system\)"):
        pipeline.export_checkpoint(tmp_path / "missing.pt", "onnx", None, "fp32", tmp_path / "out")


def test_full_filesystem_during_conversion_is_one_line(monkeypatch, tmp_path):
    def full():
        raise OSError(errno.ENOSPC, "No space left on device")

    target = FakeTarget(during_convert=full)
    monkeypatch.setattr(target_modules, "module_for", lambda record: target)
    with pytest.raises(MvmoeError, match="cannot write to .*out: No space left on device"):
        export(tiny_checkpoint(tmp_path / "a.pt"), tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


# ---------------------------------------------------------------------------- library noise
QUIET_SCRIPT = """
import logging, os, sys, warnings
from converters.quiet import loud, quiet
verbose = sys.argv[1] == "verbose"
with quiet(verbose), quiet(verbose, log=sys.argv[2]):  # the pipeline nests them: one per target
    os.write(1, b"cpuinfo: native stdout\\n")
    os.write(2, b"XNNPACK INFO: native stderr\\n")
    print("litert-torch progress", file=sys.stderr)
    logging.getLogger("coremltools").warning("proxy warning")
    warnings.warn("library warning")
    with loud():
        print("ours: converting", file=sys.stderr)
print("ours: done")
"""


@pytest.mark.slow
@pytest.mark.parametrize("verbose", [False, True])
def test_quiet_hides_library_output_but_not_ours(verbose, tmp_path):
    """In a real process (fd 1 and 2 are the terminal's, not a test runner's capture)."""
    import subprocess

    repo = Path(apps.__file__).resolve().parents[1]
    log = tmp_path / "library.log"
    r = subprocess.run([sys.executable, "-c", QUIET_SCRIPT, "verbose" if verbose else "quiet", str(log)], cwd=repo,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "ours: converting" in r.stderr and "ours: done" in r.stdout
    noise = ("native stdout", "native stderr", "litert-torch progress", "proxy warning", "library warning")
    shown = [n for n in noise if n in r.stdout + r.stderr]
    assert shown == (list(noise) if verbose else []), shown
    if not verbose:  # kept for a failed target's error notes
        assert "XNNPACK INFO: native stderr" in log.read_text()


TWO_THREADS_SCRIPT = """
import sys, threading
from converters.quiet import loud, quiet
inside, release, second_in = threading.Event(), threading.Event(), threading.Event()
def first():
    with loud():
        inside.set()
        release.wait(5)
        print("first line", file=sys.stderr)  # written after the other thread tried to enter
def second():
    inside.wait(5)
    with loud():
        second_in.set()
        print("second line", file=sys.stderr)
with quiet(False, log=sys.argv[1]):
    a, b = threading.Thread(target=first), threading.Thread(target=second)
    a.start(); b.start()
    overlapped = second_in.wait(1.0)  # the second block must wait for the first to end
    release.set(); a.join(); b.join()
print("overlapped" if overlapped else "took turns")
"""


@pytest.mark.slow
def test_loud_blocks_of_two_threads_take_turns(tmp_path):
    """The ticker thread and the pipeline both print progress: neither may restore the redirect
    while the other is writing (its line would land in the log)."""
    import subprocess

    repo = Path(apps.__file__).resolve().parents[1]
    log = tmp_path / "library.log"
    r = subprocess.run([sys.executable, "-c", TWO_THREADS_SCRIPT, str(log)], cwd=repo, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "took turns"
    assert "first line" in r.stderr and "second line" in r.stderr and "line" not in log.read_text()


# ---------------------------------------------------------------------------- profile flops
def test_profile_flops_rejects_a_json_copied_beside_another_file(fake, tmp_path):
    from conftest import mvmoe

    [r] = export(tiny_checkpoint(tmp_path / "a.pt"), tmp_path / "out")

    def flops(path):
        return mvmoe("profile", "flops", path, "--json")

    code, out, err = flops(r.artifact)
    d = json.loads(out)
    assert code == 0 and d["macs"] == r.metadata["macs"] and "sha256" in d["counted_from"]
    r.artifact.write_bytes(b"garbage of another size")
    code, _, err = flops(r.artifact)
    err = err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "is not the file vmoe-6x64-p32_onnx_fp32.json was written for" in err[0]
