"""`mvmoe report`: table.md, table.csv, flops_vs_accuracy.png, routing.png."""

from __future__ import annotations

from pathlib import Path

import typer

from . import app


@app.command("report")
def report_cmd(
    run_dirs: list[Path] = typer.Argument(None, help="training run directories (with summary.json); *.json files "
                                          "given here count as --latency files (so a shell glob works)", show_default=False),
    latency: list[Path] = typer.Option([], "--latency", "-l", help="JSON from `profile latency --out` / `profile ingest --out` (repeatable)"),
    memory: list[Path] = typer.Option([], "--memory", "-m", help="JSON from `profile memory --out` (repeatable)"),
    out: Path = typer.Option(..., "--out", "-o", help="output directory"),
    published: bool = typer.Option(True, "--published/--no-published", help="add the papers' ImageNet numbers as marked reference rows"),
) -> None:
    """One table (accuracy, MACs, params, latency and memory per target and device) and two plots;
    the console gets a short summary, the full table is in DIR/table.md."""
    from ..profile.report import make_report

    # typer options take one value each: let `mvmoe report RUN lat/*.json` work too
    files = [p for p in run_dirs or [] if p.suffix == ".json" and p.is_file()]
    dirs = [p for p in run_dirs or [] if p not in files]
    summary: list[str] = []
    paths = make_report(dirs, [*latency, *memory, *files], out, published=published, summary=summary)
    for line in summary:  # the wide table is in table.md / table.csv
        typer.echo(line)
    for name, p in paths.items():
        typer.echo(f"wrote {p}")
