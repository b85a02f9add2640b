"""Nothing wrong reported as ok: non-finite numbers, damaged checkpoints, concurrent runs,
unverified artifacts, high-bit-depth images, degenerate datasets, full or read-only disks."""

import json
import struct
import zipfile

import numpy as np
import pytest
import torch

from conftest import mvmoe
from mobile_vmoe.checkpoint import load_checkpoint, save_checkpoint
from mobile_vmoe.errors import MvmoeError
from mobile_vmoe.fileio import atomic_write_json, to_json
from mobile_vmoe.models.registry import create_model


def _model():
    return create_model("vit-6x64-p32", depth=1, img_size=16, patch_size=8, num_classes=3)


def _save(path, model):
    return save_checkpoint(path, {"model_config": model.cfg, "model": model.state_dict(), "class_names": ["a", "b", "c"]})


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
    from mobile_vmoe.converters import prepare as P

    ref = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    got = np.array([[np.nan, np.nan], [np.nan, np.nan]], dtype=np.float32)
    p = P.parity(ref, got)
    assert p["max_abs_diff"] is None and p["nonfinite"] == {"reference": 0, "artifact": 4}
    for precision in ("fp32", "fp16", "int8"):
        assert "non-finite" in P.check_parity(p, precision, max_top1_drop=1.0)
    inf_ref = P.parity(np.array([[np.inf, 0.0]], dtype=np.float32), np.array([[1.0, 0.0]], dtype=np.float32))
    assert "1 from PyTorch" in P.check_parity(inf_ref, "int8", max_top1_drop=1.0)
    json.loads(to_json(p))  # strict JSON


def test_damaged_checkpoint_is_refused_naming_the_file(tmp_path):
    path = _save(tmp_path / "model.pt", _model())
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
    path = _save(tmp_path / "model.pt", model)  # a valid archive holding a NaN
    with pytest.raises(MvmoeError, match=r"model\.pt: weight model\.head\.weight holds NaN or Inf"):
        load_checkpoint(path)
