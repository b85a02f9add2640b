"""`mvmoe train` and `mvmoe superclasses`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from ..config import parse_overrides
from ..errors import MvmoeError
from ..fileio import to_json
from . import app

# torch, the data and the trainer are imported inside the commands: `--help` stays fast


@app.command("train")
def train_cmd(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="preset name (default vmoe-6x64-p32 with 5 experts; see `mvmoe models`)"),
    data: Optional[str] = typer.Option(None, "--data", "-d", help="digits (default) | synthetic | synthetic:<classes>:<superclasses> | PATH (ImageFolder with train/ and val/)"),
    set_: list[str] = typer.Option([], "--set", help="ModelConfig or TrainConfig field, KEY=VALUE (repeatable), e.g. lr=1e-3, num_experts=10"),
    epochs: Optional[int] = typer.Option(None, "--epochs", "-e", help="training epochs (default: the TrainConfig / recipe value)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="run directory (default: a new folder under ./runs/)"),
    resume: bool = typer.Option(False, "--resume", help="continue the run in --out from its last.pt"),
    superclasses: Optional[str] = typer.Option(None, "--superclasses", help="auto (default: dense twin -> confusion -> clustering) | FILE.json | none"),
    recipe: Optional[str] = typer.Option(None, "--recipe", help="named ImageNet recipe, e.g. imagenet-vmoe-12x192-p32 (see --list-recipes)"),
    list_recipes: bool = typer.Option(False, "--list-recipes", help="print the named recipes and exit"),
    seed: Optional[int] = typer.Option(None, "--seed", help="random seed (same as --set seed=N)"),
    teacher: Optional[Path] = typer.Option(None, "--teacher", help="distill from this checkpoint (any mvmoe model.pt "
                                           "on the same data); --set distill=soft|hard, distill_weight=W, distill_tau=T"),
    init: Optional[Path] = typer.Option(None, "--init", help="start from these weights: an mvmoe model.pt / "
                                        "model.safetensors, or a timm / DeiT / torchvision ViT state dict (.pth .pt .bin "
                                        ".safetensors); an MoE preset given dense weights upcycles them"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar or per-epoch lines"),
    class_names: Optional[Path] = typer.Option(None, "--class-names", help="ImageFolder: a text file with one human "
                                               "class name per line, in the sorted order of the class folders (default: "
                                               "ImageNet's LOC_synset_mapping.txt or devkit meta.mat when found)"),
) -> None:
    """Train a (Mobile V-MoE) model. With no arguments: a small Mobile V-MoE on digits, dense
    twin -> superclasses -> MoE, in a few minutes on a laptop CPU."""
    if list_recipes:
        print_recipes()
        return
    from ..train import DEFAULT_DATA, resolve, train
    from ..train import resume as resume_run

    settings = parse_overrides(set_)  # --set is parsed once, here
    if teacher is not None:
        settings["teacher"] = str(teacher.resolve())
    if init is not None:
        settings["init"] = str(init.resolve())
    if class_names is not None:
        settings["class_names"] = str(class_names.resolve())
    if resume:
        refuse_with_resume(out, model=model, data=data, recipe=recipe, epochs=epochs, seed=seed,
                           superclasses=superclasses, teacher=teacher, init=init, class_names=class_names)
        summary = resume_run(out, settings, quiet=quiet)
    else:
        tcfg, bundle = resolve(model, data or DEFAULT_DATA, settings, epochs=epochs, seed=seed, recipe=recipe, out=out)
        summary = train(tcfg, bundle, out, superclasses=superclasses or "auto", quiet=quiet)
    if int(os.environ.get("RANK", "0")) == 0:  # torchrun: rank 0 reports
        print_summary(summary)
    if summary.get("stopped") and summary.get("reason") in ("SIGINT", "SIGTERM"):
        raise typer.Exit(130 if summary["reason"] == "SIGINT" else 143)  # last.pt is saved; as `mvmoe export` does


def refuse_with_resume(out: Optional[Path], **given) -> None:
    """--resume continues a run with its own settings: options that would change them are refused."""
    if out is None:
        raise MvmoeError("--resume needs --out DIR (the run to continue)")
    changed = [k for k, v in given.items() if v is not None]
    if changed:
        raise MvmoeError(f"--resume continues {out} with its saved settings; drop "
                         + ", ".join(f"--{k.replace('_', '-')}" for k in changed))


def print_recipes() -> None:
    from ..train.recipes import get_recipe
    from ..train.recipes import list_recipes as names

    for name in names():
        r = get_recipe(name)
        paper = f"{r.paper_top1:.2f}%" if r.paper_top1 is not None else "-"
        typer.echo(f"{name:33s} model {r.model:16s} paper top-1 {paper:7s} {epochs_text(r.train['epochs'])}, "
                   f"global batch {r.train['batch_size']}")


def epochs_text(n) -> str:
    """'1 epoch', '20 epochs', '? epochs'."""
    return "1 epoch" if n == 1 else f"{'?' if n is None else n} epochs"


def print_summary(summary: dict) -> None:
    if summary.get("stopped"):
        typer.echo(f"stopped at epoch {summary['epoch']} (step {summary['step']}); continue with: "
                   f"mvmoe train --out {summary['run_dir']} --resume")
        return
    top5 = "n/a (5 classes or fewer)" if summary.get("top5") is None else f"{summary['top5']:.2f}%"
    parts = [f"{summary['model']} on {summary['dataset']}: top-1 {summary['top1']:.2f}%, top-5 {top5}"]
    if summary.get("router_superclass_top1") is not None:
        parts.append(f"router superclass top-1 {summary['router_superclass_top1']:.2f}%")
    if summary.get("dense"):
        parts.append(f"dense twin ({epochs_text(summary['dense'].get('epochs'))}, superclass source) "
                     f"top-1 {summary['dense']['top1']:.2f}%")
    typer.echo(", ".join(parts))
    typer.echo(f"{summary['macs'] / 1e6:.2f}M MACs/image, {summary['active_params'] / 1e6:.3f}M of "
               f"{summary['params'] / 1e6:.3f}M params active, {summary['images_per_sec']:.0f} train images/s")
    run_dir = Path(summary["checkpoint"]).parent
    typer.echo(f"checkpoint: {run_dir / 'model.pt'}")
    typer.echo(f"summary: {run_dir / 'summary.json'}")


@app.command("superclasses")
def superclasses_cmd(
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="a trained dense model: model.pt"),
    data: str = typer.Option(..., "--data", "-d", help="the dataset the model was trained on"),
    num: int = typer.Option(..., "--num", "-n", help="number of superclasses (= experts of the MoE to train)"),
    out: Path = typer.Option(..., "--out", "-o", help="superclasses JSON to write"),
    holdout: Optional[float] = typer.Option(None, "--holdout", help="share of the training split held out for the "
                                            "confusion matrix (default: the checkpoint's superclass_holdout, else 0.1)"),
    clustering: str = typer.Option("balanced", "--clustering", help="balanced (equal sizes) | spectral"),
    seed: Optional[int] = typer.Option(None, "--seed", help="holdout and clustering seed (default: the checkpoint's)"),
) -> None:
    """Cluster classes into superclasses from a dense model's confusion matrix on a stratified
    holdout of the training split (the model must not have trained on it: `mvmoe train`'s dense
    stage leaves it out). The evaluation split is never used."""
    from ..checkpoint import model_from_checkpoint
    from ..config import TrainConfig
    from ..data import build_data
    from ..data.holdout import split_for_superclasses
    from ..train.run import fit_superclasses

    model, ck = model_from_checkpoint(checkpoint)
    if model.cfg.is_moe:  # superclasses come from a model that never saw the holdout
        raise MvmoeError(f"{checkpoint} is an MoE ({model.cfg.name}), trained on the whole training split including "
                         "the holdout; give its dense stage (RUN/dense/model.pt) or another dense model")
    trained = ck.get("train_config") or {}
    seed = seed if seed is not None else int(trained.get("seed", 0))
    holdout = holdout if holdout is not None else float(trained.get("superclass_holdout", 0.1))
    # synthetic data is generated from the training seed: rebuild the instance the model saw
    bundle = build_data(data, model.cfg.img_size, augment="none", seed=int((ck.get("data") or {}).get("seed", 0)))
    if ck.get("class_names") and list(ck["class_names"]) != list(bundle.class_names):
        raise MvmoeError(f"{checkpoint} was trained on other classes than {data}'s {bundle.num_classes}")
    if model.cfg.num_classes != bundle.num_classes:
        raise MvmoeError(f"{checkpoint} has {model.cfg.num_classes} outputs, {data} has {bundle.num_classes} classes")
    tcfg = TrainConfig(model=model.cfg, seed=seed, superclass_holdout=holdout, superclass_clustering=clustering)
    _, held = split_for_superclasses(bundle, holdout, seed)
    found = fit_superclasses(Path(checkpoint), held, bundle, tcfg, out, "cpu", quiet=True, num=num)
    typer.echo(to_json({"num_superclasses": found["num_superclasses"], "names": found["names"],
                           "sizes": found["sizes"], "fit_on": found["fit_on"], "out": str(out)}))
