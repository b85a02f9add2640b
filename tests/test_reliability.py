"""Nothing wrong reported as ok: non-finite numbers, damaged checkpoints, concurrent runs,
unverified artifacts, high-bit-depth images, degenerate datasets, full or read-only disks."""

import json
import struct
import zipfile

import numpy as np
import pytest
import torch

from conftest import mvmoe
from helpers import save_tiny_checkpoint
from mobile_vmoe.checkpoint import load_checkpoint
from mobile_vmoe.errors import MvmoeError
from mobile_vmoe.fileio import atomic_write_json, to_json
from mobile_vmoe.models.registry import create_model


def _model():
    return create_model("vit-6x64-p32", depth=1, img_size=16, patch_size=8, num_classes=3)


def _flip_member_bytes(path, member_suffix="data/0"):
    """Flip the first 8 bytes of a tensor's data inside the zip, leaving the archive's CRC stale."""
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if i.filename.endswith(member_suffix))
    raw = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26: info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len
    for i in range(start, start + 8):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))


# ------------------------------------------------------------------------------ non-finite numbers
def test_json_refuses_nan_naming_the_key(tmp_path):
    with pytest.raises(MvmoeError, match=r"parity\.max_abs_diff.*not a finite number"):
        atomic_write_json(tmp_path / "m.json", {"parity": {"max_abs_diff": float("nan")}})
    assert not (tmp_path / "m.json").exists()
    with pytest.raises(MvmoeError, match=r"runs_ms\[1\]"):
        to_json({"runs_ms": [1.0, float("inf")]})
    assert json.loads(to_json({"loss": float("nan"), "x": [float("-inf"), 2.5]}, nonfinite="null")) == \
        {"loss": None, "x": [None, 2.5]}


def test_metrics_log_writes_strict_json(tmp_path):
    from mobile_vmoe.train.metrics import MetricsLog

    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.write({"kind": "step", "step": 1, "loss": float("nan")})
    line = (tmp_path / "metrics.jsonl").read_text()
    assert "NaN" not in line and json.loads(line)["loss"] is None


def test_parity_fails_on_nonfinite_logits():
    from converters.parity import check_parity, parity

    ref = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    got = np.array([[np.nan, np.nan], [np.nan, np.nan]], dtype=np.float32)
    p = parity(ref, got)
    assert p["max_abs_diff"] is None and p["nonfinite"] == {"reference": 0, "artifact": 4}
    for precision in ("fp32", "fp16", "int8"):
        assert "non-finite" in check_parity(p, precision, max_top1_drop=1.0)
    inf_ref = parity(np.array([[np.inf, 0.0]], dtype=np.float32), np.array([[1.0, 0.0]], dtype=np.float32))
    assert "1 from PyTorch" in check_parity(inf_ref, "int8", max_top1_drop=1.0)
    json.loads(to_json(p))  # strict JSON


def test_damaged_checkpoint_is_refused_naming_the_file(tmp_path):
    path = save_tiny_checkpoint(tmp_path / "model.pt", _model(), ["a", "b", "c"])
    load_checkpoint(path)  # intact: loads
    _flip_member_bytes(path)
    with pytest.raises(MvmoeError, match=r"model\.pt is damaged: .*data/0 fails its CRC check"):
        load_checkpoint(path)
    code, _, err = mvmoe("export", path, "--target", "onnx", "--out", tmp_path / "exp")
    assert code == 1 and len(err.strip().splitlines()) == 1 and "model.pt is damaged" in err


def test_nonfinite_weights_are_refused(tmp_path):
    model = _model()
    with torch.no_grad():
        model.head.weight[0, 0] = float("nan")
    path = save_tiny_checkpoint(tmp_path / "model.pt", model, ["a", "b", "c"])  # a valid archive holding a NaN
    with pytest.raises(MvmoeError, match=r"model\.pt: weight model\.head\.weight holds NaN or Inf"):
        load_checkpoint(path)


