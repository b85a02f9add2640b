"""Checkpoints: plain data and tensors only, written atomically, read with weights_only=True.

Layout of a checkpoint dict (all keys optional except format, version, model_config, model)::

    format          "mvmoe-checkpoint"
    version         1
    model_config    ModelConfig.to_dict()
    model           state_dict of the model
    ema             state_dict of the EMA weights (preferred for eval/export when present)
    class_names     list[str], index = class id
    superclasses    {"names": [...], "class_to_superclass": [int per class]} or None
    data            {"name", "img_size", "in_chans", "mean", "std"}: what the model expects
    train_config    dict of the training settings
    metrics         dict of final / latest metrics
    epoch, step     progress; optimizer, scheduler, scaler, rng: resume state

A file that is not such a dict (a stranger's pickle, a truncated download) gives a clear
MvmoeError; torch.load(weights_only=True) means loading never runs code from the file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from .config import ModelConfig
from .errors import MvmoeError

FORMAT = "mvmoe-checkpoint"
VERSION = 1


def default_file_mode() -> int:
    """What ``open(path, "w")`` would give a new file: 0o666 less the process umask (0o644 usually)."""
    mask = os.umask(0)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: str | os.PathLike, write) -> Path:
    """Call ``write(fileobj)`` on a temporary file next to ``path``, fsync, then os.replace.

    A crash or Ctrl-C leaves either the old file or the new one, never half of one. The file gets
    the usual permissions (0o666 less the umask), not mkstemp's private 0o600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, default_file_mode())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, lambda f: f.write(text.encode()))


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 hex digest of a file's bytes, read in 1 MiB blocks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_json_object(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON file that must hold one object (metadata, summaries); MvmoeError naming the file if not."""
    import json

    try:
        d = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MvmoeError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise MvmoeError(f"{path}: expected a JSON object")
    return d


def save_checkpoint(path: str | os.PathLike, ckpt: dict[str, Any]) -> Path:
    ckpt = {"format": FORMAT, "version": VERSION, **ckpt}
    if isinstance(ckpt.get("model_config"), ModelConfig):
        ckpt["model_config"] = ckpt["model_config"].to_dict()
    return atomic_write_bytes(path, lambda f: torch.save(ckpt, f))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and check a checkpoint; never executes code from the file."""
    path = Path(path)
    if not path.exists():
        raise MvmoeError(f"checkpoint not found: {path}")
    if path.is_dir():
        hint = " (did you mean its model.pt or last.pt?)" if (path / "model.pt").exists() or (path / "last.pt").exists() else ""
        raise MvmoeError(f"checkpoint {path} is a directory{hint}")
    import zipfile

    if not zipfile.is_zipfile(path):
        raise MvmoeError(f"{path} is not a PyTorch checkpoint (not a zip archive: truncated or a different format)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, foreign pickle with code, random bytes
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise MvmoeError(f"{path} is not a readable mvmoe checkpoint ({reason})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise MvmoeError(f"{path} is not an mvmoe checkpoint (no 'format: {FORMAT}' entry)")
    if ckpt.get("version", 0) > VERSION:
        raise MvmoeError(f"{path} has checkpoint version {ckpt['version']}; this mvmoe reads up to {VERSION}")
    for key in ("model_config", "model"):
        if key not in ckpt:
            raise MvmoeError(f"{path} is missing '{key}'")
    return ckpt


def config_from_checkpoint(ckpt: dict[str, Any]) -> ModelConfig:
    try:
        return ModelConfig.from_dict(ckpt["model_config"])
    except (TypeError, ValueError) as e:
        raise MvmoeError(f"checkpoint has an invalid model config: {e}") from None


def model_from_checkpoint(path_or_ckpt: str | os.PathLike | dict[str, Any], prefer_ema: bool = True):
    """Build the model a checkpoint describes and load its weights (EMA weights if present).

    Returns (model in eval mode, checkpoint dict).
    """
    from .models import MobileVMoE

    ckpt = path_or_ckpt if isinstance(path_or_ckpt, dict) else load_checkpoint(path_or_ckpt)
    model = MobileVMoE(config_from_checkpoint(ckpt))
    state = ckpt.get("ema") if prefer_ema and ckpt.get("ema") is not None else ckpt["model"]
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise MvmoeError(f"checkpoint weights do not fit its model config: {str(e).splitlines()[0]}") from None
    return model.eval(), ckpt
