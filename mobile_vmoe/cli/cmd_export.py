"""`mvmoe export`: checkpoint -> an artifact per target of converters.targets, each checked for parity."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from converters import targets as T
from converters.targets import TARGET_NAMES

from ..errors import MvmoeError
from . import app

# the converters (torch, the export backends) and rich are imported inside the command: `--help` stays fast
DEFAULT_TARGET = "all"  # every target this installation converts, each checked (docs/export.md)

# help texts from the target table
BACKENDS = " | ".join(f"{b} (default)" if b == T.DEFAULT_BACKEND.get(t) else b for t in T.BACKEND_TARGETS
                      for b in T.BACKENDS if T.find(t, b))
AUTO_SPLIT = ", ".join(t.label for t in T.TARGETS if t.auto_split_from)
SPLIT = ", ".join(t.label for t in T.TARGETS if t.split_precisions)
SPLIT_INT8 = ", ".join(t.label for t in T.TARGETS if "int8" in t.split_precisions)
DECOMPOSED = ", ".join(f"{t.label} {'/'.join(t.decomposed_layernorm)}" for t in T.TARGETS if t.decomposed_layernorm)


@app.command("export")
def export_cmd(
    checkpoint: Path = typer.Argument(..., help="a checkpoint written by `mvmoe train` (model.pt)"),
    target: str = typer.Option(DEFAULT_TARGET, "--target", "-t", help=f"{' | '.join(TARGET_NAMES)} | all (all: every "
                               "format, each checked against PyTorch, so one run shows what works)"),
    backend: Optional[str] = typer.Option(None, help=f"{' | '.join(T.BACKEND_TARGETS)} only: {BACKENDS}"),
    precision: str = typer.Option("fp32", help=f"{' | '.join(T.PRECISIONS)} (int8 calibrated on eval images)"),
    out: Path = typer.Option(Path("exports"), "--out", "-o", help="output folder"),
    app_: Optional[str] = typer.Option(None, "--app", help="also copy into a demo app: ios | android"),
    dispatch: str = typer.Option("gather", help="gather (static top-k expert gather) | dense (all experts)"),
    experts: str = typer.Option("auto", "--experts", help=f"auto (default: split on {AUTO_SPLIT} where it applies "
                                "and was measured faster for the precision and model size, fused elsewhere) | fused (one program, all experts) | split (a trunk and one program "
                                "per expert, so an app keeps only the experts it uses in memory; per-image MoE with "
                                f"k = 1; {SPLIT}; int8 on {SPLIT_INT8})"),
    bake_preprocessing: bool = typer.Option(False, help="input raw RGB [0,255]; normalisation inside the model"),
    fused_attention: bool = typer.Option(False, help="export attention as one SDPA op instead of matmul-softmax-matmul"),
    layer_norm: str = typer.Option("native", "--layer-norm", help=f"{DECOMPOSED}: native | decomposed "
                                   "(LayerNorm from delegated ops: one delegated subgraph; measure, see docs/export.md)"),
    parity_images: int = typer.Option(256, help="eval images for parity (evenly spaced over the eval split)"),
    parity_data: Optional[str] = typer.Option(None, "--parity-data", help="images for parity and int8 calibration: "
                                              "PATH (ImageFolder) | digits | synthetic (default: the checkpoint's dataset)"),
    fp32_tol: float = typer.Option(1e-4, help="max |logit diff| allowed for fp32"),
    max_top1_drop: Optional[float] = typer.Option(None, help="fp16/int8: largest allowed loss of top-1 agreement "
                                                  "(default 0.02 for fp16, 0.05 for int8)"),
    force: bool = typer.Option(False, "--force", help="replace artifacts exported from another checkpoint"),
    verbose: bool = typer.Option(False, "--verbose", help="show the conversion libraries' own output"),
) -> None:
    """Export a checkpoint, check each artifact against PyTorch, write <stem>.json beside it."""
    from rich.console import Console

    from converters.apps import app_runs, app_runs_text, check_app, project_root
    from converters.pipeline import export_checkpoint, plan

    jobs, _ = plan(target, backend, precision, experts)  # bad combinations fail before the checkpoint is read
    if app_ is not None:
        check_app(app_)
        project_root()  # no demo apps around this installation: say so before converting
        if not any(app_runs(app_, j.target, j.backend) for j in jobs):
            raise MvmoeError(f"--app {app_}: {app_runs_text(app_)}; nothing of --target {target} to copy")
    console = Console(stderr=True, width=140)
    try:
        results = export_checkpoint(checkpoint, target, backend, precision, out, dispatch=dispatch,
                                    fused_attention=fused_attention, bake_preprocessing=bake_preprocessing,
                                    parity_images=parity_images, fp32_tol=fp32_tol, max_top1_drop=max_top1_drop,
                                    layer_norm=layer_norm, parity_data=parity_data, force=force, verbose=verbose,
                                    experts=experts, progress=lambda s: console.print(f"[dim]{s}[/dim]"))
    except KeyboardInterrupt:
        typer.echo("error: interrupted: export stopped, no partial files left", err=True)
        raise typer.Exit(130) from None
    typer.echo(f"mvmoe export -> {out}")  # a heading of its own: a table title would break the path
    Console(width=160).print(results_table(results, out))
    if app_:
        copy_results(results, app_)
    failed = [r for r in results if not r.ok]
    for r in failed:
        typer.echo(f"error: {r.job.target} {r.job.precision}: {r.error}", err=True)
    if failed:
        raise typer.Exit(1)


def results_table(results, out: Path):
    """artifact | parity | max |diff| | top-1 agree | accuracy change | ops; random-pixel parity said so."""
    from rich.table import Table

    t = Table()
    for col in ("artifact", "parity", "max |diff|", "top-1 agree", "int8/fp16 acc change", "ops (delegated)"):
        t.add_column(col, overflow="fold")
    for r in results:
        if not r.ok:
            t.add_row(f"{T.label(r.job.target, r.job.backend)} {r.job.precision}",
                      "[red]FAILED[/red]", "-", "-", "-", r.error)
            continue
        p, ops = r.metadata["parity"], r.metadata["ops"]
        if "delegated_nodes" in ops and "portable_nodes" in ops:  # a delegation audit
            op_text = f"{ops['delegated_nodes']} delegated / {ops['portable_nodes']} portable"
        else:
            op_text = f"{ops.get('nodes')} nodes, {len(ops.get('ops', {}))} op types"
        change = f"{100 * p['top1_change']:+.1f} pt" if p.get("top1_change") is not None and r.job.precision != "fp32" else "-"
        status = "ok" if p["ran"] else f"not run: {p['reason']}"
        if p["ran"] and p.get("data") == "random":
            status = "[yellow]ok on RANDOM pixels (no dataset; --parity-data)[/yellow]"
        t.add_row(r.artifact.name, status, f"{p['max_abs_diff']:.2e}" if p["ran"] else "-",
                  f"{100 * p['top1_agreement']:.1f}%" if p["ran"] else "-", change, op_text)
    return t


def copy_results(results, app: str) -> None:
    """Copy what the app runs into its folder (in this checkout), say where; name what is not copied."""
    from converters.apps import app_runs, app_runs_text, copy_to_app

    for r in results:
        if not r.ok:
            continue
        if app_runs(app, r.job.target, r.job.backend):
            dest = copy_to_app(r.artifact, app)
            typer.echo(f"copied {r.artifact.name} and {r.artifact.with_suffix('.json').name} to {dest}", err=True)
        else:
            typer.echo(f"not copied to the {app} app: {r.artifact.name} ({app_runs_text(app)})", err=True)