# ------------------------------------------------------------------------------------ run-folder lock
LOCKER = """
import sys, time, types
pkg = types.ModuleType("mobile_vmoe"); pkg.__path__ = [sys.argv[1]]; sys.modules["mobile_vmoe"] = pkg
from mobile_vmoe import runlock  # without the package's torch imports: starts in a blink
try:
    runlock.acquire(sys.argv[2])
except Exception as e:
    print("refused:", e, flush=True)
    sys.exit(3)
print("locked", flush=True)
if sys.argv[3] == "hold":
    time.sleep(600)
"""
SMALL_RUN = ["--data", "synthetic:4:2", "--superclasses", "none", "--epochs", "1", "-q", "--set", "img_size=16",
             "--set", "depth=2", "--set", "num_experts=2", "--set", "moe_blocks=1"]


def _locker(folder, mode):
    """Another process that locks ``folder`` ("hold": and keeps it; "try": and exits)."""
    import subprocess
    import sys
    from pathlib import Path

    import mobile_vmoe

    return subprocess.Popen([sys.executable, "-c", LOCKER, str(Path(mobile_vmoe.__file__).parent), str(folder), mode],
                            stdout=subprocess.PIPE, text=True)


def _one_line_error(code, err, *needles):
    lines = [line for line in err.strip().splitlines() if line]
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: "), err
    for n in needles:
        assert n in lines[0], lines[0]


def test_second_training_into_a_locked_folder_fails_naming_the_holder(tmp_path):
    from mobile_vmoe import runlock
    from mobile_vmoe.config import ModelConfig, TrainConfig

    run = tmp_path / "run"
    holder = _locker(run, "hold")
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, _, err = mvmoe("train", *SMALL_RUN, "--out", run)
        _one_line_error(code, err, "in use by another training", f"pid {holder.pid} on ")
        code, _, err = mvmoe("train", "--data", _two_class_tree(tmp_path / "tree"), "--model", "vit-6x64-p32",
                             "--set", "img_size=16", "--set", "batch_size=2",
                             "--epochs", "1", "-q", "--out", run)
        _one_line_error(code, err, "in use by another training", f"pid {holder.pid} on ")
        assert sorted(p.name for p in run.iterdir()) == ["run.lock"]  # refused before writing anything
        cfg = ModelConfig(name="t", img_size=16, patch_size=4, num_classes=4, depth=1, width=16, heads=2)
        (run / "run.json").write_text(json.dumps({"superclasses": "none", "data": "synthetic:4:2",
                                                  "train_config": TrainConfig(model=cfg, batch_size=16).to_dict()}))
        code, _, err = mvmoe("train", "--resume", "--out", run)
        _one_line_error(code, err, "in use by another training", f"pid {holder.pid} on ")
    finally:
        holder.kill()  # SIGKILL: no cleanup runs; the kernel drops the flock
        holder.wait()
    fd = runlock.acquire(run)  # the stale lock is taken over
    assert json.loads((run / "run.lock").read_text())["pid"] == __import__("os").getpid()
    runlock.release(fd)
    assert (run / "run.lock").read_text() == ""


def _two_class_tree(root, classes=("ant", "bee")):
    from PIL import Image

    for split in ("train", "val"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (16, 16), (i * 90, 0, 0)).save(root / split / c / f"{i}.png")
    return root


def test_a_cached_index_of_another_dataset_is_not_used(tmp_path):
    from mobile_vmoe.data import build_data

    cache = tmp_path / "run" / "data_index.npz"
    a = build_data(str(_two_class_tree(tmp_path / "a")), 16, index_cache=cache)
    b = build_data(str(_two_class_tree(tmp_path / "b", ("cat", "dog"))), 16, index_cache=cache)
    assert a.class_names == ["ant", "bee"] and b.class_names == ["cat", "dog"]
    assert str(tmp_path / "b") in b.val.index.path(0)


