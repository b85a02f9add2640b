"""`mvmoe train` and `mvmoe superclasses`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer

from . import app


@app.command("train")
def train_cmd(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="preset name (default vmoe-6x64-p32 with 5 experts; see `mvmoe models`)"),
    data: str = typer.Option("digits", "--data", "-d", help="digits | synthetic | synthetic:<classes>:<superclasses> | PATH (ImageFolder with train/ and val/)"),
    set_: list[str] = typer.Option([], "--set", help="ModelConfig or TrainConfig field, KEY=VALUE (repeatable), e.g. lr=1e-3, num_experts=10"),
    epochs: Optional[int] = typer.Option(None, "--epochs", "-e", help="training epochs (default: the TrainConfig / recipe value)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="run directory (default: a new folder under ./runs/)"),
    resume: bool = typer.Option(False, "--resume", help="continue the run in --out from its last.pt"),
    superclasses: str = typer.Option("auto", "--superclasses", help="auto (dense twin -> confusion -> clustering) | FILE.json | none"),
    recipe: Optional[str] = typer.Option(None, "--recipe", help="named ImageNet recipe, e.g. imagenet-vmoe-12x192-p32 (see --list-recipes)"),
    list_recipes: bool = typer.Option(False, "--list-recipes", help="print the named recipes and exit"),
    seed: Optional[int] = typer.Option(None, "--seed", help="random seed (same as --set seed=N)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar or per-epoch lines"),
) -> None:
    """Train a (Mobile V-MoE) model. With no arguments: a small Mobile V-MoE on digits, dense
    twin -> superclasses -> MoE, in a few minutes on a laptop CPU."""
    from ..config import split_overrides
    from ..errors import MvmoeError
    from ..train import train
    from ..train.recipes import get_recipe, list_recipes as names

    if list_recipes:
        for name in names():
            r = get_recipe(name)
            paper = f"{r.paper_top1:.2f}%" if r.paper_top1 is not None else "-"
            typer.echo(f"{name:28s} model {r.model:16s} paper top-1 {paper:7s} {r.train['epochs']} epochs, global batch {r.train['batch_size']}")
        return
    if epochs is not None and epochs <= 0:
        raise MvmoeError(f"--epochs {epochs}: must be a positive integer")
    model_over, train_over = split_overrides(set_)
    overrides = {**model_over, **train_over}  # no --model and no --recipe: train() adds the default's
    summary = train(model, data, out, epochs=epochs, overrides=overrides, superclasses=superclasses, seed=seed,
                    resume=resume, quiet=quiet, recipe=recipe)
    if int(os.environ.get("RANK", "0")) != 0:
        return  # torchrun: rank 0 reports
    if summary.get("stopped"):
        typer.echo(f"stopped at epoch {summary['epoch']} (step {summary['step']}); continue with: "
                   f"mvmoe train --out {Path(summary['last']).parent} --resume")
        return
    parts = [f"{summary['model']} on {summary['dataset']}: top-1 {summary['top1']:.2f}%, top-5 {summary['top5']:.2f}%"]
    if summary.get("router_superclass_top1") is not None:
        parts.append(f"router superclass top-1 {summary['router_superclass_top1']:.2f}%")
    if summary.get("dense"):
        parts.append(f"dense twin top-1 {summary['dense']['top1']:.2f}%")
    typer.echo(", ".join(parts))
    typer.echo(f"{summary['macs'] / 1e6:.2f}M MACs/image, {summary['active_params'] / 1e6:.3f}M of {summary['params'] / 1e6:.3f}M "
               f"params active, {summary['images_per_sec']:.0f} train images/s")
    typer.echo(f"checkpoint: {summary['checkpoint']}")
    typer.echo(f"summary: {Path(summary['checkpoint']).parent / 'summary.json'}")


@app.command("superclasses")
def superclasses_cmd(
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="a trained (dense) model: model.pt"),
    data: str = typer.Option(..., "--data", "-d", help="the dataset the model was trained on (its val split is used)"),
    num: int = typer.Option(..., "--num", "-n", help="number of superclasses (= experts of the MoE to train)"),
    out: Path = typer.Option(..., "--out", "-o", help="superclasses JSON to write"),
    seed: int = typer.Option(0, "--seed", help="spectral clustering seed"),
) -> None:
    """Cluster classes into superclasses from a model's confusion matrix on held-out data."""
    from torch.utils.data import DataLoader

    from ..checkpoint import model_from_checkpoint
    from ..data import build_data
    from ..data.superclasses import save_superclasses, superclasses_from_model
    from ..errors import MvmoeError

    model, ck = model_from_checkpoint(checkpoint)
    # synthetic data is generated from the training seed: rebuild the instance the model saw
    bundle = build_data(data, model.cfg.img_size, augment="none", seed=int((ck.get("data") or {}).get("seed", 0)))
    if ck.get("class_names") and list(ck["class_names"]) != list(bundle.class_names):
        raise MvmoeError(f"{checkpoint} was trained on other classes than {data}'s {bundle.num_classes}")
    if model.cfg.num_classes != bundle.num_classes:
        raise MvmoeError(f"{checkpoint} has {model.cfg.num_classes} outputs, {data} has {bundle.num_classes} classes")
    found = superclasses_from_model(model, DataLoader(bundle.val, batch_size=256), bundle.class_names, num, seed=seed,
                                    source=f"confusion of {checkpoint} on {bundle.name} val")
    import numpy as np

    save_superclasses(out, found["classes"], found["class_to_superclass"], found["names"], found["source"],
                      confusion=np.asarray(found["confusion"]))
    typer.echo(json.dumps({"num_superclasses": found["num_superclasses"], "names": found["names"], "out": str(out)}))
