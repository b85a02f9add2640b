"""mobile_vmoe/artifact.py: tree hashes by hand, the .json check, what a measurement carries, and the
split program table written and read back."""

from __future__ import annotations

import hashlib
import json

import pytest

from mobile_vmoe.artifact import (CHAIN, make_program_table, measured_meta, read_program_table, tree_sha256,
                                  verify_artifact)
from mobile_vmoe.errors import MvmoeError


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def test_tree_sha256_of_a_file_and_of_a_folder_by_hand(tmp_path):
    f = tmp_path / "m.onnx"
    f.write_bytes(b"abc")
    assert tree_sha256(f) == (3, sha(b"abc"))
    pkg = tmp_path / "m.mlpackage"
    (pkg / "Data").mkdir(parents=True)
    (pkg / "Data" / "w.bin").write_bytes(b"12345")
    (pkg / "Manifest.json").write_bytes(b"{}")
    # sorted relative paths: "Data/w.bin" before "Manifest.json"; each path NUL its file's hex digest
    want = sha(b"Data/w.bin\0" + sha(b"12345").encode() + b"Manifest.json\0" + sha(b"{}").encode())
    assert tree_sha256(pkg) == (7, want)


def _exported(tmp_path, **keys):
    art = tmp_path / "m_onnx_fp32.onnx"
    art.write_bytes(b"model bytes")
    meta = {"model": "m", "target": "onnx", "backend": None, "precision": "fp32", "artifact": art.name,
            "artifact_size": 11, "artifact_sha256": sha(b"model bytes"), "checkpoint": "/runs/a/model.pt",
            "checkpoint_sha256": "ab" * 32, "input": {"shape": [1, 3, 8, 8]}, **keys}
    art.with_suffix(".json").write_text(json.dumps(meta))
    return art


def test_verify_and_what_a_measurement_carries(tmp_path):
    art = _exported(tmp_path)
    assert verify_artifact(art)["model"] == "m" and verify_artifact(art.with_suffix(".json"))["model"] == "m"
    _, keys = measured_meta(art, verify=True)
    assert keys == {"model": "m", "target": "onnx", "backend": None, "precision": "fp32", "checkpoint": "/runs/a/model.pt",
                    "checkpoint_sha256": "ab" * 32, "verified": True, "artifact_sha256": sha(b"model bytes")}
    art.write_bytes(b"model bytez")  # same size, other bytes
    with pytest.raises(MvmoeError, match="is not the file m_onnx_fp32.json was written for"):
        verify_artifact(art)
    _, keys = measured_meta(art, verify=False)  # unchecked: no claim about the checkpoint
    assert keys == {"model": "m", "target": "onnx", "backend": None, "precision": "fp32", "verified": False}


def test_program_table_written_and_read_back(tmp_path):
    table = make_program_table(lambda name: f"{name}.tflite", [0, 1], [1, 3, 8, 8], [[1, 5, 16], [1, 1], [1, 1], [1, 2]],
                               [[1, 5, 16], [1, 1]], [1, 4])
    assert table["chain"] == CHAIN
    assert table["trunk"] == {"name": "trunk", "file": "trunk.tflite", "inputs": ["image"],
                              "outputs": ["stream", "expert_index", "gate", "expert_probs"],
                              "input_shapes": [[1, 3, 8, 8]], "output_shapes": [[1, 5, 16], [1, 1], [1, 1], [1, 2]]}
    assert [t["file"] for t in table["tails"]] == ["tail_0.tflite", "tail_1.tflite"]
    assert table["tail_output_shapes"] == [[1, 4]]
    folder = tmp_path / "m_tflite_fp32-split"
    folder.mkdir()
    assert read_program_table(folder) is None  # no .json beside it
    folder.with_suffix(".json").write_text(json.dumps({"programs": table}))
    assert read_program_table(folder) == table
    assert read_program_table(_exported(tmp_path)) is None  # a fused artifact has no table