def test_training_holds_the_lock_for_its_whole_run(tmp_path, monkeypatch):
    from mobile_vmoe.train import run as R

    seen = {}

    def stages(tcfg, bundle, out, superclasses, info, *, resume, quiet):
        p = _locker(out, "try")  # another process, while the stages run
        seen["during"] = p.communicate()[0]
        return {"top1": 0.0}

    monkeypatch.setattr(R, "run_stages", stages)
    tcfg, bundle = R.resolve("vit-6x64-p32", "synthetic:4:2", {"img_size": 16, "depth": 1}, epochs=1)
    R.train(tcfg, bundle, tmp_path / "run", superclasses="none")
    assert "refused" in seen["during"] and "in use by another training" in seen["during"]
    p = _locker(tmp_path / "run", "try")
    assert p.communicate()[0].strip() == "locked"  # released when train() returned
    seen.clear()
    R.resume(tmp_path / "run")
    assert "in use by another training" in seen["during"]


# ------------------------------------------------------------------------------------- full disk
class _FullDisk:
    """A file that takes ``budget`` bytes, then fails every write with ENOSPC (a filling disk)."""

    def __init__(self, f, budget):
        self.f, self.budget = f, budget

    def write(self, data):
        import errno

        n = len(memoryview(data).cast("B"))
        if n > self.budget:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.budget -= n
        return self.f.write(data)

    def __getattr__(self, name):  # flush, fileno, close
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def test_full_disk_while_training_is_one_line_and_keeps_last_pt(tmp_path, monkeypatch):
    import os

    from mobile_vmoe import fileio

    run = tmp_path / "run"
    code, _, err = mvmoe("train", *SMALL_RUN, "--set", "stop_after_steps=1", "--out", run)
    assert code == 0, err
    before = (run / "last.pt").read_bytes()
    real = os.fdopen
    monkeypatch.setattr(fileio.os, "fdopen", lambda fd, mode: _FullDisk(real(fd, mode), 1000))
    code, _, err = mvmoe("train", "--resume", "--out", run)
    _one_line_error(code, err, "cannot write", "No space left on device")
    assert (run / "last.pt").read_bytes() == before  # the previous checkpoint is intact
    load_checkpoint(run / "last.pt")
    assert not [p.name for p in run.rglob("*.tmp")]


def test_metrics_log_on_an_unwritable_path_is_one_line(tmp_path):
    from mobile_vmoe.train.metrics import MetricsLog

    (tmp_path / "afile").write_text("x")
    with pytest.raises(MvmoeError, match=r"cannot write .*afile/metrics.jsonl"):
        MetricsLog(tmp_path / "afile" / "metrics.jsonl").write({"kind": "step"})


def _report_run(tmp_path):
    from helpers import run_summary

    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps(run_summary()))
    return run


