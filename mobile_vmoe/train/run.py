"""The Mobile V-MoE recipe as stages: the library behind ``mvmoe train``.

Three calls, in order::

    tcfg, bundle = resolve(model, data, settings, epochs=..., seed=..., recipe=...)   # config + data, checked
    summary = train(tcfg, bundle, out_dir, superclasses="auto")                       # a new run
    summary = resume(out_dir)                                                         # or continue one

With ``superclasses="auto"`` and a per-image MoE (the paper's recipe)::

    DIR/dense/            stage 1: the dense twin (models.registry.dense_twin), trained on the training
                          split less a stratified holdout (superclass_holdout, default 10 %)
    DIR/superclasses.json stage 2: confusion matrix of the dense model on that holdout (never on the
                          evaluation split), clustered into num_experts superclasses of equal size
                          (mobile_vmoe.data.superclasses)
    DIR/                  stage 3: the MoE, loss CE + router_weight * CE(router logits, superclass)

``superclasses=FILE`` skips stages 1-2; ``"none"`` trains the router end to end (router_weight
unused, since there is no target). Dense and per-token models have a single stage.
DIR/run.json records the resolved TrainConfig, data and superclasses, so ``resume`` needs nothing
but the directory.
"""

from __future__ import annotations

import functools
import os
import re
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from .. import runlock
from ..checkpoint import model_from_checkpoint
from ..config import ModelConfig, TrainConfig, field_names
from ..data import build_data
from ..data.bundle import check_classes
from ..data.holdout import HOLDOUT_SPLIT, split_for_superclasses
from ..data.loader import ignore_stop_signals
from ..data.superclasses import (confusion_matrix, load_superclasses, planted_ari, save_superclasses,
                                 superclasses_from_confusion)
from ..errors import MvmoeError
from ..fileio import atomic_write_json, file_sha256, read_json_object
from ..models import MobileVMoE
from ..models.registry import dense_twin, get_config, is_grid_name, model_name
from ..models.weights import fit_state, is_dense_weights, read_weights
from ..provenance import provenance
from . import pins
from .distill import load_teacher
from .distributed import DistInfo, all_reduce_sum, barrier, cleanup, setup_distributed, shard
from .loop import adopt, amp_dtype_for, finished_summary, fit
from .recipes import get_recipe

# The embedded default: `mvmoe train` with no arguments (see docs/training.md for why).
DEFAULT_MODEL = "vmoe-6x64-p32"
DEFAULT_DATA = "digits"
DEFAULT_SETTINGS: dict[str, Any] = {"num_experts": 5, "threads": 1, "epochs": 45, "dense_epochs": 20}
# Settings that may change on resume without changing what is computed.
RESUMABLE_KEYS = ("stop_after_steps", "workers", "prefetch", "log_every", "dist_timeout_min")


# --------------------------------------------------------------------------------- config
def base_config(model: str | ModelConfig | None, recipe: str | None) -> TrainConfig:
    """The starting TrainConfig: a recipe's, a preset's, or the embedded default's."""
    if recipe is not None:
        r = get_recipe(recipe)
        tcfg = TrainConfig(model=get_config(r.model).replace(**r.model_overrides), **r.train)
    elif model is None:
        return TrainConfig(model=get_config(DEFAULT_MODEL)).with_settings(DEFAULT_SETTINGS)
    else:
        tcfg = TrainConfig()
    if model is not None:
        tcfg = tcfg.replace(model=get_config(model) if isinstance(model, str) else model)
    return tcfg


