"""Provenance: git commit and dirty flag, outside a checkout, and in run.json / summary.json."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from mobile_vmoe.provenance import git_state, provenance

GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


def _git(repo, *args):
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True,
                          env={**os.environ, **GIT_ENV}).stdout.strip()


def test_commit_and_dirty_flag_of_a_checkout(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("no git on this machine")
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.txt").write_text("1")
    _git(tmp_path, "add", "a.txt")
    _git(tmp_path, "commit", "-q", "-m", "one")
    head = _git(tmp_path, "rev-parse", "HEAD")
    assert git_state(tmp_path) == (head, False)
    (tmp_path / "new.txt").write_text("untracked files do not make it dirty")
    assert git_state(tmp_path) == (head, False)
    (tmp_path / "a.txt").write_text("2")
    assert git_state(tmp_path) == (head, True)


def test_outside_a_checkout_commit_is_null(tmp_path):
    assert git_state(tmp_path) == (None, None)
    p = provenance(["mvmoe", "train", "--out", "a b"], path=tmp_path)
    assert (p["commit"], p["dirty"]) == (None, None)
    assert p["command"] == "mvmoe train --out 'a b'"  # shell-quoted, so it can be pasted back
    assert {"python", "torch", "torchvision", "mvmoe"} <= set(p["versions"]) and isinstance(p["host"], str)


def test_training_writes_provenance_and_commit(tmp_path):
    from mobile_vmoe.config import ModelConfig, TrainConfig
    from mobile_vmoe.data.synthetic import build_synthetic
    from mobile_vmoe.train import train

    bundle = build_synthetic(4, 2, 16, train_per_class=16, val_per_class=4, seed=0)
    cfg = ModelConfig(name="t", img_size=16, num_classes=4, depth=1, width=32, heads=2, mlp_ratio=2.0, patch_size=4)
    s = train(TrainConfig(model=cfg, epochs=1, batch_size=16, ema_decay=0.0), bundle, tmp_path / "run",
              superclasses="none", quiet=True)
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    prov = run["provenance"]
    assert set(prov) == {"commit", "dirty", "command", "versions", "host"}
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["commit"] == s["commit"] == prov["commit"]
    if prov["commit"] is not None:  # the tests usually run in a checkout
        assert len(prov["commit"]) == 40 and isinstance(prov["dirty"], bool)
