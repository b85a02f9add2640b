"""`mvmoe profile latency`, `mvmoe profile memory` and `mvmoe profile ingest`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from converters import targets as T

from ..fileio import atomic_write_json, to_json
from . import profile_app

# the profilers, their runtimes and rich are imported inside the commands: `--help` stays fast

# help texts from the target table
SUFFIXES = " / ".join(T.ARTIFACT_SUFFIXES)
MEMORY_SUFFIXES = " / ".join(dict.fromkeys(t.suffix for t in T.TARGETS if t.loaders))
PER_OP = ", ".join(t.label for t in T.TARGETS if "per_op" in t.runner_options)
ANDROID_TOOLS = ", ".join(dict.fromkeys(f"{t.android_tool} ({t.suffix})" for t in T.TARGETS if t.android_tool))


def _print_latency(d: dict, as_json: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    if as_json:
        typer.echo(to_json(d))
        return
    def ms(v):
        return "-" if v is None else f"{v:.3f}"

    # the heading as plain lines: a table title would wrap inside file names
    typer.echo(f"{d['artifact']}\non {d['device']} ({d['runtime']}, threads {d.get('threads') or 'default'})")
    t = Table()
    for col in ("runs", "min ms", "median ms", "p90 ms", "mean ms"):
        t.add_column(col, justify="right")
    t.add_row(str(d["runs"]), ms(d["min_ms"]), ms(d["median_ms"]), ms(d["p90_ms"]), ms(d["mean_ms"]))
    con = Console(width=120)
    con.print(t)
    if d.get("per_op"):
        po = Table(title="per op (ETDump), ms per inference")
        for col in ("op", "delegated", "calls", "ms"):
            po.add_column(col, justify="left" if col == "op" else "right")
        for r in d["per_op"]:
            po.add_row(r["op"], "yes" if r["delegated"] else "no", str(r["calls"]), f"{r['ms']:.4f}")
        con.print(po)
    elif d.get("per_op_note"):
        con.print(d["per_op_note"])
    _say_unverified(d)


NO_VERIFY = typer.Option(False, "--no-verify", help="measure the artifact without checking its size and sha256 "
                         "against its .json (the output then says \"verified\": false)")


def _say_unverified(d: dict) -> None:
    if d.get("verified") is False:
        typer.echo("not verified: the artifact's size and sha256 were not checked against its .json (--no-verify)")


def _quiet_runtimes(verbose: bool):
    """The runtimes' own chatter (torch pytree warnings, cpuinfo, INFO lines) hidden unless --verbose."""
    from converters.quiet import quiet

    return quiet(verbose)


@profile_app.command("latency")
def latency_cmd(
    artifact: Path = typer.Argument(..., help=f"an exported {SUFFIXES}, or a split artifact"),
    device: str = typer.Option("local", "--device", "-d", help="local | android[:SERIAL] | ios[:UDID]"),
    warmup: int = typer.Option(10, help="untimed runs first"),
    runs: int = typer.Option(50, help="timed runs"),
    threads: Optional[int] = typer.Option(None, help="CPU threads (the runtime's own setting: interpreter threads, "
                                           "intra-op threads or threadpool size)"),
    per_op: bool = typer.Option(False, "--per-op", help=f"per-op times where the runner gives them ({PER_OP}; local)"),
    binary: Optional[Path] = typer.Option(None, help=f"android: the benchmark binary built for the phone: {ANDROID_TOOLS}"),
    adb_port: int = typer.Option(5037, help="android: adb server port on 127.0.0.1"),
    out: Optional[Path] = typer.Option(None, help="also write the JSON here (for `mvmoe report --latency`)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
    no_verify: bool = NO_VERIFY,
    verbose: bool = typer.Option(False, "--verbose", help="show the runtimes' own output (cpuinfo, INFO lines, ...)"),
) -> None:
    """Latency of one artifact: min / median / p90 / mean over timed runs, batch 1. The artifact
    must match the size and sha256 its .json recorded at export (else one line, exit 1)."""
    from ..profile.latency import profile_latency

    with _quiet_runtimes(verbose):
        d = profile_latency(artifact, device, warmup=warmup, runs=runs, threads=threads, per_op=per_op,
                            binary=binary, adb_port=adb_port, verify=not no_verify)
    if out is not None:
        atomic_write_json(out, d)
    _print_latency(d, as_json)


@profile_app.command("ingest")
def ingest_cmd(
    file: Path = typer.Argument(..., help="benchmark JSON written by a demo app (format mvmoe-app-benchmark)"),
    out: Optional[Path] = typer.Option(None, help="also write the JSON here (for `mvmoe report --latency`)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """A demo app's benchmark screen result -> the same keys as `profile latency`."""
    from ..profile.ingest import ingest_app_benchmark

    d = ingest_app_benchmark(file)
    if out is not None:
        atomic_write_json(out, d)
    _print_latency(d, as_json)


@profile_app.command("memory")
def memory_cmd(
    artifact: Path = typer.Argument(..., help=f"an exported {MEMORY_SUFFIXES}, or a split artifact"),
    loader: Optional[str] = typer.Option(None, help="mmap (the runtime maps the file) | file (read whole into "
                                         "memory); default: mmap where the runtime maps files, else file"),
    images: int = typer.Option(20, help="batch-1 runs after loading (seeded noise, one per image; at least 1)"),
    threads: Optional[int] = typer.Option(None, help="CPU threads of the runtime"),
    max_tails: int = typer.Option(1, help="split artifacts: expert tails kept loaded (LRU)"),
    out: Optional[Path] = typer.Option(None, help="also write the JSON here (for `mvmoe report --memory`)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
    no_verify: bool = NO_VERIFY,
) -> None:
    """Resident memory of one artifact (MiB over the runtime's baseline), in a fresh process. The
    artifact must match the size and sha256 its .json recorded at export (else one line, exit 1)."""
    from rich.console import Console
    from rich.table import Table

    from ..profile.memory import profile_memory

    d = profile_memory(artifact, loader, images=images, threads=threads, max_tails=max_tails, verify=not no_verify)
    if out is not None:
        atomic_write_json(out, d)
    if as_json:
        typer.echo(to_json(d))
        return
    typer.echo(f"{d['artifact']}\n{d['runtime']}, loader {d['loader']}: MiB over a baseline of "
               f"{d['baseline_mib']:.1f} MiB")
    t = Table()
    for col in ("after", "rss", "heap (anon)", "file-backed", "peak rss"):
        t.add_column(col, justify="right")
    for when in (w for w in ("load", "first", "run") if w in d["after"]):
        a = d["after"][when]
        t.add_row({"load": "load", "first": "1 image", "run": f"{d['images']} images"}[when], *(f"{a[k]:.1f}" for k in
                  ("rss_mib", "heap_mib", "file_mib", "peak_rss_mib")))
    Console(width=120).print(t)
    if "tails_loaded" in d:
        typer.echo(f"split: {d['tails_loaded']} tail loads, {d['tails_resident']} resident (--max-tails {d['max_tails']})")
    _say_unverified(d)