def test_report_out_that_is_a_file_or_unwritable_is_one_line(tmp_path, monkeypatch):
    import errno
    import os

    run = _report_run(tmp_path)
    (tmp_path / "afile").write_text("x")
    code, _, err = mvmoe("report", run, "--out", tmp_path / "afile", "--no-published")
    _one_line_error(code, err, "afile is a file, not a folder")
    code, _, err = mvmoe("report", run, "--out", tmp_path / "afile" / "rep", "--no-published")
    _one_line_error(code, err, "cannot write there", "Not a directory")
    (tmp_path / "rep" / "table.md").mkdir(parents=True)  # a folder where a file goes
    code, _, err = mvmoe("report", run, "--out", tmp_path / "rep", "--no-published")
    _one_line_error(code, err, "cannot write", "table.md")
    if os.geteuid() != 0:  # root writes into read-only folders; the monkeypatch below covers it
        (tmp_path / "ro").mkdir(mode=0o500)
        code, _, err = mvmoe("report", run, "--out", tmp_path / "ro", "--no-published")
        _one_line_error(code, err, "cannot write there", "Permission denied")

    def read_only(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr("mobile_vmoe.fileio.tempfile.mkstemp", read_only)
    code, _, err = mvmoe("report", run, "--out", tmp_path / "ro2", "--no-published")
    _one_line_error(code, err, "ro2: cannot write there", "Permission denied")


def test_report_on_a_full_disk_is_one_line_and_keeps_old_files(tmp_path, monkeypatch):
    import os

    from mobile_vmoe import fileio

    run, out = _report_run(tmp_path), tmp_path / "rep"
    assert mvmoe("report", run, "--out", out, "--no-published")[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real = os.fdopen
    monkeypatch.setattr(fileio.os, "fdopen", lambda fd, mode: _FullDisk(real(fd, mode), 2000))  # fails on a .png
    code, _, err = mvmoe("report", run, "--out", out, "--no-published")
    _one_line_error(code, err, "cannot write", ".png", "No space left on device")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


# ------------------------------------------------------------------------- artifacts checked when measured
@pytest.fixture
def onnx_artifact(tmp_path):
    from helpers import TinyConvNet, write_artifact_meta, write_tiny_onnx

    path = tmp_path / "tiny_onnx_fp32.onnx"
    write_tiny_onnx(TinyConvNet().eval(), path)
    return write_artifact_meta(path, model="tiny", target="onnx", checkpoint="model.pt", checkpoint_sha256="ab" * 32,
                               model_config={}, input={"shape": [1, 3, 16, 16], "dtype": "float32"})


def _fake_memory_child(monkeypatch):
    """The memory probe's child process, answered here (its real run imports torch: slow)."""
    import subprocess

    from mobile_vmoe.profile import memory

    figures = {"rss_mib": 1.0, "heap_mib": 0.5, "file_mib": 0.5, "peak_rss_mib": 1.0}
    line = json.dumps({"baseline_mib": 100.0, "after": {"load": figures, "run": figures}})
    monkeypatch.setattr(memory.subprocess, "run",
                        lambda *a, **k: subprocess.CompletedProcess(a, 0, stdout=line + "\n", stderr=""))


def test_profile_latency_and_memory_verify_the_artifact(onnx_artifact, monkeypatch):
    _fake_memory_child(monkeypatch)
    code, out, err = mvmoe("profile", "latency", onnx_artifact, "--runs", "2", "--warmup", "0", "--json")
    d = json.loads(out.strip().splitlines()[-1])
    assert code == 0 and d["verified"] is True and d["checkpoint_sha256"] == "ab" * 32
    code, out, err = mvmoe("profile", "memory", onnx_artifact, "--loader", "file", "--images", "1", "--json")
    assert code == 0 and json.loads(out)["verified"] is True
    raw = bytearray(onnx_artifact.read_bytes())
    raw[-1] ^= 0x01  # one bit changed after export, same size
    onnx_artifact.write_bytes(bytes(raw))
    for cmd in (["latency", "--runs", "2"], ["memory", "--loader", "file"], ["flops"]):
        code, _, err = mvmoe("profile", cmd[0], onnx_artifact, *cmd[1:])
        _one_line_error(code, err, "tiny_onnx_fp32.onnx is not the file tiny_onnx_fp32.json was written for")


def test_no_verify_measures_and_says_so(onnx_artifact, monkeypatch):
    _fake_memory_child(monkeypatch)
    onnx_artifact.with_suffix(".json").unlink()
    code, _, err = mvmoe("profile", "latency", onnx_artifact, "--runs", "2")
    _one_line_error(code, err, "tiny_onnx_fp32.json not found", "--no-verify")
    code, _, err = mvmoe("profile", "memory", onnx_artifact, "--loader", "file")
    _one_line_error(code, err, "tiny_onnx_fp32.json not found", "--no-verify")
    code, out, _ = mvmoe("profile", "latency", onnx_artifact, "--runs", "2", "--warmup", "0", "--no-verify")
    assert code == 0 and "not verified" in out
    code, out, _ = mvmoe("profile", "memory", onnx_artifact, "--loader", "file", "--no-verify", "--json")
    assert code == 0 and json.loads(out)["verified"] is False


def test_unverified_measurement_is_not_tied_to_the_checkpoint(onnx_artifact):
    from mobile_vmoe.profile.latency import profile_latency

    meta = onnx_artifact.with_suffix(".json")
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "artifact_sha256": "0" * 64}))  # describes another file
    d = profile_latency(onnx_artifact, warmup=0, runs=1, verify=False)
    assert d["verified"] is False and d["model"] == "tiny" and "checkpoint_sha256" not in d


