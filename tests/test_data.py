"""Datasets (digits, synthetic, ImageFolder with bad layouts and corrupt files), transforms, MixUp/CutMix."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import write_imagefolder
from mobile_vmoe.data import MixupCutmix, build_data, superclass_targets
from mobile_vmoe.errors import MvmoeError


# --- digits ---------------------------------------------------------------------------------------

def test_digits_split_is_fixed_stratified_and_pixels_are_scaled():
    b = build_data("digits", img_size=8, augment="none")
    assert (len(b.train), len(b.val)) == (1437, 360)  # 80/20 of 1,797
    assert b.class_names == [str(i) for i in range(10)] and b.in_chans == 3
    # stratified: each class has 35..37 of its ~179 images in val (20%)
    counts = torch.bincount(b.val.labels, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37
    # image 0 of load_digits (a "0", first row 0 0 5 13 9 1 0 0) is the first training image
    assert int(b.train.labels[0]) == 0
    assert b.train.images[0, :, 0].mul(16).tolist() == [[0, 0, 5, 13, 9, 1, 0, 0]] * 3  # 3 equal channels
    # eval transform = (x - mean) / std with mean/std of the train split
    x, y = b.train[0]
    assert y == 0
    expected = (13 / 16 - b.mean[0]) / b.std[0]
    assert x[1, 0, 3].item() == pytest.approx(expected, abs=1e-5)
    assert b.mean[0] == pytest.approx(b.train.images.mean().item(), abs=1e-4)
    # the split does not depend on the seed or on the build
    b2 = build_data("digits", img_size=8, augment="none", seed=5)
    assert torch.equal(b2.val.labels, b.val.labels) and torch.equal(b2.val.images, b.val.images)


def test_digits_default_size_and_light_augment_shifts_without_flipping():
    b = build_data("digits")  # default img_size 32, augment light
    assert b.img_size == 32 and b.train.images.shape[1:] == (3, 32, 32)
    # a left-heavy test pattern: light augment shifts it by at most 4 px and never mirrors it
    img = torch.zeros(3, 32, 32)
    img[:, :, :8] = 1.0
    flipped = 0
    for _ in range(40):
        out = b.train.transform(img) * b.std[0] + b.mean[0]  # back to [0, 1]
        left, right = out[0, :, :16].mean(), out[0, :, 16:].mean()
        flipped += int(right > left)
    assert flipped == 0


# --- synthetic ------------------------------------------------------------------------------------

def test_synthetic_is_deterministic_and_has_the_planted_hierarchy():
    a = build_data("synthetic:8:2", augment="none")
    b = build_data("synthetic:8:2", augment="none")
    c = build_data("synthetic:8:2", augment="none", seed=1)
    assert torch.equal(a.train.images, b.train.images)
    assert not torch.equal(a.train.images, c.train.images)
    assert a.planted_superclasses == [0, 1, 0, 1, 0, 1, 0, 1]  # class c -> c % S
    assert len(a.train) == 8 * 100 and len(a.val) == 8 * 25 and a.name == "synthetic:8:2"
    # superclasses are clearly different: the mean colour alone separates them on val ...
    def colour(ds):
        return ds.images.mean(dim=(2, 3))  # (N, 3)
    sc = torch.tensor(a.planted_superclasses)
    tr_c, va_c = colour(a.train), colour(a.val)
    sc_means = torch.stack([tr_c[sc[a.train.labels] == s].mean(0) for s in range(2)])  # (2, 3)
    sc_pred = torch.cdist(va_c, sc_means).argmin(1)
    assert (sc_pred == sc[a.val.labels]).float().mean().item() == 1.0
    # ... while classes inside a superclass share it: nearest class colour is near chance (1/4)
    cls_means = torch.stack([tr_c[a.train.labels == k].mean(0) for k in range(8)])
    cls_pred = torch.cdist(va_c, cls_means).argmin(1)
    assert (cls_pred == a.val.labels).float().mean().item() < 0.5


def test_checkpoint_info_rebuilds_the_same_data():
    # an export rebuilds the eval split from the checkpoint's data entry: spec + generation seed
    c = build_data("synthetic:8:2", augment="none", seed=1)
    info = c.checkpoint_info()
    assert (info["name"], info["spec"], info["seed"]) == ("synthetic:8:2", "synthetic:8:2", 1)
    again = build_data(info["spec"], info["img_size"], augment="none", seed=info["seed"])
    assert torch.equal(again.val.images, c.val.images)
    d = build_data("synthetic", augment="none").checkpoint_info()
    assert (d["name"], d["spec"], d["seed"]) == ("synthetic", "synthetic:20:4", 0)
    assert build_data("digits").checkpoint_info()["spec"] == "digits"
    assert d["preprocess"] == {"kind": "synthetic", "crop_ratio": 1.0, "polarity": None}


def test_synthetic_spec_errors():
    for spec in ("synthetic:3", "synthetic:2:3", "synthetic:a:b", "synthetic:4:0"):
        with pytest.raises(MvmoeError, match="synthetic"):
            build_data(spec)
    assert build_data("synthetic").planted_superclasses == [c % 4 for c in range(20)]


def test_build_data_rejects_unknown_spec_and_augment():
    with pytest.raises(MvmoeError, match="unknown dataset"):
        build_data("cifar-ten")
    with pytest.raises(MvmoeError, match="augment"):
        build_data("digits", augment="heavy")


def test_deit_augment_on_tensors_keeps_shape_and_varies():
    b = build_data("synthetic:4:2", augment="deit")
    x1, _ = b.train[0]
    x2, _ = b.train[0]
    assert x1.shape == (3, 32, 32) and x1.dtype == torch.float32
    assert not torch.equal(x1, x2)
    v1, _ = b.val[0]
    v2, _ = b.val[0]
    assert torch.equal(v1, v2)  # eval transform is deterministic


# --- ImageFolder ----------------------------------------------------------------------------------

@pytest.fixture()
def tree(tmp_path):
    return write_imagefolder(tmp_path / "tiny", num_classes=4, num_superclasses=2, img_size=16,
                             train_per_class=3, val_per_class=2)


def _jpeg_bytes(size=48) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_imagefolder_reads_classes_labels_and_eval_crop(tree):
    b = build_data(str(tree), img_size=16)
    assert b.name == "tiny" and b.class_names == ["c00", "c01", "c02", "c03"]
    assert (len(b.train), len(b.val)) == (12, 8) and b.train.load_failures == 0
    assert b.stats["root"] == str(tree.resolve())
    assert b.checkpoint_info()["spec"] == str(tree.resolve())  # an export finds the data from any cwd
    assert b.mean == (0.485, 0.456, 0.406)
    assert sorted(torch.bincount(b.train.labels).tolist()) == [3, 3, 3, 3]
    assert b.train.paths[0].endswith("train/c00/00000.png") and int(b.train.labels[0]) == 0
    # eval = resize to int(16 / 0.875) = 18, centre crop 16; a flat colour stays flat
    Image.new("RGB", (40, 30), (255, 0, 51)).save(tree / "val" / "c01" / "flat.png")
    b = build_data(str(tree), img_size=16)
    i = next(k for k, p in enumerate(b.val.paths) if p.endswith("flat.png"))
    x, y = b.val[i]
    assert y == 1 and x.shape == (3, 16, 16)
    expect = [(1.0 - 0.485) / 0.229, (0.0 - 0.456) / 0.224, (0.2 - 0.406) / 0.225]
    assert x.mean(dim=(1, 2)).tolist() == pytest.approx(expect, abs=1e-4)


def test_imagefolder_layout_errors(tmp_path, tree):
    with pytest.raises(MvmoeError, match="not found"):
        build_data(str(tmp_path / "nope"))
    # missing split
    import shutil
    no_val = tmp_path / "noval"
    shutil.copytree(tree / "train", no_val / "train")
    with pytest.raises(MvmoeError, match="no val/ folder"):
        build_data(str(no_val))
    # flat val: the raw ImageNet layout, the message says how to fix it
    flat = tmp_path / "flat"
    shutil.copytree(tree / "train", flat / "train")
    (flat / "val").mkdir()
    for k in range(3):
        (flat / "val" / f"ILSVRC2012_val_{k:08d}.JPEG").write_bytes(_jpeg_bytes(8))
    with pytest.raises(MvmoeError, match="mvmoe data sort-val"):
        build_data(str(flat))
    # an empty class folder
    (tree / "train" / "c09").mkdir()
    with pytest.raises(MvmoeError, match="c09 has no images"):
        build_data(str(tree))
    (tree / "train" / "c09").rmdir()
    # val classes that train does not have
    (tree / "val" / "zebra").mkdir()
    (tree / "val" / "zebra" / "z.jpg").write_bytes(_jpeg_bytes(8))
    with pytest.raises(MvmoeError, match="not in train/: zebra"):
        build_data(str(tree))


@pytest.mark.filterwarnings("ignore:skipping")
def test_imagefolder_unreadable_images_found_at_load_counted_and_limited(tree):
    from mobile_vmoe.data.loader import skipped_images

    noise = np.random.default_rng(1).bytes(500)
    # files that pass the index's cheap check (the right signature) and fail only when decoded
    (tree / "train" / "c02" / "random.png").write_bytes(b"\x89PNG\r\n\x1a\n" + noise)
    (tree / "train" / "c01" / "00000_trunc.png").write_bytes(b"\x89PNG\r\n\x1a\n" + noise[:100])
    b = build_data(str(tree), img_size=16, augment="none", max_bad_fraction=0.2)
    assert len(b.train) == 14 and b.train.load_failures == 0  # the cheap check passed them
    i = b.train.paths.index(str(tree / "train" / "c01" / "00000_trunc.png"))
    with pytest.warns(UserWarning, match="00000_trunc.png"):
        x, y = b.train[i]
    # replaced by the next sample in the list (c01/00001.png), label 1
    assert y == 1 and b.train.load_failures == 1
    assert torch.equal(x, b.train[i + 1][0])
    j = b.train.paths.index(str(tree / "train" / "c02" / "random.png"))
    with pytest.warns(UserWarning, match="random.png"):
        assert b.train[j][1] == 3  # the last file of c02: replaced by c03/00000.png
    b.train[j]  # flagged once: not counted again
    assert b.train.load_failures == 2 and skipped_images(b) == 2
    # 2 bad of 14 files is 14%: over a 10% limit at the second failure
    b = build_data(str(tree), img_size=16, augment="none", max_bad_fraction=0.1)
    b.train[i]
    with pytest.raises(MvmoeError, match="2 of 14 images"):
        b.train[j]


def test_cheap_check_reads_a_few_bytes_and_never_decodes(tmp_path):
    from mobile_vmoe.data.index import TAIL_BYTES, broken_reason

    def f(name, data):
        (tmp_path / name).write_bytes(data)
        return broken_reason(tmp_path / name)

    jpeg = _jpeg_bytes()
    assert f("ok.jpg", jpeg) is None
    assert f("padded.JPEG", jpeg + b"\x00" * 100) is None  # zeros after the end marker: allowed
    assert f("empty.jpg", b"") == "empty file"
    assert f("page.jpg", b"<html>" * 20) == "no JPEG start marker"
    assert f("cut.jpg", jpeg[: len(jpeg) - 2]).startswith("no JPEG end marker")
    assert f("far.jpg", jpeg + b"\x01" * TAIL_BYTES) .startswith("no JPEG end marker")  # FF D9 beyond the tail
    assert f("noise.jpg", b"\xff\xd8" + b"\x12\x34" * 50 + b"\xff\xd9").startswith("bad JPEG header")
    sof = b"\xff\xc0\x00\x0b\x08\x00\x10\x00\x10\x01\x01\x11\x00"  # 16 x 16, one component
    sos = b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00"
    app = b"\xff\xe0\x00\x04ab"
    assert f("chain.jpg", b"\xff\xd8" + app + b"\xff" + sof + sos + b"\x00" * 9 + b"\xff\xd9") is None  # fill byte
    assert f("noframe.jpg", b"\xff\xd8" + app + sos + b"\xff\xd9") == "bad JPEG header (no frame header)"
    assert f("short.jpg", b"\xff\xd8" + app + b"\xff\xd9") == "bad JPEG header (it ends before the image data)"
    assert f("rst.jpg", b"\xff\xd8" + b"\xff\xd0\x00\x04" + b"\x00" * 8 + b"\xff\xd9").endswith("before the image data)")
    assert f("ok.png", b"\x89PNG\r\n\x1a\n" + b"x" * 10) is None  # the signature only: decoding tells the rest
    assert f("bad.png", b"GIF89a" + b"x" * 10) == "no PNG signature"
    assert f("any.bmp", b"BM" + b"x" * 10) is None  # other formats: only emptiness is checked
    assert f("empty.bmp", b"") == "empty file"


@pytest.mark.filterwarnings("ignore:skipping")
def test_broken_files_are_flagged_at_indexing_and_cached(tree):
    from mobile_vmoe.data.loader import skipped_files

    jpeg = _jpeg_bytes()
    (tree / "train" / "c01" / "zero.jpg").write_bytes(b"")
    (tree / "train" / "c01" / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (tree / "val" / "c00" / "page.jpg").write_bytes(b"<html>not found</html>")
    cache = tree / "index.npz"
    with pytest.warns(UserWarning, match=r"skipping 2 broken file\(s\) in .*train \(.*\): c01/cut.jpg, c01/zero.jpg"):
        b = build_data(str(tree), img_size=16, augment="none", max_bad_fraction=0.5, index_cache=cache)
    assert b.train.load_failures == 2 and b.val.load_failures == 1
    assert skipped_files(b) == {"train": ["c01/cut.jpg", "c01/zero.jpg"], "val": ["c00/page.jpg"]}
    i = b.train.paths.index(str(tree / "train" / "c01" / "cut.jpg"))
    assert b.train[i][1] == b.train[b.train.next_readable(i)][1]  # stands in without a decode attempt
    b2 = build_data(str(tree), img_size=16, augment="none", max_bad_fraction=0.5, index_cache=cache)
    assert b2.train.load_failures == 2  # the cached index keeps the flags


# --- MixUp / CutMix and superclass targets --------------------------------------------------------

def test_superclass_targets_of_a_mix_are_exact():
    c2s = torch.tensor([0, 0, 0, 1, 1])  # classes 0-2 in superclass 0, 3-4 in superclass 1
    soft = torch.tensor([[0.0, 0.3, 0.0, 0.0, 0.7],   # 0.3 x class 1 (sc 0) + 0.7 x class 4 (sc 1)
                         [0.6, 0.0, 0.4, 0.0, 0.0]])  # both in sc 0 -> hard superclass target
    torch.testing.assert_close(superclass_targets(soft, c2s, 2), torch.tensor([[0.3, 0.7], [1.0, 0.0]]))
    assert superclass_targets(torch.tensor([4, 1]), c2s, 2).tolist() == [[0.0, 1.0], [1.0, 0.0]]


def test_mixup_mixes_images_and_targets_with_the_same_lambda():
    x = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 3, 8, 8).clone()  # image i is constant i
    y = torch.tensor([0, 1, 3, 4])
    mixed, t = MixupCutmix(5, mixup_alpha=0.8, cutmix_alpha=0.0)(x, y)
    lam = t[0, 0].item()  # image 0 keeps weight lam of class 0, gets 1 - lam of its roll partner
    partner = torch.roll(torch.arange(4), 1)  # torchvision mixes with the batch rolled by one
    for i in range(4):
        assert mixed[i, 0, 0, 0].item() == pytest.approx(lam * i + (1 - lam) * partner[i].item(), abs=1e-5)
        assert t[i, y[i]].item() == pytest.approx(lam) and t[i].sum().item() == pytest.approx(1.0)
    c2s = torch.tensor([0, 0, 0, 1, 1])
    s = superclass_targets(t, c2s, 2)
    # image 1 = lam x class 1 (sc 0) + (1 - lam) x class 0 (sc 0): all superclass 0
    assert s[1].tolist() == pytest.approx([1.0, 0.0])
    # image 2 = lam x class 3 (sc 1) + (1 - lam) x class 1 (sc 0)
    assert s[2].tolist() == pytest.approx([1 - lam, lam])


def test_cutmix_target_weight_is_the_pasted_area():
    x = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 3, 16, 16).clone()
    y = torch.tensor([0, 1, 2, 3])
    for _ in range(5):
        mixed, t = MixupCutmix(4, mixup_alpha=0.0, cutmix_alpha=1.0)(x, y)
        kept = (mixed[0, 0] == 0).float().mean().item()  # pixels still from image 0
        assert t[0, 0].item() == pytest.approx(kept, abs=1e-6)
        assert t[0, 3].item() == pytest.approx(1 - kept, abs=1e-6)  # pasted from image 3 (roll by one)


def test_mixup_off_returns_one_hot():
    x = torch.randn(2, 3, 4, 4)
    out, t = MixupCutmix(3, prob=0.0)(x, torch.tensor([2, 0]))
    assert torch.equal(out, x) and t.tolist() == [[0, 0, 1], [1, 0, 0]]
    with pytest.raises(ValueError):
        MixupCutmix(3, mixup_alpha=-1)


@pytest.mark.filterwarnings("ignore:skipping")
def test_load_failures_are_counted_across_dataloader_workers(tree):
    jpeg = _jpeg_bytes()
    (tree / "train" / "c03" / "00000_trunc.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    b = build_data(str(tree), img_size=16, augment="none", max_bad_fraction=0.5)
    loader = torch.utils.data.DataLoader(b.train, batch_size=4, num_workers=2)
    for _ in range(2):  # two epochs: the file is flagged once, not counted again
        labels = torch.cat([y for _, y in loader])
    assert len(labels) == 13 and b.train.load_failures == 1
    # the truncated c03 image was replaced by the next sample (also c03)
    assert torch.bincount(labels).tolist() == [3, 3, 3, 4]


# ----------------------------------------------------------------------------------- shapes
def test_shapes_spec_and_layout():
    from mobile_vmoe.data.shapes import class_names, parse_shapes_spec

    assert parse_shapes_spec("shapes") == (100, 10) and parse_shapes_spec("shapes:30:3") == (30, 3)
    for bad in ("shapes:5", "shapes:200:10", "shapes:40:11", "shapes:x:y"):
        with pytest.raises(MvmoeError, match="bad shapes spec"):
            parse_shapes_spec(bad)
    names = class_names(20, 10)
    # class c: superclass c % S, detail kind (c % S) % 3, variant c // S
    assert names[0] == "disk.texture0" and names[11] == "square.part1" and names[12] == "triangle.layout1"


def test_shapes_is_seeded_sized_and_planted():
    from mobile_vmoe.data.shapes import build_shapes

    a = build_data("shapes:20:4", augment="none", seed=1)
    assert a.train.images.shape == (20 * 60, 3, 32, 32) and len(a.val) == 20 * 20
    b, c = (build_shapes(20, 4, augment="none", seed=s, train_per_class=60, val_per_class=1) for s in (1, 2))
    assert torch.equal(a.train.images, b.train.images) and not torch.equal(a.train.images, c.train.images)
    assert a.planted_superclasses == [i % 4 for i in range(20)] and a.spec == "shapes:20:4"
    assert 0.0 <= float(a.train.images.min()) and float(a.train.images.max()) <= 1.0
    assert not torch.equal(a.train.images[:20], a.val.images[:20])  # train and val streams differ


def test_shapes_outlines_and_details_by_hand():
    """Object coordinates: the disk holds (0, 0) but not (0.9, 0.9); the ring not its centre; the
    part of variant 1 (place 1, light) sits at (0.45, 0.45); the layout split of place 0 is x > 0."""
    from mobile_vmoe.data.shapes import detail, outline

    x = torch.tensor([[[0.0, 0.9, 0.45, -0.8]]])
    y = torch.tensor([[[0.0, 0.9, 0.45, 0.0]]])
    assert outline(0, x, y).tolist() == [[[True, False, True, True]]]  # x^2 + y^2 < 1
    assert outline(3, x, y).tolist() == [[[False, False, False, True]]]  # 0.45 < x^2 + y^2 < 1
    where, colour = detail(1, 1, x, y, torch.zeros(1, 1, 1))
    assert where.tolist() == [[[False, False, True, False]]] and colour == 0
    where, colour = detail(2, 5, x, y, torch.zeros(1, 1, 1))  # variant 5: place 0, dark
    assert where.tolist() == [[[False, True, True, False]]] and colour == 1


# -------------------------------------------------------------------------- shapes-disjoint
def test_shapes_disjoint_is_registered_named_and_planted():
    from mobile_vmoe.data.shapes import parse_shapes_spec

    assert parse_shapes_spec("shapes-disjoint", "shapes-disjoint") == (100, 10)
    with pytest.raises(MvmoeError, match="bad shapes-disjoint spec"):
        parse_shapes_spec("shapes-disjoint:40:11", "shapes-disjoint")
    a = build_data("shapes-disjoint:20:4", augment="none", seed=1)
    s = build_data("shapes:20:4", augment="none", seed=1)
    assert a.spec == "shapes-disjoint:20:4" and a.name == "shapes-disjoint:20:4"
    assert a.planted_superclasses == [i % 4 for i in range(20)]
    # every superclass has its own detail family (shapes shares one kind between disk and ring)
    assert a.class_names[:5] == ["disk.stripes0", "square.square0", "triangle.split0", "ring.arc0", "disk.stripes1"]
    assert s.class_names[3] == "ring.texture0" and a.train.images.shape == s.train.images.shape
    assert not torch.equal(a.train.images, s.train.images)


def test_shapes_disjoint_details_by_hand():
    """Object coordinates: cross variant 0 is a dot of radius 0.28 at (0, 0.62); hbar place 2 is a
    notch |x| < 0.14; diamond place 4 the centre |x| + |y| < 0.4; ring place 0 an arc 18 +- 36 degrees."""
    import math

    from mobile_vmoe.data.shapes import disjoint_detail

    x = torch.tensor([[[0.0, 0.1, 0.2, math.cos(math.radians(18)), -0.9]]])
    y = torch.tensor([[[0.62, 0.0, 0.0, math.sin(math.radians(18)), 0.0]]])
    ph = torch.zeros(1, 1, 1)
    assert disjoint_detail(4, 0, x, y, ph)[0].tolist() == [[[True, False, False, False, False]]]
    assert disjoint_detail(5, 7, x, y, ph)[0].tolist() == [[[True, True, False, False, False]]]
    assert disjoint_detail(5, 7, x, y, ph)[1] == 1  # variant 7: place 2, dark
    assert disjoint_detail(7, 4, x, y, ph)[0].tolist() == [[[False, True, True, False, False]]]
    assert disjoint_detail(3, 0, x, y, ph)[0].tolist() == [[[False, True, True, True, False]]]


def test_planted_ari_by_hand():
    from mobile_vmoe.data.superclasses import planted_ari

    assert planted_ari([0, 0, 1, 1], [1, 1, 0, 0]) == pytest.approx(1.0)  # same partition, renamed
    # all pairs split: sum C(n_ij, 2) = 0, expected 2 * 2 / C(4, 2) = 2/3, max 2 -> (0 - 2/3) / (2 - 2/3)
    assert planted_ari([0, 0, 1, 1], [0, 1, 0, 1]) == pytest.approx(-0.5)
    with pytest.raises(MvmoeError, match="3 planted labels for 4 classes"):
        planted_ari([0, 0, 1], [0, 1, 0, 1])


def test_shapes_spec_with_images_per_class():
    from mobile_vmoe.data.shapes import parse_shapes_size

    assert parse_shapes_size("shapes-disjoint:20:4:90", "shapes-disjoint") == (20, 4, 90)
    assert parse_shapes_size("shapes", "shapes") == (100, 10, 60)
    with pytest.raises(MvmoeError, match="training images per class"):
        parse_shapes_size("shapes:20:4:x")
    b = build_data("shapes:4:2:6", augment="none")  # eval: max(20, 6 // 3) per class
    assert (len(b.train), len(b.val), b.spec) == (24, 80, "shapes:4:2:6")
    assert build_data("shapes:4:2:60", augment="none").spec == "shapes:4:2"  # the default count is not spelled