def resolve(model: str | ModelConfig | None = None, data: str = DEFAULT_DATA, settings: dict[str, Any] | None = None,
            *, epochs: int | None = None, seed: int | None = None, recipe: str | None = None,
            out: str | Path | None = None):
    """The TrainConfig of a new run and its data, resolved once: -> (TrainConfig, DataBundle).

    model: preset name or ModelConfig (None = the recipe's, or the embedded default). settings:
    typed ``--set`` values (``config.parse_overrides``), ModelConfig and TrainConfig keys alike.
    epochs: sets ``epochs`` and, unless ``dense_epochs`` is in settings, the dense stage's too. The
    model is then fitted to the data (``adapt_to_data``). out: the run folder, when known, where a
    dataset folder's file index is cached and shared by the ranks (``index_cache``).
    """
    settings = dict(settings or {})
    if epochs is not None:
        if epochs <= 0:
            raise MvmoeError(f"--epochs {epochs}: must be a positive integer")
        settings = {"dense_epochs": epochs, **settings, "epochs": epochs}
    if seed is not None:
        settings["seed"] = seed
    model_keys = {k: v for k, v in settings.items() if k in field_names()}
    tcfg = base_config(model, recipe).with_settings({k: v for k, v in settings.items() if k not in model_keys})
    check_out_free(out)
    bundle = build_data(data, model_keys.get("img_size"), augment=tcfg.augment, seed=tcfg.seed,
                        index_cache=index_cache(out), class_names=tcfg.class_names or None)
    if "gate" not in model_keys and upcycles(tcfg):
        model_keys["gate"] = "unit"  # the upcycled MoE starts as the dense model (models/routing.topk_gates)
    # what was derived (a patch for small images) is said once the run's own checks pass (train)
    return tcfg.replace(model=adapt_to_data(tcfg.model, bundle, model_keys,
                                            notes=bundle.stats.setdefault("notes", []))), bundle


def upcycles(tcfg: TrainConfig) -> bool:
    """True when the MoE stage starts from dense weights: ``moe_init=upcycle``, or ``--init`` of a
    dense model given to an MoE preset."""
    if not tcfg.model.is_moe:
        return False
    return tcfg.moe_init == "upcycle" or (bool(tcfg.init) and is_dense_weights(tcfg.init))


def has_dense_stage(tcfg: TrainConfig, superclasses: str) -> bool:
    """The recipe's dense twin runs first (per-image MoE, ``--superclasses auto``)."""
    return tcfg.model.is_per_image and superclasses == "auto"


def stage_inits(tcfg: TrainConfig, superclasses: str, out: Path) -> tuple[str | None, str | None]:
    """(weights the dense stage starts from, weights the main stage starts from), None = random.

    Dense stage: ``--init`` when it is a dense model. Main stage: with ``moe_init=upcycle`` the
    dense stage's model.pt (or ``--init`` when there is no dense stage); otherwise ``--init`` (a
    dense one upcycled into an MoE)."""
    init = tcfg.init or None
    dense_init = init if init and has_dense_stage(tcfg, superclasses) and is_dense_weights(init) else None
    main = init
    if tcfg.model.is_moe and tcfg.moe_init == "upcycle" and has_dense_stage(tcfg, superclasses):
        main = str(out / "dense" / "model.pt")
    return dense_init, main


def check_init(tcfg: TrainConfig, superclasses: str) -> None:
    """Fail before any work when the start weights cannot fit the models that will load them."""
    if tcfg.model.is_moe and tcfg.moe_init == "upcycle" and not has_dense_stage(tcfg, superclasses) and not tcfg.init:
        raise MvmoeError("moe_init=upcycle copies the experts from a dense model: give --init DENSE_WEIGHTS "
                         "(or use --superclasses auto, whose dense stage it upcycles)")
    if tcfg.dense_stage == "init" and not tcfg.init:
        raise MvmoeError("dense_stage=init takes the dense stage from --init: give --init DENSE_WEIGHTS "
                         "(e.g. DeiT-Tiny's state dict for the 12x192-p16 upcycling recipe)")
    if tcfg.dense_stage == "init" and not (has_dense_stage(tcfg, superclasses) and is_dense_weights(tcfg.init)):
        raise MvmoeError("dense_stage=init needs a per-image MoE with --superclasses auto and dense --init weights")
    if not tcfg.init:
        return
    dense_init, main = stage_inits(tcfg, superclasses, Path("."))
    if dense_init:
        fit_state(read_weights(dense_init).state, MobileVMoE(dense_twin(tcfg.model)))
    if main == tcfg.init:
        fit_state(read_weights(main).state, MobileVMoE(tcfg.model))