# ------------------------------------------------------------------------------ high-bit-depth images
SIXTEEN = np.array([[0, 257, 1000], [32896, 65280, 65535]], dtype=np.uint16)
# round(v / 257): 1000 / 257 = 3.89 -> 4, 32896 = 128 * 257 -> 128, 65280 / 257 = 254.0 -> 254
EIGHT = np.array([[0, 1, 4], [128, 254, 255]], dtype=np.uint8)


def _decoded(tmp_path, save, values):
    """8-bit values the data pipeline delivers for uniform 16 x 16 images of the 16-bit ``values``
    (``save(path, v)`` writes one): an ImageFolder tree with the first half in class c0, the rest
    in c1, read back from the val split and un-normalised -> {label: sorted [(r, g, b)]}."""
    from mobile_vmoe.data import build_data

    half = len(values) // 2
    for split in ("train", "val"):
        for i, v in enumerate(values):
            path = tmp_path / "tree" / split / f"c{int(i >= half)}" / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            save(path, v)
    bundle = build_data(str(tmp_path / "tree"), 16, augment="none")
    mean, std = torch.tensor(bundle.mean).view(3, 1, 1), torch.tensor(bundle.std).view(3, 1, 1)
    out = {0: [], 1: []}
    for i in range(len(bundle.val)):
        x, label = bundle.val[i]  # (3, 16, 16) normalised
        pixels = torch.round((x * std + mean) * 255)  # back to 0..255
        assert bool((pixels == pixels[:, :1, :1]).all())  # a uniform image stays uniform
        out[label].append(tuple(int(c) for c in pixels[:, 0, 0]))
    return {k: sorted(v) for k, v in out.items()}


def test_sixteen_bit_gray_png_is_scaled_not_clipped(tmp_path):
    from PIL import Image

    def save(path, v):
        Image.fromarray(np.full((16, 16), v, dtype=np.uint16)).save(path)  # a 16-bit grayscale PNG
        assert Image.open(path).mode.startswith("I")

    got = _decoded(tmp_path, save, SIXTEEN.flatten().tolist())
    assert got == {0: [(0, 0, 0), (1, 1, 1), (4, 4, 4)], 1: [(128, 128, 128), (254, 254, 254), (255, 255, 255)]}


def _png_rgb16(path, pixels):
    """A 16-bit RGB PNG written by hand (Pillow writes none): pixels (H, W, 3) uint16."""
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    h, w, _ = pixels.shape
    rows = b"".join(b"\0" + pixels[y].astype(">u2").tobytes() for y in range(h))  # filter 0 per row
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)  # bit depth 16, colour type 2 (RGB)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_sixteen_bit_rgb_png_keeps_its_range(tmp_path):
    def save(path, v):  # red v, green 65535 - v, blue 32896 (= 128 x 257)
        _png_rgb16(path, np.broadcast_to(np.array([v, 65535 - v, 32896], dtype=np.uint16), (16, 16, 3)))

    got = _decoded(tmp_path, save, SIXTEEN.flatten().tolist())
    expected = {0: [(0, 255, 128), (1, 254, 128), (4, 251, 128)], 1: [(128, 127, 128), (254, 1, 128), (255, 0, 128)]}
    # Pillow keeps the high byte (v >> 8): 1000 -> 3 where v / 257 rounds to 4; never more than 1 apart
    for label in (0, 1):
        assert np.abs(np.array(got[label]) - np.array(expected[label])).max() <= 1, got


