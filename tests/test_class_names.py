"""Human class names of ImageFolder data: --class-names FILE, ImageNet's LOC_synset_mapping.txt and
the devkit's meta.mat, carried into the checkpoint (data.labels) and the export .json (labels, with
the folder ids as label_ids)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from PIL import Image

from conftest import mvmoe
from mobile_vmoe.data import build_data
from mobile_vmoe.data.class_names import find_class_names, read_names_file, read_synset_mapping
from mobile_vmoe.errors import MvmoeError

WNIDS = ["n00000003", "n00000007", "n00000009"]  # sorted: class ids 0, 1, 2
NAMES = {"n00000003": "tench, Tinca tinca", "n00000007": "goldfish, Carassius auratus", "n00000009": "great white shark"}
TINY = ["--superclasses", "none", "--epochs", "1", "-q", "--set", "img_size=16", "--set", "depth=2", "--set", "width=32",
        "--set", "heads=2", "--set", "patch_size=8", "--set", "num_experts=2", "--set", "moe_blocks=1",
        "--set", "batch_size=4"]


def imagefolder(root, classes=WNIDS, per_class=(4, 2)):
    """root/train/<class>/*.png and root/val/<class>/*.png, a plain colour per class."""
    for split, n in zip(("train", "val"), per_class):
        for k, c in enumerate(classes):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (20, 20), (60 * k + 10 * i, 100, 200 - 50 * k)).save(root / split / c / f"{i}.png")
    return root


def mapping_text(names: dict[str, str]) -> str:
    return "".join(f"{w} {n}\n" for w, n in names.items())


def test_names_file_one_per_line_in_folder_order(tmp_path):
    f = tmp_path / "names.txt"
    f.write_text("  cat \ndog\nbig bird, blue\n\n\n")  # spaces around a name dropped, trailing blank lines ignored
    assert read_names_file(f, ["a", "b", "c"]) == ["cat", "dog", "big bird, blue"]
    with pytest.raises(MvmoeError, match=r"has 3 names for 2 class folders: .* \(a first\)"):
        read_names_file(f, ["a", "b"])
    f.write_text("cat\n\ndog\n")
    with pytest.raises(MvmoeError, match="line 2 is empty \\(it names class folder b\\)"):
        read_names_file(f, ["a", "b", "c"])
    with pytest.raises(MvmoeError, match="cannot read --class-names"):
        read_names_file(tmp_path / "missing.txt", ["a", "b"])


def test_synset_mapping_lines(tmp_path):
    f = tmp_path / "LOC_synset_mapping.txt"
    f.write_text("n01440764 tench, Tinca tinca\r\nn01443537 goldfish, Carassius auratus\n\n")
    assert read_synset_mapping(f) == {"n01440764": "tench, Tinca tinca", "n01443537": "goldfish, Carassius auratus"}
    f.write_text("n01440764 tench\nn01443537\n")
    with pytest.raises(MvmoeError, match="line 2: expected '<folder id> <name>'"):
        read_synset_mapping(f)


def test_imagenet_mapping_found_above_the_dataset(tmp_path):
    """The Kaggle layout: LOC_synset_mapping.txt three folders above ILSVRC/Data/CLS-LOC; it names
    more classes than this subset holds."""
    root = imagefolder(tmp_path / "kaggle" / "ILSVRC" / "Data" / "CLS-LOC")
    (tmp_path / "kaggle" / "LOC_synset_mapping.txt").write_text(mapping_text({**NAMES, "n00000001": "other"}))
    b = build_data(str(root), 16)
    assert b.class_names == WNIDS and b.label_names == [NAMES[w] for w in WNIDS]
    info = b.checkpoint_info()
    assert info["labels"] == [NAMES[w] for w in WNIDS] and info["labels_from"] == str(tmp_path / "kaggle" / "LOC_synset_mapping.txt")


def test_a_mapping_of_other_classes_warns_and_keeps_the_ids(tmp_path):
    root = imagefolder(tmp_path / "data")
    (root / "LOC_synset_mapping.txt").write_text(mapping_text({"n00000003": "tench", "n00000007": "goldfish"}))
    with pytest.warns(UserWarning, match="names 2 of the 3 class folders \\(not n00000009\\)"):
        b = build_data(str(root), 16)
    assert b.label_names is None and "labels" not in b.checkpoint_info()


def test_no_mapping_no_names(tmp_path):
    root = imagefolder(tmp_path / "data", classes=["cat", "dog"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert find_class_names(root, ["cat", "dog"]) is None
    assert build_data(str(root), 16).label_names is None


def test_devkit_meta_names(tmp_path):
    """meta.mat in PATH/ILSVRC2012_devkit_t12/data: the words of each leaf synset (a non-leaf entry
    with the same shape is left out)."""
    from scipy.io import savemat

    root = imagefolder(tmp_path / "data")
    devkit = root / "ILSVRC2012_devkit_t12" / "data"
    devkit.mkdir(parents=True)
    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children"]
    synsets = np.zeros((4, 1), dtype=[(f, "O") for f in fields])
    for row, (i, wnid) in enumerate([(2, "n00000003"), (1, "n00000007"), (3, "n00000009")]):
        synsets[row, 0] = (np.array([[i]]), np.array([wnid]), np.array([NAMES[wnid]]), np.array(["g"]), np.array([[0]]))
    synsets[3, 0] = (np.array([[1001]]), np.array(["n09999999"]), np.array(["fish"]), np.array(["g"]), np.array([[3]]))
    savemat(devkit / "meta.mat", {"synsets": synsets})
    assert build_data(str(root), 16).label_names == [NAMES[w] for w in WNIDS]


def test_class_names_file_wins_and_is_only_for_folders(tmp_path):
    root = imagefolder(tmp_path / "data")
    (root / "LOC_synset_mapping.txt").write_text(mapping_text(NAMES))
    f = tmp_path / "names.txt"
    f.write_text("one\ntwo\nthree\n")
    b = build_data(str(root), 16, class_names=f)
    assert (b.class_names, b.label_names, b.label_names_from) == (WNIDS, ["one", "two", "three"], str(f.resolve()))
    with pytest.raises(MvmoeError, match="--class-names names the class folders of an ImageFolder dataset; digits"):
        build_data("digits", class_names=f)


def test_train_with_a_wrong_count_is_one_line(tmp_path):
    root = imagefolder(tmp_path / "data")
    f = tmp_path / "names.txt"
    f.write_text("one\ntwo\n")
    code, _, err = mvmoe("train", "--data", root, "--class-names", f, "--out", tmp_path / "run", *TINY)
    assert code == 1 and err.strip().splitlines() == [
        f"error: --class-names {f} has 2 names for 3 class folders: give one name per line, in the sorted "
        "order of the folders (n00000003 first)"]
    assert not (tmp_path / "run" / "last.pt").exists()
    code, _, err = mvmoe("train", "--out", tmp_path / "run", "--resume", "--class-names", f)
    assert code == 1 and "drop --class-names" in err


def test_export_metadata_labels_and_ids(tmp_path):
    """The .json's labels are the checkpoint's names when it has them, label_ids its class ids."""
    from converters.metadata import build_metadata
    from converters.wrapper import prepare_for_export
    from helpers import tiny_moe

    model = tiny_moe(3, 2)
    wrapper = prepare_for_export(model)
    ck = {"model_config": model.cfg.to_dict(), "class_names": WNIDS, "superclasses": None,
          "data": {"mean": [0.5] * 3, "std": [0.5] * 3, "labels": ["tench", "goldfish", "shark"]}}
    common = dict(target="onnx", backend=None, precision="fp32", artifact="m.onnx", dispatch="gather", macs=1,
                  parity_result={}, ops={})
    meta = build_metadata(ck, wrapper, **common)
    assert (meta["labels"], meta["label_ids"]) == (["tench", "goldfish", "shark"], WNIDS)
    del ck["data"]["labels"]  # generated data, older checkpoints: the ids are the labels
    meta = build_metadata(ck, wrapper, **common)
    assert meta["labels"] == meta["label_ids"] == WNIDS


@pytest.mark.slow
def test_names_reach_the_checkpoint_and_the_export_json(tmp_path):
    """mvmoe train --class-names on an ImageFolder, then an ONNX export: the .json's labels are the
    names, label_ids the folder ids; the summary and the model's class ids are unchanged."""
    import torch

    from converters.pipeline import export_checkpoint

    root = imagefolder(tmp_path / "data")
    (root / "LOC_synset_mapping.txt").write_text(mapping_text(NAMES))  # --class-names wins over it
    f = tmp_path / "names.txt"
    f.write_text("tench\ngoldfish\ngreat white shark\n")
    code, _, err = mvmoe("train", "--data", root, "--class-names", f, "--out", tmp_path / "run", *TINY)
    assert code == 0, err
    ck = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert ck["class_names"] == WNIDS and ck["data"]["labels"] == ["tench", "goldfish", "great white shark"]
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["train_config"]["class_names"] == str(f.resolve())
    [r] = export_checkpoint(tmp_path / "run" / "model.pt", "onnx", None, "fp32", tmp_path / "out", parity_images=4,
                            calibration_images=2)
    assert r.ok, r.error
    meta = json.loads(r.artifact.with_suffix(".json").read_text())
    assert meta["labels"] == ["tench", "goldfish", "great white shark"] and meta["label_ids"] == WNIDS