def check_out_free(out: str | Path | None) -> None:
    """Rank 0: fail before any work when another training holds ``out`` (runlock; the lock itself
    is taken by train / resume)."""
    if out is not None and int(os.environ.get("RANK", "0")) == 0:
        runlock.check_free(out)


def index_cache(out: str | Path | None) -> Path | None:
    """Where a run keeps its dataset's file index (scanned once by rank 0, read by the others)."""
    return Path(out) / "data_index.npz" if out is not None else None


def adapt_to_data(cfg: ModelConfig, bundle, model_overrides: dict[str, Any],
                  notes: list[str] | None = None) -> ModelConfig:
    """The preset made to fit the data: img_size, num_classes, in_chans from the bundle.

    Small images (<= 64 px: digits, synthetic) get patch_size = img_size // 4 unless set (the
    largest divisor of img_size up to that when it does not divide; ``pick_patch``), i.e.
    a 4 x 4 grid of 16 tokens (a 32-px image with the preset's patch 32 would be one token; 16 is
    the token count of the paper's 224-px p32 models, 49, within a factor of 3 and keeps a CPU run
    to minutes). Preset-style names are rewritten to say what was built: vmoe-6x64-p8-e5.
    A derived patch is said in one line: appended to ``notes`` when given, else a warning.
    """
    changes: dict[str, Any] = dict(model_overrides)
    changes.update(img_size=bundle.img_size, num_classes=bundle.num_classes, in_chans=bundle.in_chans)
    changes["patch_size"], note = pick_patch(cfg, bundle.img_size, model_overrides.get("patch_size"))
    if note and notes is not None:
        notes.append(note)
    elif note:
        warnings.warn(note, stacklevel=2)
    new = cfg.replace(**changes)
    if "name" not in model_overrides and is_grid_name(cfg.name):
        new = new.replace(name=model_name(new))
    return new


