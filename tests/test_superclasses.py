"""Superclasses: confusion counts, affinity, spectral clustering, names, JSON; recovery of the
planted superclasses of `synthetic` by a tiny ViT trained here."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from mobile_vmoe.checkpoint import load_checkpoint
from mobile_vmoe.data import build_data
from mobile_vmoe.data.synthetic import build_synthetic
from mobile_vmoe.data.superclasses import (cluster_superclasses, confusion_affinity, confusion_matrix,
                                           load_superclasses, make_superclasses, save_superclasses,
                                           superclass_names, superclasses_from_model)
from mobile_vmoe.errors import MvmoeError


class LookupModel(torch.nn.Module):
    """Predicts class int(x[i, 0, 0, 0]): the input carries the prediction."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes

    def forward(self, x):
        return torch.nn.functional.one_hot(x[:, 0, 0, 0].long(), self.num_classes).float()


def test_confusion_matrix_counts_true_by_predicted():
    preds = torch.tensor([0, 1, 1, 2, 0, 2])
    labels = torch.tensor([0, 0, 1, 2, 2, 2])
    images = preds.float().view(6, 1, 1, 1).expand(6, 3, 2, 2)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels), batch_size=4)
    c = confusion_matrix(LookupModel(3), loader, 3)
    assert c.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]


class LogitModel(torch.nn.Module):
    """Returns the logits carried in the input's first pixel row: x[i, 0, 0, :N]."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes

    def forward(self, x):
        return x[:, 0, 0, : self.num_classes]


def test_soft_confusion_sums_softmax_mass_per_true_class():
    # logits ln(p): softmax gives p back. Class 0: [.6 .4 0], [.7 .1 .2]; class 1: [.2 .6 .2]
    probs = torch.tensor([[0.6, 0.4, 1e-12], [0.7, 0.1, 0.2], [0.2, 0.6, 0.2]])
    images = torch.zeros(3, 3, 1, 3)
    images[:, 0, 0, :] = probs.log()
    labels = torch.tensor([0, 0, 1])
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels), batch_size=2)
    soft = confusion_matrix(LogitModel(3), loader, 3, mode="soft")
    assert soft.dtype == np.float64
    np.testing.assert_allclose(soft, [[1.3, 0.5, 0.2], [0.2, 0.6, 0.2], [0, 0, 0]], rtol=1e-6, atol=1e-6)  # float32 softmax
    assert confusion_matrix(LogitModel(3), loader, 3).tolist() == [[2, 0, 0], [0, 1, 0], [0, 0, 0]]  # argmax
    with pytest.raises(MvmoeError, match="confusion 'hard'"):
        confusion_matrix(LogitModel(3), loader, 3, mode="hard")
    sc = make_superclasses(["a", "b", "c"], [0, 0, 1], confusion=soft)  # floats kept (4 decimals)
    assert sc["confusion"][0] == [1.3, 0.5, 0.2]


def test_affinity_is_row_normalised_symmetrised_off_diagonal():
    c = np.array([[8, 2, 0], [1, 9, 0], [0, 0, 10]])
    a = confusion_affinity(c)
    # rows -> [.8 .2 0], [.1 .9 0], [0 0 1]; off-diagonal (0.2 + 0.1) / 2 = 0.15;
    # mean off-diagonal 0.3 / 6 = 0.05 -> uniform affinity 1e-3 * 0.05 = 5e-5 everywhere
    assert a[0, 1] == pytest.approx(0.15 + 5e-5) and a[1, 0] == a[0, 1]
    assert a[0, 2] == pytest.approx(5e-5) and a[2, 1] == pytest.approx(5e-5)
    with pytest.raises(MvmoeError, match="square"):
        confusion_affinity(np.ones((2, 3)))


def test_clustering_recovers_hand_built_blocks():
    # 6 classes: {0, 2, 4} confuse each other, {1, 3, 5} confuse each other, class 5 only weakly
    c = np.diag([50] * 6)
    for group in ((0, 2, 4), (1, 3, 5)):
        for i in group:
            for j in group:
                if i != j:
                    c[i, j] = 6
    c[5, 3] = c[5, 1] = 1
    c[3, 5] = c[1, 5] = 0
    c[0, 1] = 1  # a little cross-group noise
    labels = cluster_superclasses(c, 2, seed=0)
    assert labels.tolist() == [0, 1, 0, 1, 0, 1]  # canonical ids: class 0's cluster is 0
    assert cluster_superclasses(c, 1).tolist() == [0] * 6
    assert cluster_superclasses(c, 6).tolist() == list(range(6))
    with pytest.raises(MvmoeError, match="between 1 and"):
        cluster_superclasses(c, 7)
    # names list the members most confused inside their group: a sends 1 of 63 images outside
    # (row 63 vs 62 for c, e), so a's share is smallest and c/e (tied, class order) come first;
    # f confuses weakly (1/52), so b/d lead superclass 1
    names = superclass_names(["a", "b", "c", "d", "e", "f"], labels, c, top=2)
    assert names == ["sc0: c/e +1", "sc1: b/d +1"]


def test_superclasses_json_roundtrip_and_validation(tmp_path):
    classes = ["cat", "dog", "car", "bus"]
    p = tmp_path / "sc.json"
    save_superclasses(p, make_superclasses(classes, [0, 0, 1, 1], source="test", fit_on={"split": "train-holdout",
                                                                                      "images": 8}))
    d = load_superclasses(p, classes)
    assert d["class_to_superclass"] == [0, 0, 1, 1] and d["num_superclasses"] == 2
    assert d["names"] == ["sc0: cat/dog", "sc1: car/bus"] and d["members"] == [["cat", "dog"], ["car", "bus"]]
    assert d["sizes"] == [2, 2] and d["fit_on"] == {"split": "train-holdout", "images": 8}
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left no temp file
    with pytest.raises(MvmoeError, match="other classes .*missing \\['truck'\\]"):
        load_superclasses(p, ["cat", "dog", "car", "truck"])
    raw = json.loads(p.read_text())
    for key, value, msg in (("class_to_superclass", [0, 0, 2, 1], "superclass 2, expected"),
                            ("class_to_superclass", [0, 0, 0], "one superclass per class"),
                            ("names", ["x"], "list of 2 strings"),
                            ("num_superclasses", 3, "\\[2\\] have no classes")):
        bad = dict(raw, **{key: value})
        p.write_text(json.dumps(bad))
        with pytest.raises(MvmoeError, match=msg):
            load_superclasses(p)
    p.write_text("{not json")
    with pytest.raises(MvmoeError, match="not valid JSON"):
        load_superclasses(p)
    with pytest.raises(MvmoeError, match="not found"):
        load_superclasses(tmp_path / "missing.json")


@pytest.fixture()
def one_thread():
    """On a busy shared 2-core machine, 2 intra-op threads per process can be 20x slower than 1."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _tiny_dense_on_synthetic():
    """A 2-block dense ViT trained 3 epochs on synthetic (20 classes, 4 planted superclasses)."""
    from mobile_vmoe.models.registry import create_model

    torch.manual_seed(0)
    data = build_data("synthetic", augment="none")  # 20 classes in 4 superclasses, 2,000 train images
    model = create_model("vit-6x64-p32", img_size=32, patch_size=8, num_classes=20, depth=2, width=48, heads=2)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    loader = torch.utils.data.DataLoader(data.train, batch_size=64, shuffle=True)
    model.train()
    for _ in range(3):  # ~5 s on one core; superclasses are learnt first, classes later
        for x, y in loader:
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval(), data


