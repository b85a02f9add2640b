"""Checkpoints: round trip, atomic writes, and clear errors for files that are not ours."""

import pickle

import pytest
import torch

from mobile_vmoe.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from mobile_vmoe.errors import MvmoeError
from mobile_vmoe.models.registry import create_model


def _ckpt(model, **extra):
    return {"model_config": model.cfg, "model": model.state_dict(), "class_names": ["a", "b", "c"], **extra}


def test_round_trip_prefers_ema(tmp_path):
    model = create_model("vmoe-6x64-p32", img_size=32, patch_size=8, num_classes=3)
    ema = create_model(model.cfg)
    path = save_checkpoint(tmp_path / "model.pt", _ckpt(model, ema=ema.state_dict()))
    loaded, ckpt = model_from_checkpoint(path)
    assert ckpt["class_names"] == ["a", "b", "c"] and loaded.cfg == model.cfg and not loaded.training
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), ema.eval()(x))
    raw, _ = model_from_checkpoint(path, prefer_ema=False)
    torch.testing.assert_close(raw(x), model.eval()(x))


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    model = create_model("vit-6x64-p32", img_size=32, patch_size=8, num_classes=3)
    path = save_checkpoint(tmp_path / "last.pt", _ckpt(model))
    before = path.read_bytes()

    class Boom:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        save_checkpoint(path, _ckpt(model, junk=Boom()))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_missing_truncated_and_directory(tmp_path):
    with pytest.raises(MvmoeError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    model = create_model("vit-6x64-p32", img_size=32, patch_size=8, num_classes=3)
    path = save_checkpoint(tmp_path / "model.pt", _ckpt(model))
    data = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(MvmoeError, match="not a PyTorch checkpoint|not a readable"):
        load_checkpoint(tmp_path / "cut.pt")
    with pytest.raises(MvmoeError, match="is a directory.*model.pt"):
        load_checkpoint(tmp_path)


def test_foreign_files_are_refused_without_running_code(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"format": "mvmoe-checkpoint", "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(MvmoeError, match="not a readable mvmoe checkpoint"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()  # weights_only=True never ran the payload
    torch.save({"state_dict": {}}, tmp_path / "other.pt")  # someone else's checkpoint
    with pytest.raises(MvmoeError, match="not an mvmoe checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    (tmp_path / "plain.pkl").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(MvmoeError, match="not a PyTorch checkpoint"):
        load_checkpoint(tmp_path / "plain.pkl")


def test_weights_that_do_not_fit_the_config(tmp_path):
    model = create_model("vit-6x64-p32", img_size=32, patch_size=8, num_classes=3)
    ckpt = _ckpt(model)
    ckpt["model_config"] = model.cfg.replace(num_classes=4)
    save_checkpoint(tmp_path / "bad.pt", ckpt)
    with pytest.raises(MvmoeError, match="do not fit"):
        model_from_checkpoint(tmp_path / "bad.pt")