def pick_patch(cfg: ModelConfig, img_size: int, given: int | None) -> tuple[int, str | None]:
    """The patch size for ``img_size`` and, when it was derived, the line that says so: the one given
    with --set; else, for small images (<= 64 px) that the preset was not made for, the largest
    divisor of img_size up to img_size // 4 (a grid of at least 4 x 4); else the preset's. A patch
    that does not divide the image is refused, saying where it came from and which sizes would fit."""
    if given is not None:
        patch, origin = given, "set with --set"
    elif img_size <= 64 and img_size != cfg.img_size:
        patch = max(d for d in range(1, max(1, img_size // 4) + 1) if img_size % d == 0)
        return patch, (f"patch_size {patch} instead of {cfg.name}'s {cfg.patch_size}: {img_size}-px images get a "
                       f"{img_size // patch} x {img_size // patch} grid of patches (set --set patch_size=N to choose)")
    else:
        patch, origin = cfg.patch_size, f"{cfg.name}'s patch"
    if img_size % patch:
        fits = [d for d in range(2, img_size // 2 + 1) if img_size % d == 0][-4:] or [1]
        raise MvmoeError(f"img_size={img_size} is not divisible by patch_size={patch} ({origin}): set --set "
                         f"patch_size=N with N dividing {img_size}, e.g. {', '.join(map(str, fits))}")
    return patch, None


def check_run(tcfg: TrainConfig, bundle, superclasses: str, out: Path) -> None:
    """Every check that needs only the config and the data, before anything trains or is written."""
    cfg = tcfg.model
    check_classes(bundle.name, bundle.class_names)
    if superclasses not in ("auto", "none") and not Path(superclasses).is_file():
        raise MvmoeError(f"--superclasses {superclasses}: not auto, none, or an existing JSON file")
    if cfg.is_per_image and superclasses == "auto" and cfg.num_experts > bundle.num_classes:
        raise MvmoeError(f"{cfg.num_experts} experts but {bundle.name} has {bundle.num_classes} classes: superclasses "
                         "cluster classes, one per expert; lower num_experts or use --superclasses none")
    if cfg.is_per_image and superclasses not in ("auto", "none"):
        n = load_superclasses(superclasses, bundle.class_names)["num_superclasses"]
        if n != cfg.num_experts:
            raise MvmoeError(f"{superclasses} has {n} superclasses for {cfg.num_experts} experts: they must be equal")
    if tcfg.batch_size > len(bundle.train):
        raise MvmoeError(f"{len(bundle.train)} training images are fewer than one batch of {tcfg.batch_size}: "
                         "lower it with --set batch_size=N")
    if out.exists() and not out.is_dir():
        raise MvmoeError(f"--out {out} is a file, not a directory")
    if tcfg.teacher:
        load_teacher(tcfg.teacher, bundle)  # a missing or unfitting teacher fails before training
    check_init(tcfg, superclasses)


def default_out_dir(model_name: str, data: str) -> Path:
    tag = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(str(data)).name or str(data)).strip("-") or "data"
    return Path("runs") / f"{model_name}-{tag}-{time.strftime('%Y%m%d-%H%M%S')}"


# ------------------------------------------------------------------------------ new / resume
def train(tcfg: TrainConfig, bundle, out_dir: str | Path | None = None, *, superclasses: str = "auto",
          quiet: bool = False) -> dict:
    """Train a new run into ``out_dir`` (default: a new folder under ./runs/); returns the summary
    (also written to DIR/summary.json). When an interrupt or ``stop_after_steps`` ends it early it
    returns ``{"stopped": True, "epoch", "step", "last", "run_dir"}`` and writes no summary.json:
    continue with ``resume(run_dir)``.
    """
    out = Path(out_dir) if out_dir is not None else default_out_dir(tcfg.model.name, bundle.spec or bundle.name)
    check_run(tcfg, bundle, str(superclasses), out)
    info = setup_distributed(tcfg.dist_timeout_min)
    lock = None
    try:
        lock = runlock.acquire(out) if info.is_main else None  # held for the run's life: one training per folder
        if info.is_main:
            if (out / "last.pt").exists() or (out / "dense" / "last.pt").exists():
                raise MvmoeError(f"{out} already holds a run: continue it with --resume or pick another --out")
            run = {"train_config": tcfg.replace(stop_after_steps=0).to_dict(), "data": bundle.spec or bundle.name,
                   "superclasses": str(superclasses), "provenance": provenance(),
                   "lr": {"per_512": tcfg.lr, "global_batch": tcfg.global_batch, "effective": tcfg.effective_lr}}
            if tcfg.teacher:
                run["teacher_sha256"] = file_sha256(tcfg.teacher)
            if tcfg.init:
                run["init_sha256"] = file_sha256(tcfg.init)
            atomic_write_json(out / "run.json", pins.pin_new_run(run, out, str(superclasses), RESUMABLE_KEYS))
            for note in bundle.stats.pop("notes", []):  # what resolve derived, said now that the run goes ahead
                warnings.warn(note, stacklevel=2)
        barrier(info)
        return run_stages(tcfg, bundle, out, str(superclasses), info, resume=False, quiet=quiet)
    finally:
        runlock.release(lock)
        cleanup(info)


def resume(out_dir: str | Path, settings: dict[str, Any] | None = None, *, quiet: bool = False) -> dict:
    """Continue the run in ``out_dir`` from its run.json and last.pt files; only RESUMABLE_KEYS may
    change (``settings``)."""
    out = Path(out_dir)
    if not (out / "run.json").is_file():
        raise MvmoeError(f"nothing to resume in {out}: no run.json there (is it the run's top folder?)")
    run = read_json_object(out / "run.json")
    pins.verify_settings(out, run, RESUMABLE_KEYS)  # a hand-edited run.json is refused, naming it
    blocked = sorted(set(settings or {}) - set(RESUMABLE_KEYS))
    if blocked:
        raise MvmoeError(f"--resume keeps the run's settings; cannot change {', '.join(blocked)} "
                         f"(only {', '.join(RESUMABLE_KEYS)} may change)")
    saved = dict(run["train_config"])
    saved.setdefault("model", run.get("model_config"))  # run.json of older versions kept it apart
    # stop_after_steps is a limit of one invocation, not of the run
    tcfg = TrainConfig.from_dict(saved).replace(**{"stop_after_steps": 0, **(settings or {})})
    check_out_free(out)
    bundle = build_data(run["data"], tcfg.model.img_size, augment=tcfg.augment, seed=tcfg.seed,
                        index_cache=index_cache(out), class_names=tcfg.class_names or None)
    pins.verify_or_pin(out, "data_index", index_cache(out), is_main=int(os.environ.get("RANK", "0")) == 0)
    check_teacher_unchanged(tcfg, run)
    check_init_unchanged(tcfg, run, out)
    info = setup_distributed(tcfg.dist_timeout_min)
    lock = None
    try:
        lock = runlock.acquire(out) if info.is_main else None
        return run_stages(tcfg, bundle, out, run["superclasses"], info, resume=True, quiet=quiet)
    finally:
        runlock.release(lock)
        cleanup(info)


def check_teacher_unchanged(tcfg: TrainConfig, run: dict) -> None:
    """A resumed run must distill from the very teacher it started with."""
    if not tcfg.teacher:
        return
    if not Path(tcfg.teacher).is_file():
        raise MvmoeError(f"the run's teacher {tcfg.teacher} is gone; it is needed to resume")
    if run.get("teacher_sha256") and file_sha256(tcfg.teacher) != run["teacher_sha256"]:
        raise MvmoeError(f"the run's teacher {tcfg.teacher} changed since the run started; cannot resume exactly")


def check_init_unchanged(tcfg: TrainConfig, run: dict, out: Path) -> None:
    """A resumed run whose stages have not all started reads ``--init`` again: it must be the file
    the run started with."""
    if not tcfg.init or (out / "last.pt").exists():  # the main stage started: --init is not read again
        return
    if not Path(tcfg.init).is_file():
        raise MvmoeError(f"the run's --init {tcfg.init} is gone; it is needed to resume")
    if run.get("init_sha256") and file_sha256(tcfg.init) != run["init_sha256"]:
        raise MvmoeError(f"the run's --init {tcfg.init} changed since the run started; cannot resume exactly")


def run_stages(tcfg: TrainConfig, bundle, out: Path, superclasses: str, info: DistInfo, *, resume: bool,
               quiet: bool) -> dict:
    """Stages 1-2 when the run needs them, then the model itself."""
    extra: dict[str, Any] = {}
    sc = None
    if tcfg.model.is_per_image and superclasses != "none":
        sc, extra = superclass_stage(tcfg, bundle, out, superclasses, info, resume, quiet)
        if sc is None:  # the dense stage was stopped early
            return {**extra, "run_dir": str(out)}
    _, init = stage_inits(tcfg, superclasses, out)
    if init is not None and not quiet and info.is_main and not (resume and (out / "last.pt").exists()):
        what = "upcycled from" if upcycles(tcfg) and tcfg.model.is_moe else "starting from"
        print(f"{'moe' if tcfg.model.is_moe else 'dense'}: {what} {init}")
    summary = fit(tcfg, bundle, out, superclasses=sc, dist_info=info, resume=resume, quiet=quiet,
                  stage="moe" if tcfg.model.is_moe else "dense", extra_summary=extra, init=init)
    return {**summary, "run_dir": str(out)} if summary.get("stopped") else summary


def superclass_stage(tcfg: TrainConfig, bundle, out: Path, superclasses: str, info: DistInfo, resume: bool,
                     quiet: bool) -> tuple[dict | None, dict]:
    """Stages 1-2 (or a given file): -> (superclasses dict, extra summary keys)."""
    if superclasses != "auto":
        pins.verify_or_pin(out, "superclasses", superclasses, is_main=info.is_main)
        return load_superclasses(superclasses, bundle.class_names), {"superclasses_file": str(superclasses)}
    path = out / "superclasses.json"
    dense_model = dense_twin(tcfg.model)
    dense_tcfg = tcfg.replace(model=dense_model.replace(gate="prob"), epochs=tcfg.dense_epochs or tcfg.epochs,
                              teacher="", moe_init="scratch")
    rest, holdout = split_for_superclasses(bundle, tcfg.superclass_holdout, tcfg.seed)
    dense_init, _ = stage_inits(tcfg, superclasses, out)
    if tcfg.dense_stage == "init":
        dense = adopt_dense(dense_tcfg, rest, out / "dense", info, quiet)
    else:
        dense = fit(dense_tcfg, rest, out / "dense", dist_info=info, resume=resume, quiet=quiet, stage="dense",
                    init=dense_init)
    if dense.get("stopped"):
        return None, dense
    pins.verify_or_pin(out, "dense_checkpoint", out / "dense" / "model.pt", is_main=info.is_main)
    if resume and path.exists():
        pins.verify_or_pin(out, "superclasses", path, is_main=info.is_main)
    else:
        fit_superclasses(out / "dense" / "model.pt", holdout, bundle, tcfg, path, info.device, quiet, info=info)
        if info.is_main:
            pins.pin(out, "superclasses", path)
        barrier(info)
    sc = load_superclasses(path, bundle.class_names)
    extra = {"superclasses_file": str(path), "superclass_sizes": sc.get("sizes"), "dense": {k: dense.get(k) for k in
                                                     ("model", "top1", "top5", "macs", "params", "epochs", "checkpoint")}}
    if bundle.planted_superclasses is not None:
        extra["superclass_ari"] = planted_ari(list(bundle.planted_superclasses), list(sc["class_to_superclass"]))
    return sc, extra


def adopt_dense(dense_tcfg: TrainConfig, rest, out: Path, info: DistInfo, quiet: bool) -> dict:
    """``dense_stage=init``: the ``--init`` weights are the dense stage, untrained here: evaluated and
    written as out/model.pt (+ model.safetensors, summary.json) as a trained dense stage leaves them."""
    if (out / "summary.json").exists():
        return finished_summary(out)
    return adopt(dense_tcfg, rest, out, dense_tcfg.init, dist_info=info, quiet=quiet, stage="dense")


def fit_superclasses(dense_path: Path, holdout, bundle, tcfg: TrainConfig, path: Path, device, quiet: bool,
                     num: int | None = None, info: DistInfo | None = None) -> dict:
    """Stage 2: the dense model's confusion matrix on the train holdout, clustered into ``num``
    (default num_experts) superclasses, -> ``path``.

    Every rank runs its shard of the holdout (with ``workers`` loader processes) and the counts are
    summed over ranks; rank 0 clusters and writes, the others wait and return what it wrote."""
    info = info or DistInfo(device=torch.device(device))
    model, _ = model_from_checkpoint(dense_path)
    loader = DataLoader(shard(holdout, info), batch_size=256, shuffle=False, num_workers=tcfg.workers,
                        pin_memory=torch.device(device).type == "cuda", worker_init_fn=ignore_stop_signals)
    conf = confusion_matrix(model.to(device), loader, len(bundle.class_names), device,
                            amp_dtype=amp_dtype_for(tcfg.amp, torch.device(device)),
                            reduce=functools.partial(all_reduce_sum, info=info), mode=tcfg.superclass_confusion)
    if info.is_main:
        found = superclasses_from_confusion(
            conf, bundle.class_names, num or tcfg.model.num_experts, seed=tcfg.seed, method=tcfg.superclass_clustering,
            source=f"confusion of {model.cfg.name} ({dense_path}) on a {bundle.name} train holdout",
            fit_on={"split": HOLDOUT_SPLIT, "images": len(holdout), "fraction": tcfg.superclass_holdout,
                    "seed": tcfg.seed, "confusion": tcfg.superclass_confusion})
        save_superclasses(path, found)
        if not quiet:
            print("superclasses: " + "; ".join(found["names"]) + f" (sizes {found['sizes']}) -> {path}")
    barrier(info)
    return load_superclasses(path, bundle.class_names)
