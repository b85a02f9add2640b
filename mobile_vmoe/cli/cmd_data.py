"""`mvmoe data sort-val`: the official flat ImageNet val/ folder into class folders."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..fileio import to_json
from . import app

data_app = typer.Typer(no_args_is_help=True, help="Dataset folders: sort the flat ImageNet val/.")
app.add_typer(data_app, name="data")


@data_app.command("sort-val")
def sort_val_cmd(
    val: Path = typer.Argument(..., help="the flat val/ folder (ILSVRC2012_val_*.JPEG)"),
    labels: Path = typer.Option(..., "--labels", "-l", help="LOC_val_solution.csv, or the devkit's "
                                "ILSVRC2012_validation_ground_truth.txt (with --meta)"),
    meta: Optional[Path] = typer.Option(None, "--meta", help="the devkit's meta.mat (ILSVRC2012_ID -> WNID); "
                                        "default: next to the ground-truth file or in ../data/"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="where the class folders go (default: VAL itself)"),
    mode: str = typer.Option("move", "--mode", help="move | link (hard links, needs --out) | copy"),
) -> None:
    """Sort the official flat ImageNet val/ folder into val/<WNID>/ class folders."""
    from ..data.imagenet_val import sort_val

    typer.echo(to_json(sort_val(val, labels, meta, out=out, mode=mode)))
