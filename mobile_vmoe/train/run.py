"""``train(...)``: the whole Mobile V-MoE recipe as stages, the library entry point of ``mvmoe train``.

With ``superclasses="auto"`` and a per-image MoE (the paper's recipe)::

    DIR/dense/            stage 1: the dense twin (registry.dense_twin), its own summary.json + model.pt
    DIR/superclasses.json stage 2: confusion matrix of the dense model on the held-out split, clustered
                          into num_experts superclasses (mobile_vmoe.data.superclasses)
    DIR/                  stage 3: the MoE, loss CE + router_weight * CE(router logits, superclass)

``superclasses=FILE`` skips stages 1-2; ``"none"`` trains the router end to end (with router_weight
ignored, since there is no target). Dense and per-token models have a single stage.
DIR/run.json records the resolved settings, so ``resume=True`` needs nothing but the directory.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from ..checkpoint import atomic_write_text
from ..config import ModelConfig, TrainConfig, split_overrides
from ..errors import MvmoeError
from ..registry import dense_twin, get_config
from .distributed import DistInfo, barrier, cleanup, setup_distributed
from .loop import fit

# The embedded default: `mvmoe train` with no arguments (see docs/training.md for why).
DEFAULT_MODEL = "vmoe-6x64-p32"
DEFAULT_DATA = "digits"
DEFAULT_OVERRIDES: dict[str, Any] = {"num_experts": 5, "threads": 1, "epochs": 45, "dense_epochs": 20}
# Settings that may change on --resume without changing what is computed.
RESUMABLE_KEYS = ("stop_after_steps", "workers", "log_every")


def adapt_to_data(cfg: ModelConfig, bundle, model_overrides: dict[str, Any]) -> ModelConfig:
    """The preset made to fit the data: img_size, num_classes, in_chans from the bundle.

    Small images (<= 64 px: digits, synthetic) get patch_size = img_size // 4 unless set, i.e.
    a 4 x 4 grid of 16 tokens (a 32-px image with the preset's patch 32 would be one token; 16 is
    the token count of the paper's 224-px p32 models, 49, within a factor of 3 and keeps a CPU run
    to minutes). Preset-style names are rewritten to say what was built: vmoe-6x64-p8-e5.
    """
    changes: dict[str, Any] = dict(model_overrides)
    changes.update(img_size=bundle.img_size, num_classes=bundle.num_classes, in_chans=bundle.in_chans)
    if "patch_size" not in model_overrides and bundle.img_size <= 64 and bundle.img_size != cfg.img_size:
        changes["patch_size"] = max(1, bundle.img_size // 4)
    patch = changes.get("patch_size", cfg.patch_size)
    if bundle.img_size % patch:
        raise MvmoeError(f"img_size={bundle.img_size} is not divisible by patch_size={patch}: set --set patch_size=N")
    new = cfg.replace(**changes)
    if "name" not in model_overrides and re.fullmatch(r"(vit|vmoe)-\d+x\d+-p\d+", cfg.name):
        name = f"{'vmoe' if new.is_moe else 'vit'}-{new.depth}x{new.width}-p{new.patch_size}"
        if new.is_moe:
            name += "" if new.num_experts == 10 else f"-e{new.num_experts}"
            name += "" if new.top_k == 1 else f"-k{new.top_k}"
            name += "-token" if new.routing == "token" else ""
        new = new.replace(name=name)
    return new


def default_out_dir(model_name: str, data: str) -> Path:
    tag = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(str(data)).name or str(data)).strip("-") or "data"
    return Path("runs") / f"{model_name}-{tag}-{time.strftime('%Y%m%d-%H%M%S')}"


def train(model_cfg: ModelConfig | str | None = None, data: str = DEFAULT_DATA, out_dir: str | Path | None = None, *,
          epochs: int | None = None, overrides: dict[str, Any] | None = None, superclasses: str = "auto",
          seed: int | None = None, resume: bool = False, quiet: bool = False, recipe: str | None = None) -> dict:
    """Train a model on ``data`` into ``out_dir``; returns the summary (also DIR/summary.json).

    model_cfg: a preset name or a ModelConfig (adapted to the data, see ``adapt_to_data``); None =
    the recipe's model, or without a recipe the embedded default (DEFAULT_MODEL + DEFAULT_OVERRIDES).
    overrides: ModelConfig and/or TrainConfig keys, e.g. {"router_weight": 0.0}, {"routing": "token"},
    {"num_experts": 0}, {"lr": 1e-3}. superclasses: "auto" | path of a superclasses JSON | "none".
    recipe: a name from ``recipes.list_recipes()``: its model and TrainConfig values are the base
    that ``model_cfg``-free calls and ``overrides`` start from. resume: continue DIR from run.json
    and last.pt; the settings come from run.json (only stop_after_steps, workers, log_every may change).
    """
    info = setup_distributed()
    try:
        return _train(model_cfg, data, out_dir, epochs, overrides or {}, superclasses, seed, resume, quiet, recipe, info)
    finally:
        cleanup(info)


def _train(model_cfg, data, out_dir, epochs, overrides, superclasses, seed, resume, quiet, recipe, info: DistInfo) -> dict:
    from ..data import build_data

    if model_cfg is None and recipe is None and not resume:
        model_cfg, overrides = DEFAULT_MODEL, {**DEFAULT_OVERRIDES, **overrides}
    model_over, train_over = split_overrides(dict(overrides))
    if resume:
        if out_dir is None:
            raise MvmoeError("--resume needs --out DIR (the run to continue)")
        out = Path(out_dir)
        run_file = out / "run.json"
        if not run_file.exists():
            raise MvmoeError(f"nothing to resume in {out}: no last.pt (and no run.json) there")
        run = json.loads(run_file.read_text())
        blocked = sorted(set(train_over) - set(RESUMABLE_KEYS)) + sorted(model_over)
        if blocked or epochs is not None and epochs != run["train_config"]["epochs"]:
            raise MvmoeError(f"--resume keeps the run's settings; cannot change {', '.join(blocked) or 'epochs'} "
                             f"(only {', '.join(RESUMABLE_KEYS)} may change)")
        cfg = ModelConfig.from_dict(run["model_config"])
        tcfg = TrainConfig.from_dict(run["train_config"]).replace(**train_over)
        data, superclasses = run["data"], run["superclasses"]
        bundle = build_data(data, cfg.img_size, augment=tcfg.augment, seed=tcfg.seed)
    else:
        base_train: dict[str, Any] = {}
        if recipe is not None:
            from .recipes import get_recipe

            r = get_recipe(recipe)
            base_train = dict(r.train)
            model_over = {**r.model_overrides, **model_over}
            if model_cfg is None:
                model_cfg = r.model
        tcfg = TrainConfig(**base_train).replace(**train_over)
        if epochs is not None:
            tcfg = tcfg.replace(epochs=epochs)
        if seed is not None:
            tcfg = tcfg.replace(seed=seed)
        base = get_config(model_cfg) if isinstance(model_cfg, str) else model_cfg
        bundle = build_data(data, model_over.get("img_size"), augment=tcfg.augment, seed=tcfg.seed)
        cfg = adapt_to_data(base, bundle, model_over)
        if superclasses not in ("auto", "none") and not Path(superclasses).is_file():
            raise MvmoeError(f"--superclasses {superclasses}: not auto, none, or an existing JSON file")
        out = Path(out_dir) if out_dir is not None else default_out_dir(cfg.name, data)
        if info.is_main:
            if (out / "last.pt").exists() or (out / "dense" / "last.pt").exists():
                raise MvmoeError(f"{out} already holds a run: continue it with --resume or pick another --out")
            run = {"model_config": cfg.to_dict(), "train_config": tcfg.to_dict(), "data": str(data),
                   "superclasses": str(superclasses), "recipe": recipe}
            atomic_write_text(out / "run.json", json.dumps(run, indent=1) + "\n")
        barrier(info)

    per_image = cfg.is_moe and cfg.routing == "image"
    extra: dict[str, Any] = {}
    sc = None
    if per_image and superclasses != "none":
        sc, extra = _superclass_stage(cfg, bundle, tcfg, out, superclasses, info, resume, quiet)
        if sc is None:  # the dense stage was stopped early
            return extra
    summary = fit(cfg, bundle, tcfg, out, superclasses=sc, dist_info=info, resume=resume, quiet=quiet,
                  stage="moe" if cfg.is_moe else "dense", extra_summary=extra)
    return summary


def _superclass_stage(cfg: ModelConfig, bundle, tcfg: TrainConfig, out: Path, superclasses: str, info: DistInfo,
                      resume: bool, quiet: bool) -> tuple[dict | None, dict]:
    """Stages 1-2 (or a given file): -> (superclasses dict, extra summary keys)."""
    from ..checkpoint import model_from_checkpoint
    from ..data.superclasses import load_superclasses, save_superclasses, superclasses_from_model

    if superclasses != "auto":
        sc = load_superclasses(superclasses, bundle.class_names)
        return sc, {"superclasses_file": str(superclasses)}
    path = out / "superclasses.json"
    dense_cfg = dense_twin(cfg)
    dense_cfg = dense_cfg.replace(name=re.sub(r"-(e\d+|k\d+|token)", "", dense_cfg.name))
    dense_tcfg = tcfg.replace(epochs=tcfg.dense_epochs or tcfg.epochs)
    dense = fit(dense_cfg, bundle, dense_tcfg, out / "dense", dist_info=info, resume=resume, quiet=quiet, stage="dense")
    if dense.get("stopped"):
        return None, dense
    if not (resume and path.exists()):
        if info.is_main:
            import numpy as np
            from torch.utils.data import DataLoader

            model, _ = model_from_checkpoint(out / "dense" / "model.pt")
            loader = DataLoader(bundle.val, batch_size=256, shuffle=False)
            found = superclasses_from_model(model.to(info.device), loader, bundle.class_names, cfg.num_experts,
                                            seed=tcfg.seed, device=info.device,
                                            source=f"confusion of {dense_cfg.name} ({out / 'dense' / 'model.pt'}) on {bundle.name} val")
            save_superclasses(path, found["classes"], found["class_to_superclass"], found["names"], found["source"],
                              confusion=np.asarray(found["confusion"]))
            if not quiet:
                print("superclasses: " + "; ".join(found["names"]) + f" -> {path}")
        barrier(info)
    sc = load_superclasses(path, bundle.class_names)
    extra = {"superclasses_file": str(path), "dense": {k: dense.get(k) for k in
                                                     ("model", "top1", "top5", "macs", "params", "checkpoint")}}
    if bundle.planted_superclasses is not None:
        from sklearn.metrics import adjusted_rand_score

        extra["superclass_ari"] = float(adjusted_rand_score(bundle.planted_superclasses, sc["class_to_superclass"]))
    return sc, extra