def test_tiny_vit_confusions_recover_planted_superclasses_of_synthetic(one_thread):
    model, data = _tiny_dense_on_synthetic()
    val = torch.utils.data.DataLoader(data.val, batch_size=250)
    sc = superclasses_from_model(model, val, data.class_names, 4, seed=0, source="test")
    ari = adjusted_rand_score(data.planted_superclasses, sc["class_to_superclass"])
    assert ari >= 0.9, (ari, sc["class_to_superclass"])
    assert sc["names"][0].startswith("sc0: ") and len(sc["members"]) == 4


def test_superclasses_cli_on_a_trained_checkpoint(one_thread, tmp_path):
    """`mvmoe superclasses` on a saved dense checkpoint writes what the library finds."""
    from typer.testing import CliRunner

    from mobile_vmoe.checkpoint import save_checkpoint
    from mobile_vmoe.cli import app

    from mobile_vmoe.data.holdout import split_for_superclasses

    model, data = _tiny_dense_on_synthetic()
    _, held = split_for_superclasses(data, 0.1, seed=0)  # the CLI's default: 10 %, the checkpoint's seed (0)
    sc = superclasses_from_model(model, torch.utils.data.DataLoader(held, batch_size=250), data.class_names, 4,
                                 seed=0, source="test")
    ckpt = tmp_path / "model.pt"
    save_checkpoint(ckpt, {"model_config": model.cfg.to_dict(), "model": model.state_dict(),
                           "class_names": data.class_names, "data": data.checkpoint_info()})
    out = tmp_path / "sc.json"
    res = CliRunner().invoke(app, ["superclasses", "--checkpoint", str(ckpt), "--data", "synthetic", "--num", "4",
                                   "--out", str(out)])
    assert res.exit_code == 0, res.stderr
    written = json.loads(out.read_text())
    assert written["class_to_superclass"] == sc["class_to_superclass"] and written["num_superclasses"] == 4
    assert written["confusion"] == sc["confusion"] and written["fit_on"]["images"] == len(held) == 200
    assert json.loads(res.stdout.strip().splitlines()[-1])["out"] == str(out)
    # the wrong dataset for this model: one-line error, exit 1
    res = CliRunner().invoke(app, ["superclasses", "--checkpoint", str(ckpt), "--data", "digits", "--num", "4",
                                   "--out", str(tmp_path / "x.json")])
    assert res.exit_code == 1 and "trained on other classes" in res.stderr
    assert not (tmp_path / "x.json").exists()