def test_other_high_bit_depth_modes():
    from PIL import Image

    from mobile_vmoe.data.decode import to_rgb8

    big_endian = Image.frombytes("I;16B", (3, 2), SIXTEEN.astype(">u2").tobytes())
    np.testing.assert_array_equal(np.asarray(to_rgb8(big_endian))[..., 1], EIGHT)
    as_int32 = Image.fromarray(SIXTEEN.astype(np.int32))  # mode I
    np.testing.assert_array_equal(np.asarray(to_rgb8(as_int32))[..., 2], EIGHT)
    unit_float = Image.fromarray(np.array([[0.0, 0.5, 1.0, np.nan]], dtype=np.float32))  # mode F in [0, 1]
    np.testing.assert_array_equal(np.asarray(to_rgb8(unit_float))[0, :, 0], [0, 128, 255, 0])  # 127.5 rounds to 128
    wide_float = Image.fromarray(np.array([[-3.0, 100.4, 300.0]], dtype=np.float32))  # mode F beyond 1
    np.testing.assert_array_equal(np.asarray(to_rgb8(wide_float))[0, :, 0], [0, 100, 255])
    rgba = Image.new("RGBA", (1, 1), (10, 20, 30, 40))
    assert to_rgb8(rgba).getpixel((0, 0)) == (10, 20, 30)


# ------------------------------------------------------------------------------- degenerate datasets
def test_one_class_dataset_is_refused(tmp_path):
    from PIL import Image

    for split, n in (("train", 4), ("val", 2)):
        (tmp_path / "one" / split / "cat").mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (16, 16), (i * 40, 0, 0)).save(tmp_path / "one" / split / "cat" / f"{i}.png")
    code, _, err = mvmoe("train", "--data", tmp_path / "one", "--model", "vit-6x64-p32", "--set", "img_size=16",
                         "--set", "batch_size=2", "--epochs", "1", "-q", "--out", tmp_path / "run")
    _one_line_error(code, err, "one has 1 class (cat): a classifier needs at least 2")
    assert not (tmp_path / "run" / "run.json").exists()  # refused before the run began


class _FixedLogits(torch.nn.Module):
    """A 'model' whose logits are given: row i for image i."""

    def __init__(self, logits):
        super().__init__()
        from types import SimpleNamespace

        self.logits = logits
        self.cfg = SimpleNamespace(num_classes=logits.shape[1], is_moe=False)

    def forward_with_routing(self, images):
        from types import SimpleNamespace

        return SimpleNamespace(logits=self.logits[images[:, 0, 0, 0].long()])


def test_top5_is_na_with_five_classes_or_fewer():
    from mobile_vmoe.train.evaluate import evaluate

    images = torch.arange(2.0).view(2, 1, 1, 1)  # image i carries its index
    six = torch.tensor([[6.0, 5, 4, 3, 2, 1], [6.0, 5, 4, 3, 2, 1]])  # ranking 0 > 1 > ... > 5
    m = evaluate(_FixedLogits(six), [(images, torch.tensor([1, 5]))])
    # image 0: label 1 is second (top-5 hit, top-1 miss); image 1: label 5 is last (both miss)
    assert (m["top1"], m["top5"]) == (0.0, 50.0)
    m = evaluate(_FixedLogits(six[:, :3]), [(images, torch.tensor([0, 2]))])
    assert m["top1"] == 50.0 and m["top5"] is None
    m = evaluate(_FixedLogits(six[:, :5]), [(images, torch.tensor([0, 4]))])
    assert m["top5"] is None  # 5 classes: every label is in the top 5


def test_console_says_top5_na(capsys):
    from mobile_vmoe.cli.cmd_train import print_summary

    print_summary({"model": "m", "dataset": "d", "top1": 75.0, "top5": None, "macs": 1e6, "active_params": 1e5,
                   "params": 2e5, "images_per_sec": 10.0, "checkpoint": "runs/x/model.pt"})
    assert "top-1 75.00%, top-5 n/a" in capsys.readouterr().out
