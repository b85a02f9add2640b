"""An exported artifact and its metadata .json, read and checked (format: docs/formats.md).

The converters write these files and the profilers read them; both import this module, which
imports neither. It holds:

- ``tree_sha256``: size and sha256 of an artifact, a file or a folder (.mlpackage, a split LiteRT
  folder), as the .json records them at export;
- ``artifact_meta`` / ``verify_artifact`` / ``verified_metadata``: the .json beside an artifact, and
  the check that it was written for this very file (size and sha256);
- ``measured_meta``: what a latency or memory measurement carries from the .json;
- the split programs' table (the .json's "programs"): ``make_program_table`` builds it from the
  programs' shapes, ``read_program_table`` reads it back.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from .errors import MvmoeError
from .fileio import file_sha256, read_json_object


def tree_sha256(path: str | Path) -> tuple[int, str]:
    """(size in bytes, sha256) of a file, or of a folder (.mlpackage) as its files' relative
    paths and contents in sorted order."""
    path = Path(path)
    if not path.is_dir():
        return path.stat().st_size, file_sha256(path)
    h, size = hashlib.sha256(), 0
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f.relative_to(path).as_posix().encode() + b"\0" + file_sha256(f).encode())
        size += f.stat().st_size
    return size, h.hexdigest()


# ------------------------------------------------------------------------------- the .json beside
def artifact_meta(path: str | Path) -> dict | None:
    """The metadata `<stem>.json` beside the artifact (docs/formats.md), or None if there is none."""
    meta_path = Path(path).with_suffix(".json")
    if not meta_path.is_file():
        return None
    return read_json_object(meta_path)


VERIFIED = "the artifact's .json (model_config), which matches the artifact's size and sha256 recorded at export"
SKIP = "or give --no-verify to measure it unchecked"


def verify_artifact(path: str | Path) -> dict:
    """The .json of an exported artifact (given the artifact or the .json), after checking that it
    belongs to the artifact: size and sha256 as recorded at export. MvmoeError otherwise. Every
    command that reads an artifact calls this (profile flops, latency, memory)."""
    meta_path = Path(path).with_suffix(".json")
    meta = artifact_meta(path)
    if meta is None:
        raise MvmoeError(f"{meta_path} not found, so the artifact cannot be checked: `mvmoe export` writes it "
                         f"beside the artifact ({SKIP})")
    if not meta.get("artifact_sha256") or not meta.get("artifact"):
        raise MvmoeError(f"{meta_path} records no artifact sha256, so it cannot be checked against the artifact: "
                         f"re-export it with this version of `mvmoe export` ({SKIP})")
    artifact = meta_path.parent / str(meta["artifact"])
    if not artifact.exists():
        raise MvmoeError(f"{artifact} not found: {meta_path.name} describes it")
    size, digest = tree_sha256(artifact)
    if (size, digest) != (meta.get("artifact_size"), meta["artifact_sha256"]):
        raise MvmoeError(f"{artifact.name} is not the file {meta_path.name} was written for (size or sha256 differ: "
                         f"modified or replaced after export; re-export it, {SKIP})")
    return meta


def verified_metadata(path: str | Path) -> dict:
    """verify_artifact's .json, which must also hold the model_config (what `profile flops` counts)."""
    meta = artifact_meta(path)
    if meta is not None and not isinstance(meta.get("model_config"), dict):
        raise MvmoeError(f"{Path(path).with_suffix('.json')} has no model_config: re-export it with this version of "
                         "`mvmoe export`")
    return verify_artifact(path)


# carried from the artifact's .json into a latency or memory JSON; the checkpoint hash lets `mvmoe
# report` put the figure on the run that made the artifact, not on every run of the same model name
META_KEYS = ("model", "target", "backend", "precision", "dispatch", "macs", "checkpoint", "checkpoint_sha256")


def measured_meta(path: Path, verify: bool) -> tuple[dict | None, dict]:
    """-> (the artifact's .json or None, the keys a measurement carries from it). ``verify``: the
    .json must match the artifact (verify_artifact), and "verified": true. Unverified: the .json as
    found, "verified": false, and no checkpoint keys (the file may not be the checkpoint's export)."""
    if verify:
        meta = verify_artifact(path)
    else:
        meta = artifact_meta(path)
    keys = {k: meta.get(k) for k in META_KEYS if k in meta} if meta else {}
    if verify:
        keys.update(verified=True, artifact_sha256=meta["artifact_sha256"])
    else:
        keys = {k: v for k, v in keys.items() if k not in ("checkpoint", "checkpoint_sha256")}
        keys["verified"] = False
    return meta, keys


# ---------------------------------------------------------------------------- split program table
TRUNK_OUTPUTS = ["stream", "expert_index", "gate", "expert_probs"]
TAIL_INPUTS = ["stream", "gate"]
CHAIN = "trunk(image) -> stream, expert_index, gate, expert_probs; tail_<expert_index>(stream, gate) -> logits"


def make_program_table(file_of, experts: list[int], image_shape: list[int], trunk_output_shapes: list[list[int]],
                       tail_input_shapes: list[list[int]], logits_shape: list[int]) -> dict:
    """The .json's "programs": names, files (``file_of(program name)``), inputs and outputs with
    shapes, and the chain; one tail per expert in ``experts``."""
    tails = [{"expert": e, "name": f"tail_{e}", "file": file_of(f"tail_{e}"), "inputs": TAIL_INPUTS,
              "outputs": ["logits"]} for e in experts]
    return {"chain": CHAIN,
            "trunk": {"name": "trunk", "file": file_of("trunk"), "inputs": ["image"], "outputs": TRUNK_OUTPUTS,
                      "input_shapes": [list(image_shape)], "output_shapes": [list(s) for s in trunk_output_shapes]},
            "tail_input_shapes": [list(s) for s in tail_input_shapes], "tail_output_shapes": [list(logits_shape)],
            "tails": tails}


def read_program_table(path: str | Path) -> dict | None:
    """The .json's "programs" when ``path`` is a split artifact, else None."""
    meta = artifact_meta(path)
    progs = (meta or {}).get("programs")
    return progs if isinstance(progs, dict) else None
