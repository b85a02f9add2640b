"""Checkpoints: plain data and tensors only, written atomically, read with weights_only=True.

Layout of a checkpoint dict (all keys optional except format, version, model_config, model; every
key with its type is in docs/formats.md)::

    format          "mvmoe-checkpoint"
    version         1
    model_config    ModelConfig.to_dict()
    model           state_dict of the model
    ema             state_dict of the EMA weights (preferred for eval/export when present), ema_n_averaged
    class_names     list[str], index = class id
    superclasses    {"names": [...], "class_to_superclass": [int per class]} or None
    data            {"name", "spec", "seed", "img_size", "in_chans", "mean", "std", "preprocess"}: what
                    rebuilds the data and what the model expects (preprocess: the eval crop policy,
                    DataBundle.preprocess; absent from older checkpoints)
    train_config    TrainConfig.to_dict() (the training settings, "model" nested)
    metrics         dict of the last evaluation
    epoch, step     progress; last.pt adds the resume state of train.loop.TrainState.state_dict()
                    (optimizer, scheduler, epoch_step, RNG of every rank, steps_per_epoch, finished)

A file that is not such a dict (a stranger's pickle, a truncated download) gives a clear
MvmoeError; torch.load(weights_only=True) means loading never runs code from the file.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import torch

from .config import ModelConfig
from .errors import MvmoeError
from .fileio import atomic_write_bytes
from .models import MobileVMoE
from .models.weights import CHECKPOINT_FORMAT

FORMAT = CHECKPOINT_FORMAT
VERSION = 1


class _KeepWriteError:
    """A file wrapper that keeps the OSError of a failed write. torch's zip writer does not pass it
    on: a write cut short by a full disk surfaces as "unexpected pos ..." (RuntimeError) later."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def _torch_save(ckpt: dict[str, Any], f) -> None:
    out = _KeepWriteError(f)
    try:
        torch.save(ckpt, out)
    except RuntimeError:
        if out.error is not None:
            raise out.error from None  # atomic_write_bytes turns it into one line naming the file
        raise


def save_checkpoint(path: str | os.PathLike, ckpt: dict[str, Any]) -> Path:
    ckpt = {"format": FORMAT, "version": VERSION, **ckpt}
    if isinstance(ckpt.get("model_config"), ModelConfig):
        ckpt["model_config"] = ckpt["model_config"].to_dict()
    return atomic_write_bytes(path, lambda f: _torch_save(ckpt, f))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and check a checkpoint; never executes code from the file."""
    path = Path(path)
    if not path.exists():
        raise MvmoeError(f"checkpoint not found: {path}")
    if path.is_dir():
        hint = " (did you mean its model.pt or last.pt?)" if (path / "model.pt").exists() or (path / "last.pt").exists() else ""
        raise MvmoeError(f"checkpoint {path} is a directory{hint}")
    if not zipfile.is_zipfile(path):
        raise MvmoeError(f"{path} is not a PyTorch checkpoint (not a zip archive: truncated or a different format)")
    check_archive(path)
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
    check_finite(ckpt, path)
    return ckpt


def check_archive(path: Path) -> None:
    """Every member of the checkpoint's zip archive matches its CRC-32 (torch.load does not check
    them, so a flipped byte would load as a silently wrong weight)."""
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise MvmoeError(f"{path} is damaged: its zip archive cannot be read ({e})") from None
    if bad is not None:
        raise MvmoeError(f"{path} is damaged: {bad} fails its CRC check (a modified or badly copied file)")


def check_finite(ckpt: dict[str, Any], path: Path) -> None:
    """Every floating-point weight of "model" and "ema" is finite (no NaN / Inf)."""
    for key in ("model", "ema"):
        state = ckpt.get(key)
        if not isinstance(state, dict):
            continue
        for name, t in state.items():
            if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise MvmoeError(f"{path}: weight {key}.{name} holds NaN or Inf (a damaged file or a run that diverged)")


def config_from_checkpoint(ckpt: dict[str, Any]) -> ModelConfig:
    try:
        return ModelConfig.from_dict(ckpt["model_config"])
    except (TypeError, ValueError) as e:
        raise MvmoeError(f"checkpoint has an invalid model config: {e}") from None


def model_from_checkpoint(path_or_ckpt: str | os.PathLike | dict[str, Any], prefer_ema: bool = True):
    """Build the model a checkpoint describes and load its weights (EMA weights if present).

    Returns (model in eval mode, checkpoint dict).
    """
    ckpt = path_or_ckpt if isinstance(path_or_ckpt, dict) else load_checkpoint(path_or_ckpt)
    model = MobileVMoE(config_from_checkpoint(ckpt))
    state = ckpt.get("ema") if prefer_ema and ckpt.get("ema") is not None else ckpt["model"]
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise MvmoeError(f"checkpoint weights do not fit its model config: {str(e).splitlines()[0]}") from None
    return model.eval(), ckpt
