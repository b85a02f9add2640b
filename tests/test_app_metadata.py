"""The keys converters.app_metadata adds to an artifact's .json for the demo apps: preprocessing
policy, parity set, runtime requirement and file fingerprint (docs/apps.md, "Metadata for the apps")."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers import decode_rgb8, save_tiny_checkpoint, tiny_moe
from converters import app_metadata as A
from converters.images import EvalImages
from converters.wrapper import prepare_for_export

MEAN, STD = [0.5, 0.25, 0.125], [0.25, 0.5, 1.0]


def meta_input(baked: bool) -> dict:
    return {"shape": [1, 3, 16, 16], "layout": "NCHW", "mean": MEAN, "std": STD, "preprocessing_baked_in": baked}


def test_preprocessing_policy_per_dataset():
    folder = A.preprocessing_policy({"data": {"name": "pets", "spec": "/data/pets"}}, meta_input(False))
    # ImageFolder eval: Resize(int(16 / 0.875) = 18) + CenterCrop(16) keeps 16/18 of the short side.
    assert folder["crop_fraction"] == pytest.approx(16 / 18, abs=1e-12)
    assert folder["polarity"] is None and folder["eval_transform"].startswith("Resize(18,")
    digits = A.preprocessing_policy({"data": {"name": "digits", "spec": "digits"}}, meta_input(True))
    assert (digits["crop_fraction"], digits["polarity"], digits["baked_in"]) == (1.0, "light-on-dark", True)
    assert (digits["mean"], digits["std"], digits["layout"], digits["scale"]) == (MEAN, STD, "NCHW", 255.0)
    assert A.data_preprocess({"data": {"spec": "synthetic:20:4"}}).kind == "synthetic"
    assert A.data_preprocess({}).kind == "synthetic"


def test_shapes_checkpoint_tells_the_apps_uncropped(tmp_path):
    """The data bundle's policy travels in the checkpoint: shapes images are stored at the model
    size (32 px), so the apps must not crop (an ImageFolder model would keep 32/36)."""
    from mobile_vmoe import create_model
    from mobile_vmoe.checkpoint import load_checkpoint, save_checkpoint
    from mobile_vmoe.data import build_data

    data = build_data("shapes:4:2:4", augment="none")  # its natural 32 px
    model = create_model("vmoe-6x64-p32", depth=3, width=16, heads=1, img_size=32, patch_size=16, num_classes=4,
                         num_experts=2)
    save_checkpoint(tmp_path / "model.pt", {"model_config": model.cfg, "model": model.state_dict(),
                                            "class_names": data.class_names, "superclasses": None,
                                            "data": data.checkpoint_info()})
    ckpt = load_checkpoint(tmp_path / "model.pt")
    assert ckpt["data"]["preprocess"] == {"kind": "shapes", "crop_ratio": 1.0, "polarity": None}
    policy = A.preprocessing_policy(ckpt, {**meta_input(False), "shape": [1, 3, 32, 32]})
    assert (policy["crop_fraction"], policy["polarity"]) == (1.0, None)
    assert policy["eval_transform"] == "shapes images are stored at 32x32: no crop or resize"


def test_preprocess_stored_wins_and_old_checkpoints_fall_back_to_the_spec():
    stored = {"kind": "imagefolder", "crop_ratio": 0.5, "polarity": None}  # Resize(32) + CenterCrop(16)
    policy = A.preprocessing_policy({"data": {"spec": "shapes", "preprocess": stored}}, meta_input(False))
    assert policy["crop_fraction"] == pytest.approx(0.5, abs=1e-12)
    assert policy["eval_transform"].startswith("Resize(32,")
    # checkpoints written before data.preprocess: the kind the spec names
    for spec in ("shapes", "shapes:100:10:60", "shapes-disjoint:20:4"):
        assert A.preprocessing_policy({"data": {"spec": spec}}, meta_input(False))["crop_fraction"] == 1.0
    assert A.data_preprocess({"data": {"spec": "shapes-disjoint"}}).kind == "shapes-disjoint"


def test_model_input_by_hand():
    # one pixel (R, G, B) = (255, 0, 51): (x/255 - mean) / std = (1-.5)/.25, (0-.25)/.5, (.2-.125)/1
    rgb = np.array([[[[255, 0, 51]]]], dtype=np.uint8)  # (1, 1, 1, 3)
    x = A.model_input(rgb, MEAN, STD, baked=False)
    torch.testing.assert_close(x.view(-1), torch.tensor([2.0, -0.5, 0.075]), atol=1e-6, rtol=0)
    assert A.model_input(rgb, MEAN, STD, baked=True).view(-1).tolist() == [255.0, 0.0, 51.0]
    raw = torch.tensor([[[[254.6]], [[-3.0]], [[300.0]]]])  # (1, 3, 1, 1)
    assert A.to_rgb8(raw).reshape(-1).tolist() == [255, 0, 255]


@pytest.mark.parametrize("baked", [False, True])
def test_parity_set_logits_are_the_wrappers_on_the_stored_bytes(baked):
    wrapper = prepare_for_export(tiny_moe(4, 3, seed=0), bake_preprocessing=baked, mean=MEAN, std=STD)
    g = torch.Generator().manual_seed(3)
    raw = torch.rand(20, 3, 16, 16, generator=g) * 255  # not integers: the set stores rounded bytes
    images = EvalImages((raw / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1),
                          raw, torch.arange(20) % 4, "test")
    ps = A.parity_set(wrapper, images, meta_input(baked), "fp32", count=5)
    ps = json.loads(json.dumps(ps))  # what the app reads
    assert (ps["encoding"], ps["height"], ps["width"], ps["max_abs_diff_tol"]) == ("rgb8-base64", 16, 16, 1e-3)
    assert [e["label"] for e in ps["images"]] == [0, 1, 2, 2, 3]  # spread(20, 5) = 0, 5, 10, 14, 19 (mod 4)
    plain = prepare_for_export(tiny_moe(4, 3, seed=0), mean=MEAN, std=STD)
    for e in ps["images"]:
        rgb = decode_rgb8(e, 16, 16)  # (16, 16, 3)
        x = (torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) \
            / torch.tensor(STD).view(1, 3, 1, 1)
        with torch.no_grad():
            logits, probs = plain(x)
        np.testing.assert_allclose(e["logits"], logits[0].numpy(), rtol=0, atol=1e-4)
        np.testing.assert_allclose(e["expert_probs"], probs[0].numpy(), rtol=0, atol=1e-5)


def test_runtime_requirement_and_platforms():
    import importlib.metadata as md

    et = A.runtime_requirement("executorch", "xnnpack")
    assert et == {"name": "executorch", "min_version": md.version("executorch"), "backend": "xnnpack",
                  "platforms": ["android", "ios"]}
    assert A.runtime_requirement("executorch", "coreml")["platforms"] == ["ios"]
    assert A.runtime_requirement("coreml", None)["min_version"] == "17.0"
    assert A.runtime_requirement("tflite", None)["platforms"] == ["android"]


@pytest.mark.slow
def test_exported_json_parity_set_matches_pytorch_and_the_artifact(tmp_path):
    """A real ONNX export of an untrained digits MoE: the .json's parity set reproduces in PyTorch
    (from the checkpoint) and in onnxruntime on the artifact, the fingerprint is the file's."""
    import onnxruntime as ort

    from converters.pipeline import export_checkpoint
    from mobile_vmoe.checkpoint import model_from_checkpoint
    from mobile_vmoe.data import build_data

    data = build_data("digits", 16, augment="none")
    model = tiny_moe(4, 3, seed=0)
    ckpt = tmp_path / "model.pt"
    save_tiny_checkpoint(ckpt, model, list("abcd"), superclasses=None, data=data.checkpoint_info())
    [r] = export_checkpoint(ckpt, "onnx", None, "fp32", tmp_path / "out", parity_images=8, calibration_images=4)
    assert r.ok, r.error
    meta = json.loads(r.artifact.with_suffix(".json").read_text())
    for key in ("model", "target", "backend", "precision", "input", "labels", "superclasses", "experts", "k",
                "macs", "parity", "outputs"):
        assert key in meta, key
    assert meta["preprocessing"]["polarity"] == "light-on-dark"
    import hashlib

    blob = r.artifact.read_bytes()  # the app's stale-copy check: size and sha256 of the file
    assert meta["artifact_file"] == {"bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}
    assert (meta["artifact_size"], meta["artifact_sha256"]) == (len(blob), meta["artifact_file"]["sha256"])
    assert meta["runtime"]["name"] == "onnxruntime"
    ps = meta["parity_set"]
    assert len(ps["images"]) == 8 and ps["source"].startswith("digits val split")
    torch_model, _ = model_from_checkpoint(str(ckpt))
    wrapper = prepare_for_export(torch_model, mean=data.mean, std=data.std)
    sess = ort.InferenceSession(str(r.artifact), providers=["CPUExecutionProvider"])
    for e in ps["images"]:
        x = A.model_input(decode_rgb8(e, 16, 16)[None], data.mean, data.std, baked=False)  # (1, 3, 16, 16)
        with torch.no_grad():
            np.testing.assert_allclose(e["logits"], wrapper(x)[0][0].numpy(), rtol=0, atol=1e-5)
        got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0][0]
        assert np.abs(got - np.asarray(e["logits"])).max() <= ps["max_abs_diff_tol"]