def test_balanced_assignment_by_hand():
    """Points 0, 1, 2, 10 on a line, centres at 1 and 10, sizes 2 + 2: the unbalanced nearest-centre
    answer is [0, 0, 0, 1]; with two slots each, point 2 (cost (2-10)^2 = 64 vs point 1's 81) moves."""
    from mobile_vmoe.data.superclasses import balanced_assignment, balanced_sizes

    pts = np.array([[0.0], [1.0], [2.0], [10.0]])
    assert balanced_assignment(pts, np.array([[1.0], [10.0]]), np.array([2, 2])).tolist() == [0, 0, 1, 1]
    assert balanced_sizes(10, np.array([2, 5, 3])).tolist() == [3, 4, 3]  # the naturally biggest gets the extra
    assert balanced_sizes(7, np.array([4, 3])).tolist() == [4, 3]


def test_balanced_clustering_equalises_sizes_where_spectral_does_not():
    """Two confusion blocks of 6 and 2 classes: plain spectral finds 6 + 2, balanced returns 4 + 4
    and keeps the 2-class block whole."""
    c = np.zeros((8, 8))
    for group in ([0, 1, 2, 3, 4, 5], [6, 7]):
        for i in group:
            for j in group:
                c[i, j] = 10 if i == j else 5
    spectral = cluster_superclasses(c, 2, seed=0, method="spectral")
    assert sorted(np.bincount(spectral).tolist()) == [2, 6]
    balanced = cluster_superclasses(c, 2, seed=0, method="balanced")
    assert np.bincount(balanced).tolist() == [4, 4]
    assert balanced[6] == balanced[7]
    with pytest.raises(MvmoeError, match="clustering 'kmeans'"):
        cluster_superclasses(c, 2, method="kmeans")


def test_superclass_holdout_is_stratified_from_train_and_never_the_eval_split():
    from mobile_vmoe.data.holdout import split_for_superclasses

    data = build_synthetic(6, 3, 16, train_per_class=20, val_per_class=5, seed=0)
    rest, held = split_for_superclasses(data, 0.1, seed=3)
    hold_idx, rest_idx = set(held.indices), set(rest.train.indices)
    assert len(held) == 12 and hold_idx.isdisjoint(rest_idx) and len(hold_idx | rest_idx) == 120
    assert np.bincount(data.train.labels[held.indices].numpy()).tolist() == [2] * 6  # stratified
    # the holdout's images are training images, read with the eval transform; none is an eval image
    train_imgs, val_imgs = data.train.images, data.val.images
    for i in held.indices:
        x, _ = held.dataset[i]
        assert torch.allclose(x, data.val.transform(train_imgs[i]))
        assert not any(torch.equal(train_imgs[i], v) for v in val_imgs)
    assert rest.val is data.val and held.dataset.images is train_imgs
    again, _ = split_for_superclasses(data, 0.1, seed=3)
    assert again.train.indices == rest.train.indices  # seeded


def test_superclass_stage_fits_on_the_train_holdout(tmp_path, one_thread):
    """The auto stage: dense twin on train less holdout, confusion on the holdout, fit_on recorded."""
    from mobile_vmoe.train import resolve, train

    tcfg, bundle = resolve("vmoe-6x64-p32", "synthetic:4:2", {"depth": 2, "width": 32, "heads": 2, "num_experts": 2,
                                                              "moe_blocks": 1, "img_size": 16}, epochs=1)
    s = train(tcfg, bundle, tmp_path / "run", quiet=True)
    sc = json.loads((tmp_path / "run" / "superclasses.json").read_text())
    n_hold = int(np.ceil(0.1 * len(bundle.train)))
    assert sc["fit_on"]["split"] == "train-holdout" and sc["fit_on"]["images"] == n_hold
    assert sum(map(sum, sc["confusion"])) == n_hold  # the matrix counts exactly the holdout images
    assert sc["sizes"] == [2, 2] and sc["method"] == "balanced" and s["superclass_sizes"] == [2, 2]
    dense = load_checkpoint(tmp_path / "run" / "dense" / "last.pt")
    assert dense["steps_per_epoch"] == (len(bundle.train) - n_hold) // tcfg.batch_size
