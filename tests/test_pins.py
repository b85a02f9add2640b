"""Pinned inputs (mobile_vmoe.pins): a run refuses, in one line naming the file, to continue on a
superclasses file, dense checkpoint, data index or run.json settings that changed behind its back;
the resumable keys stay changeable. And class folders with subfolders, indexed as ImageFolder does."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import mvmoe
from helpers import one_line_error, write_imagefolder
from mobile_vmoe.train import pins
from mobile_vmoe.data.index import FolderIndex, save_indexes

TINY = ["--set", "img_size=16", "--set", "depth=2", "--set", "width=32", "--set", "heads=2",
        "--set", "batch_size=32"]


# ----------------------------------------------------------------------------- digests by hand
def test_settings_digest_ignores_resumable_keys_provenance_and_pins():
    run = {"train_config": {"epochs": 6, "lr": 1e-3, "workers": 2, "stop_after_steps": 0, "model": {"depth": 2}},
           "data": "digits", "superclasses": "auto", "provenance": {"host": "a"}, "lr": {"effective": 1e-3}}
    d = pins.settings_digest(run, ("workers",))
    same = json.loads(json.dumps(run))
    same["train_config"]["workers"] = 8
    same["train_config"]["stop_after_steps"] = 3
    same["provenance"] = {"host": "b"}
    same["pins"] = {"settings": {"file": "run.json", "sha256": d}}
    assert pins.settings_digest(same, ("workers",)) == d
    for key, value in (("epochs", 3), ("lr", 5.0), ("model", {"depth": 3})):
        edited = json.loads(json.dumps(run))
        edited["train_config"][key] = value
        assert pins.settings_digest(edited, ("workers",)) != d, key
    edited = dict(run, superclasses="none")
    assert pins.settings_digest(edited, ("workers",)) != d
    # key order does not matter (canonical JSON)
    assert pins.settings_digest(dict(reversed(list(run.items()))), ("workers",)) == d


def test_index_digest_is_the_content_not_the_folder_mtimes(tmp_path):
    def index(files, labels, mtime):
        return {"train": FolderIndex("/data/train", ["a", "b"], np.array(files, dtype=np.bytes_),
                                     np.array(labels, dtype=np.int32), {"": mtime})}

    save_indexes(tmp_path / "one.npz", index([b"a/0.png", b"b/1.png"], [0, 1], 1))
    save_indexes(tmp_path / "two.npz", index([b"a/0.png", b"b/1.png"], [0, 1], 999))  # touched, same files
    save_indexes(tmp_path / "three.npz", index([b"a/0.png", b"b/1.png", b"b/2.png"], [0, 1, 1], 1))
    save_indexes(tmp_path / "four.npz", index([b"a/0.png", b"b/1.png"], [1, 1], 1))  # relabelled
    one = pins.index_digest(tmp_path / "one.npz")
    assert one is not None and len(one) == 64
    assert pins.index_digest(tmp_path / "two.npz") == one
    assert pins.index_digest(tmp_path / "three.npz") != one
    assert pins.index_digest(tmp_path / "four.npz") != one
    assert pins.index_digest(tmp_path / "missing.npz") is None


def test_verify_names_the_file_and_a_run_without_pins_is_not_checked(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"train_config": {}}))
    (tmp_path / "sc.json").write_text("{}")
    pins.verify(tmp_path, "superclasses", tmp_path / "sc.json")  # no pins: an older run, nothing to check
    pins.verify_or_pin(tmp_path, "superclasses", tmp_path / "sc.json")
    pin = json.loads((tmp_path / "run.json").read_text())["pins"]["superclasses"]
    assert pin["file"] == "sc.json" and len(pin["sha256"]) == 64
    pins.verify(tmp_path, "superclasses")
    (tmp_path / "sc.json").write_text('{"x": 1}')
    with pytest.raises(pins.MvmoeError, match=r"^sc.json in .*: the superclasses file changed since the run pinned it"):
        pins.verify(tmp_path, "superclasses")
    (tmp_path / "sc.json").unlink()
    with pytest.raises(pins.MvmoeError, match="the superclasses file is gone"):
        pins.verify(tmp_path, "superclasses")


# ----------------------------------------------------------------------------- a real run
@pytest.fixture(scope="module")
def stopped_moe_run(tmp_path_factory):
    """Dense stage done (1 epoch), superclasses written, the MoE stopped after its first of 2 epochs."""
    out = tmp_path_factory.mktemp("pins") / "run"
    code, stdout, err = mvmoe("train", "--data", "synthetic:4:2", "--out", out, "-q", "--epochs", "2",
                              "--set", "dense_epochs=1", "--set", "num_experts=2", "--set", "moe_blocks=1", *TINY,
                              "--set", "stop_after_steps=12")
    assert code == 0 and "stopped at epoch 1" in stdout, err
    run = json.loads((out / "run.json").read_text())
    assert set(run["pins"]) == {"settings", "dense_checkpoint", "superclasses"}  # no index: generated data
    assert run["pins"]["dense_checkpoint"]["file"] == "dense/model.pt"
    return out


@pytest.fixture()
def run_copy(stopped_moe_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(stopped_moe_run, out)
    return out


@pytest.mark.slow
def test_resume_refuses_an_edited_superclasses_file(run_copy):
    path = run_copy / "superclasses.json"
    sc = json.loads(path.read_text())
    sc["class_to_superclass"] = [1 - c for c in sc["class_to_superclass"]]  # the mapping swapped
    path.write_text(json.dumps(sc))
    code, _, err = mvmoe("train", "--out", run_copy, "--resume", "-q")
    one_line_error(code, err, "superclasses.json", "changed since the run pinned it", "new --out")
    assert not (run_copy / "summary.json").exists()


@pytest.mark.slow
def test_resume_refuses_a_hand_edited_run_json_but_takes_resumable_keys(run_copy):
    path = run_copy / "run.json"
    original = path.read_text()
    for key, value in (("epochs", 3), ("lr", 5.0)):
        run = json.loads(original)
        run["train_config"][key] = value
        path.write_text(json.dumps(run))
        code, _, err = mvmoe("train", "--out", run_copy, "--resume", "-q")
        one_line_error(code, err, "run.json", "edited since the run started", "stop_after_steps")
    # a resumable key edited in the file, and one given on the command line: both fine
    run = json.loads(original)
    run["train_config"]["log_every"] = 7
    path.write_text(json.dumps(run))
    code, stdout, err = mvmoe("train", "--out", run_copy, "--resume", "-q", "--set", "workers=0",
                              "--set", "stop_after_steps=1")
    assert code == 0 and "stopped at epoch 1 (step 13)" in stdout, err


@pytest.mark.slow
def test_resume_refuses_a_replaced_dense_checkpoint(run_copy):
    ck = torch.load(run_copy / "dense" / "model.pt", weights_only=False)
    ck["epoch"] = ck.get("epoch", 0)  # same content, saved again: other bytes are enough to refuse
    torch.save(ck, run_copy / "dense" / "model.pt")
    code, _, err = mvmoe("train", "--out", run_copy, "--resume", "-q")
    one_line_error(code, err, "dense/model.pt", "dense stage's checkpoint")


@pytest.mark.slow
def test_data_index_pinned_and_a_changed_dataset_refused(tmp_path):
    data = write_imagefolder(tmp_path / "data", num_classes=4, num_superclasses=2, img_size=16,
                             train_per_class=8, val_per_class=2)
    out = tmp_path / "run"
    code, _, err = mvmoe("train", "--data", data, "--model", "vit-6x64-p32", "--superclasses", "none", "--out", out,
                         "-q", *TINY, "--set", "batch_size=8", "--set", "stop_after_steps=1")
    assert code == 0, err
    assert json.loads((out / "run.json").read_text())["pins"]["data_index"]["file"] == "data_index.npz"
    # touching a class folder rebuilds the cache with the same files: still the same data
    (data / "train" / "c00").touch()
    code, _, err = mvmoe("train", "--out", out, "--resume", "-q", "--set", "stop_after_steps=1")
    assert code == 0, err
    Image.new("RGB", (16, 16), (9, 9, 9)).save(data / "train" / "c01" / "extra.png")
    code, _, err = mvmoe("train", "--out", out, "--resume", "-q")
    one_line_error(code, err, "data_index.npz", "file index", "changed")


# ----------------------------------------------------------------------------- nested class folders
def test_images_in_class_subfolders_are_included_in_imagefolder_order_and_counted(tmp_path):
    """torchvision's ImageFolder: sorted(os.walk(class_dir, followlinks=True)), files sorted in each."""
    from torchvision.datasets import ImageFolder

    from mobile_vmoe.data import build_data

    data = write_imagefolder(tmp_path / "data", num_classes=2, num_superclasses=1, img_size=16,
                             train_per_class=3, val_per_class=2)
    c0 = data / "train" / "c00"
    for sub, names in (("b", ["1.png", "0.png"]), ("a", ["z.png"]), ("b/deeper", ["q.png"]), (".hidden", ["h.png"])):
        (c0 / sub).mkdir(parents=True, exist_ok=True)
        for n in names:
            Image.new("RGB", (16, 16), (200, 0, 0)).save(c0 / sub / n)
    with pytest.warns(UserWarning, match=r"4 of 10 train images are in subfolders of their class folders"):
        b = build_data(str(data), img_size=16)
    assert len(b.train) == 10 and b.stats["images_in_class_subfolders"] == {"train": 4, "val": 0}
    assert b.stats["train_images"] == 10
    ours = [p.split("/train/")[1] for p in b.train.paths]
    assert ours[:7] == ["c00/00000.png", "c00/00002.png", "c00/00004.png", "c00/a/z.png", "c00/b/0.png",
                        "c00/b/1.png", "c00/b/deeper/q.png"]
    theirs = ImageFolder(str(data / "train"), is_valid_file=lambda p: "/." not in p)
    assert [p.split("/train/")[1] for p, _ in theirs.samples] == ours
    assert [y for _, y in theirs.samples] == b.train.labels.tolist()
    # a class folder whose images all sit in subfolders is a class with images
    (data / "val" / "c01" / "x").mkdir()
    for f in list((data / "val" / "c01").glob("*.png")):
        f.rename(data / "val" / "c01" / "x" / f.name)
    with pytest.warns(UserWarning, match=r"2 of 4 val images"):
        assert len(build_data(str(data), img_size=16).val) == 4
