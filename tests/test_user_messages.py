"""Messages a new user meets: one clear line each, saying what was derived and from what, never a
traceback, never an option dropped without a word."""

from __future__ import annotations

import json
import os
import warnings

import pytest

from conftest import mvmoe
from helpers import one_line_error
from mobile_vmoe.errors import MvmoeError


def test_a_300_character_out_folder_name_is_one_line(tmp_path):
    long = tmp_path / ("a" * 300)
    code, _, err = mvmoe("train", "--data", "synthetic:4:2", "--superclasses", "none", "--out", long, "-q",
                         "--set", "img_size=16", "--set", "num_experts=2", "--set", "stop_after_steps=1")
    line = one_line_error(code, err, "300 bytes", "255 bytes per name", "aaaaaaaaaaaaaaaaaaaa…aaaaaaaaaaaa")
    assert len(line) < 250
    code, _, err = mvmoe("train", "--data", "synthetic:4:2", "--superclasses", "none", "--out", long / "run", "-q",
                         "--set", "img_size=16", "--set", "num_experts=2", "--set", "stop_after_steps=1")
    one_line_error(code, err, "300 bytes")


def test_patch_for_small_images_is_said_and_derived_so_it_divides():
    from mobile_vmoe.models.registry import get_config
    from mobile_vmoe.train.run import pick_patch

    cfg = get_config("vmoe-6x64-p32")
    patch, note = pick_patch(cfg, 32, None)
    assert patch == 8 and note.startswith("patch_size 8 instead of vmoe-6x64-p32's 32: 32-px images get a 4 x 4 grid")
    # 30 px: 30 // 4 = 7 does not divide 30; the largest divisor up to 7 is 6 (a 5 x 5 grid)
    patch, note = pick_patch(cfg, 30, None)
    assert patch == 6 and "30-px images get a 5 x 5 grid" in note
    assert pick_patch(cfg, 30, 5) == (5, None)  # nothing derived: no line
    assert pick_patch(cfg.replace(img_size=224), 224, None) == (32, None)
    with pytest.raises(MvmoeError, match=r"img_size=30 is not divisible by patch_size=7 \(set with --set\): set --set "
                                         r"patch_size=N with N dividing 30, e\.g\. 5, 6, 10, 15"):
        pick_patch(cfg, 30, 7)
    with pytest.raises(MvmoeError, match=r"img_size=100 is not divisible by patch_size=32 \(vmoe-6x64-p32's patch\)"):
        pick_patch(cfg, 100, None)


def test_the_derived_patch_is_said_once_the_run_goes_ahead_and_not_before_an_error(tmp_path):
    common = ["train", "--data", "synthetic:4:2", "--set", "img_size=16", "--set", "num_experts=2", "-q"]
    code, _, err = mvmoe(*common, "--set", "num_experts=6", "--out", tmp_path / "a")
    one_line_error(code, err, "6 experts")
    assert "warning" not in err  # the error alone
    code, _, err = mvmoe(*common, "--superclasses", "none", "--set", "stop_after_steps=1", "--out", tmp_path / "b")
    assert code == 0 and "warning: patch_size 4 instead of vmoe-6x64-p32's 32: 16-px images get a 4 x 4 grid" in err


def test_profile_memory_defaults_to_a_loader_the_runtime_has_and_wants_images(tmp_path):
    from converters import targets as T
    from mobile_vmoe.profile.memory import default_loader

    assert [default_loader(T.find(t)) for t in ("onnx", "executorch", "tflite")] == ["file", "mmap", "mmap"]
    (tmp_path / "m.pte").write_bytes(b"x")
    code, _, err = mvmoe("profile", "memory", tmp_path / "m.pte", "--images", "0")
    one_line_error(code, err, "--images 0", ">= 1")


def test_per_op_is_never_dropped_without_a_word(tmp_path):
    from mobile_vmoe.profile.latency import per_op_unavailable

    (tmp_path / "m.pte").write_bytes(b"x")
    assert per_op_unavailable(tmp_path / "m.pte", "local") is None
    assert "--device local" in per_op_unavailable(tmp_path / "m.pte", "android")
    assert "runners of executorch-xnnpack, executorch-coreml, executorch-portable only" in \
        per_op_unavailable(tmp_path / "m.tflite", "local")
    (tmp_path / "s.pte").write_bytes(b"x")
    (tmp_path / "s.json").write_text(json.dumps({"artifact": "s.pte", "programs": {"trunk": {"name": "trunk"}}}))
    assert "--experts fused" in per_op_unavailable(tmp_path / "s.pte", "local")


def test_more_threads_than_cores_is_one_warning():
    from mobile_vmoe.profile.latency import warn_threads

    cores = os.cpu_count() or 1
    with pytest.warns(UserWarning, match=rf"--threads {cores + 998} is more than the {cores} CPU cores here"):
        warn_threads(cores + 998)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_threads(cores)
        warn_threads(None)


def test_progress_bar_shows_no_nan_before_the_first_logged_loss():
    from mobile_vmoe.train.metrics import Progress

    p = Progress(total=3, done=0, stage="dense", enabled=True)
    with p:
        assert p._bar.tasks[0].fields["loss"] == "-"
        p.update(1, None, 10.0)
        assert p._bar.tasks[0].fields["loss"] == "-"
        p.update(2, 1.23456, 10.0)
        assert p._bar.tasks[0].fields["loss"] == "1.235"


def test_epoch_counts_read_as_english():
    from mobile_vmoe.cli.cmd_train import epochs_text

    assert (epochs_text(1), epochs_text(20), epochs_text(None)) == ("1 epoch", "20 epochs", "? epochs")
