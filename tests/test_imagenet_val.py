"""The official flat ImageNet val/ folder: labels from LOC_val_solution.csv or the devkit
(ground truth + meta.mat), read by --data directly or sorted by `mvmoe data sort-val`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from mobile_vmoe.cli import app
from mobile_vmoe.data import build_data
from mobile_vmoe.errors import MvmoeError

WNIDS = ["n00000003", "n00000007", "n00000009"]  # sorted: labels 0, 1, 2
VAL_WNID = ["n00000007", "n00000003", "n00000009", "n00000007"]  # of ILSVRC2012_val_00000001..4
ILSVRC_ID = {"n00000003": 2, "n00000007": 1, "n00000009": 3}  # the devkit's ids differ from our labels


@pytest.fixture()
def flat(tmp_path):
    root = tmp_path / "imagenet"
    for k, wnid in enumerate(WNIDS):
        (root / "train" / wnid).mkdir(parents=True)
        Image.new("RGB", (20, 16), (80 * k, 0, 0)).save(root / "train" / wnid / f"{wnid}_1.JPEG")
    (root / "val").mkdir()
    for i, wnid in enumerate(VAL_WNID, start=1):
        Image.new("RGB", (20, 16), (80 * WNIDS.index(wnid), 0, 0)).save(root / "val" / f"ILSVRC2012_val_{i:08d}.JPEG")
    return root


def _csv(path, wnids=VAL_WNID):
    rows = [f"ILSVRC2012_val_{i:08d},{w} 1 2 10 12 {w} 0 0 5 5" for i, w in enumerate(wnids, start=1)]
    path.write_text("ImageId,PredictionString\n" + "\n".join(reversed(rows)) + "\n")  # any row order
    return path


def _devkit(folder, ids):
    from scipy.io import savemat

    folder.mkdir(parents=True, exist_ok=True)
    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children"]
    synsets = np.zeros((4, 1), dtype=[(f, "O") for f in fields])
    for row, (wnid, i) in enumerate(ILSVRC_ID.items()):
        synsets[row, 0] = (np.array([[i]]), np.array([wnid]), np.array(["w"]), np.array(["g"]), np.array([[0]]))
    synsets[3, 0] = (np.array([[1001]]), np.array(["n09999999"]), np.array(["a"]), np.array(["b"]), np.array([[2]]))
    savemat(folder / "meta.mat", {"synsets": synsets})
    gt = folder / "ILSVRC2012_validation_ground_truth.txt"
    gt.write_text("\n".join(str(i) for i in ids) + "\n")
    return gt


def test_flat_val_read_with_the_csv_next_to_it(flat):
    with pytest.raises(MvmoeError, match="mvmoe data sort-val"):
        build_data(str(flat), 16)
    _csv(flat / "LOC_val_solution.csv")
    b = build_data(str(flat), 16)
    assert b.class_names == WNIDS and b.val.labels.tolist() == [1, 0, 2, 1]
    x, y = b.val[2]
    assert y == 2 and x.shape == (3, 16, 16)


def test_flat_val_read_with_the_devkit(flat):
    _devkit(flat / "ILSVRC2012_devkit_t12" / "data", [ILSVRC_ID[w] for w in VAL_WNID])
    assert build_data(str(flat), 16).val.labels.tolist() == [1, 0, 2, 1]


def test_sort_val_command_moves_or_links_into_class_folders(flat, tmp_path):
    csv = _csv(tmp_path / "LOC_val_solution.csv")
    r = CliRunner().invoke(app, ["data", "sort-val", str(flat / "val"), "--labels", str(csv), "--mode", "link",
                                 "--out", str(tmp_path / "sorted")])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output) == {"images": 4, "classes": 3, "mode": "link", "out": str(tmp_path / "sorted")}
    assert sorted(p.name for p in (tmp_path / "sorted" / "n00000007").iterdir()) == [
        "ILSVRC2012_val_00000001.JPEG", "ILSVRC2012_val_00000004.JPEG"]
    assert len(list((flat / "val").iterdir())) == 4  # links: the flat files stay
    gt = _devkit(tmp_path / "devkit", [ILSVRC_ID[w] for w in VAL_WNID])
    r = CliRunner().invoke(app, ["data", "sort-val", str(flat / "val"), "--labels", str(gt)])
    assert r.exit_code == 0, r.output
    b = build_data(str(flat), 16)  # now the usual layout
    assert b.val.labels.tolist() == [0, 1, 1, 2] and b.val.path(0).endswith("val/n00000003/ILSVRC2012_val_00000002.JPEG")


def test_wrong_label_files_are_one_line_errors(flat, tmp_path):
    def run(*args):
        r = CliRunner().invoke(app, ["data", "sort-val", str(flat / "val"), *args])
        assert r.exit_code == 1 and r.output.count("\n") == 1, r.output
        return r.output

    bad = tmp_path / "bad.csv"
    bad.write_text("id,label\nILSVRC2012_val_00000001,n00000007\n")
    assert "is not a LOC_val_solution.csv: its first line must be 'ImageId,PredictionString'" in run("--labels", str(bad))
    short = _csv(tmp_path / "short.csv", VAL_WNID[:3])
    assert "ILSVRC2012_val_00000004.JPEG has no label in the label file" in run("--labels", str(short))
    gt = _devkit(tmp_path / "devkit", [1, 7, 2, 3])
    assert "line 2: '7' is not an ILSVRC2012_ID" in run("--labels", str(gt))
    assert "pass the devkit's meta.mat too" in run("--labels", str(flat / "train" / WNIDS[0] / f"{WNIDS[0]}_1.JPEG"))
    (tmp_path / "meta.txt").write_text("not a mat file")
    assert "is not the ImageNet devkit's meta.mat" in run("--labels", str(gt), "--meta", str(tmp_path / "meta.txt"))
    assert "give another --out folder" in run("--labels", str(gt), "--mode", "link")
