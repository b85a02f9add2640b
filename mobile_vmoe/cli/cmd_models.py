"""`mvmoe models` and `mvmoe profile flops`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from converters import targets as T
from converters.targets import label

from ..config import ModelConfig, parse_overrides
from ..errors import MvmoeError
from ..fileio import to_json
from . import app, profile_app

# torch, the models and rich are imported inside the commands: `--help` stays fast


def _human(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return str(int(n))


@app.command("models")
def models_cmd(
    pattern: Optional[str] = typer.Argument(None, help="glob filter, e.g. 'vmoe-*-p32'"),
    as_json: bool = typer.Option(False, "--json", help="one JSON list instead of the table"),
) -> None:
    """List the model presets with their shapes, parameters and MACs per image."""
    import torch
    from rich.console import Console
    from rich.table import Table

    from ..models import MobileVMoE
    from ..models.flops import analytic_macs
    from ..models.registry import get_config, list_models

    rows = []
    for name in list_models(pattern):
        cfg = get_config(name)
        with torch.device("meta"):
            m = MobileVMoE(cfg)
        rows.append(dict(name=name, depth=cfg.depth, width=cfg.width, heads=cfg.heads, patch=cfg.patch_size,
                         img_size=cfg.img_size, experts=cfg.num_experts, k=cfg.top_k if cfg.is_moe else 0,
                         moe_blocks=cfg.moe_blocks if cfg.is_moe else 0, params=m.num_params(),
                         active_params=m.num_active_params(), macs=analytic_macs(cfg)))
    if not rows:
        raise typer.BadParameter(f"no preset matches {pattern!r}")
    if as_json:
        typer.echo(to_json(rows, indent=1))
        return
    t = Table(title="mvmoe presets (per image, 224 px, 1000 classes)")
    for col in ("name", "depth", "width", "heads", "patch", "img", "experts", "k", "MoE blocks",
                "params", "active", "MACs"):
        t.add_column(col, justify="left" if col == "name" else "right")
    for r in rows:
        t.add_row(r["name"], str(r["depth"]), str(r["width"]), str(r["heads"]), str(r["patch"]),
                  str(r["img_size"]), str(r["experts"] or "-"), str(r["k"] or "-"), str(r["moe_blocks"] or "-"),
                  _human(r["params"]), _human(r["active_params"]), _human(r["macs"]))
    Console(width=140).print(t)


def artifact_metadata(path: Path) -> dict:
    """The metadata .json of an exported artifact (the artifact itself or its .json), checked
    against the artifact's size and sha256 recorded at export."""
    from ..artifact import verified_metadata

    return verified_metadata(path)


@profile_app.command("flops")
def flops_cmd(
    checkpoint: Optional[Path] = typer.Argument(None, help="a checkpoint (model.pt / last.pt) or an exported artifact "
                                                f"({'/'.join(T.ARTIFACT_SUFFIXES)} or its .json)", show_default=False),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="a preset name (see `mvmoe models`)"),
    set_: list[str] = typer.Option([], "--set", help="override a ModelConfig field, KEY=VALUE (repeatable)"),
    dispatch: Optional[str] = typer.Option(None, help="gather (export default: active experts only) | dense (all "
                                           "experts); default gather, or what an artifact was exported with"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """MACs, FLOPs and parameters per image, counted from the executed ops, with a per-block table.

    On an exported artifact this counts what the artifact runs: its model at its dispatch (the
    static gather runs k experts per MoE block, the all-experts fallback runs all E).
    """
    from rich.console import Console
    from rich.table import Table

    from ..checkpoint import config_from_checkpoint, load_checkpoint
    from ..models import MobileVMoE
    from ..models.flops import profile_flops
    from ..models.registry import get_config
    from ..artifact import VERIFIED

    if (checkpoint is None) == (model is None):
        raise MvmoeError("give exactly one of --model NAME or a CHECKPOINT file")
    if dispatch not in (None, "gather", "dense"):
        raise MvmoeError(f"--dispatch {dispatch!r}: expected gather or dense")
    overrides = parse_overrides(set_, ModelConfig)
    artifact = None
    if model is not None:
        cfg = get_config(model, **overrides)
    elif checkpoint.suffix in (*T.ARTIFACT_SUFFIXES, ".json") or checkpoint.is_dir():  # a folder: a split artifact
        meta = artifact_metadata(checkpoint)
        try:
            cfg = ModelConfig.from_dict(meta["model_config"])
        except (TypeError, ValueError) as e:
            raise MvmoeError(f"{checkpoint}: invalid model_config in its metadata: {e}") from None
        cfg = cfg.replace(**overrides) if overrides else cfg
        dispatch = dispatch or meta.get("dispatch") or "gather"
        dispatch = "gather" if dispatch == "split" else dispatch  # trunk + one tail: the gather's MACs
        artifact = {"artifact": str(checkpoint), "target": meta.get("target"), "backend": meta.get("backend"),
                    "precision": meta.get("precision"), "counted_from": VERIFIED}
    else:
        cfg = config_from_checkpoint(load_checkpoint(checkpoint))
        cfg = cfg.replace(**overrides) if overrides else cfg
    if not as_json:  # the count takes a while on a busy CPU: say what is running (--json output stays one object)
        typer.echo(f"counting the MACs of {cfg.name} at {cfg.img_size} px: one forward pass on the CPU…", err=True)
    report = profile_flops(MobileVMoE(cfg), dispatch=dispatch or "gather")
    d = report.to_dict()
    if artifact is not None:
        d.update(artifact)
    if as_json:
        typer.echo(to_json(d))
        return
    where = f"{label(artifact['target'], artifact['backend'])} {artifact['precision']}: " if artifact else ""
    typer.echo(f"{where}{cfg.name}: {_human(report.macs)} MACs ({_human(report.flops)} FLOPs) per image, "
               f"params {_human(report.params)} total / {_human(report.active_params)} active, dispatch {report.dispatch}")
    t = Table()
    for col in ("block", "kind", "MACs", "share", "params", "active params"):
        t.add_column(col, justify="left" if col in ("block", "kind") else "right")
    for b in report.per_block:
        t.add_row(b.name, b.kind, _human(b.macs), f"{100 * b.macs / max(report.macs, 1):.1f}%", _human(b.params), _human(b.active_params))
    Console(width=120).print(t)
    if artifact is not None:
        typer.echo(f"counted from {artifact['counted_from']}")
