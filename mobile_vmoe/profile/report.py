"""`mvmoe report`: one table (markdown + CSV) and two plots from training runs and latency files.

Inputs (formats: docs/formats.md)
- run directories: DIR/summary.json; a per-image MoE trained with `--superclasses auto` also holds
  its dense stage in DIR/dense/summary.json, which becomes a row of its own marked as the
  superclass source (trained on the training split less the holdout, for ``dense_epochs``): it is
  never drawn or tabled as the equal-budget dense baseline. That baseline is a dense run of its own.
- each run has an arm: dense, moe-sc (per-image router trained on superclasses), moe-e2e
  (per-image router trained end to end), token (per-token V-MoE), or what summary.json's ``arm``
  says (e.g. a peer model). Runs of one dataset, arm, model and epochs are seeds of one point:
  table.md adds their mean +- std, and the plot draws the mean with the std as error bars. A line
  joins only runs that differ in size alone (same dataset, arm, k and epochs); every point is
  labelled with its arm, data and epochs.
- latency JSON files (`mvmoe profile latency --out F`, `mvmoe profile ingest --out F`): matched to
  the run whose checkpoint made the artifact (``checkpoint_sha256``, carried from the artifact's
  .json; a run's own hash is summary.json's ``checkpoint_sha256``, or its model.pt hashed once for
  an older summary without it), else, for files without it, by the model name. Model, target,
  backend, precision and dispatch are the keys carried from the artifact's .json; a file without
  them (an app's benchmark) has them read from the artifact name
  `<model>_<target>[-<backend>]_<precision>[-<dispatch>].<ext>`. Each distinct (target,
  precision, dispatch, device) becomes one column holding the median in ms. Refused, in one line
  naming the files or runs involved: two files for one run and column (never last-wins), a file
  whose checkpoint is none of the runs given, a file whose model disagrees with the run its
  checkpoint_sha256 names, and a latency or resident size that is not a finite number above zero.
- published reference numbers (Mobile V-MoE, arXiv 2309.04354; DeiT; MobileNetV3), ImageNet-1k:
  rows marked "published", MACs computed from our presets at 224 px with the same counting
  convention, drawn in a separate panel (another dataset, not comparable to small-data runs).

Outputs: OUT/table.md, OUT/table.csv, OUT/flops_vs_accuracy.png, OUT/routing.png (all atomic).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from converters.targets import label

from ..artifact_name import parse_artifact_name
from ..errors import MvmoeError
from ..fileio import atomic_write_bytes, atomic_write_text, file_sha256, read_json_object, writable_dir
from ..models import MobileVMoE
from ..models.flops import analytic_macs
from ..models.registry import get_config

# (name, kind, preset for MACs or None, MACs if no preset, top-1, note): the papers' ImageNet-1k numbers
PUBLISHED = [
    ("ViT 12x192 p32 (dense)", "dense", "vit-12x192-p32", None, 59.51, "Mobile V-MoE paper, dense baseline"),
    ("Mobile V-MoE 12x192 p32 (E=10, k=1)", "moe", "vmoe-12x192-p32", None, 62.90, "Mobile V-MoE paper"),
    ("DeiT-Tiny", "dense", "deit-tiny", 1.26e9, 72.2, "DeiT paper"),
    ("MobileNetV3-Small", "dense", None, 56e6, 67.7, "MobileNetV3 paper"),
]


LATENCY, MEMORY = "latency", "memory"


@dataclass(frozen=True)
class Column:
    """One measured column: what ran where (``label``), holding latency medians in ms or resident
    memory in MiB (``kind``)."""

    label: str  # 'executorch-xnnpack fp32 @ local (ms)', 'tflite int8 mmap @ local (MiB)'
    kind: str  # LATENCY | MEMORY

    def head(self, csv: bool = False) -> str:
        """'latency executorch-xnnpack fp32 @ local (ms)' (CSV: 'latency_ms ...', 'memory_mib ...')."""
        if self.kind == MEMORY:
            return f"{'memory_mib' if csv else 'memory'} {self.label}"
        return f"{'latency_ms' if csv else 'latency'} {self.label}"


@dataclass(frozen=True)
class Measurement:
    """One latency or memory file, read: its column, its value and what it matches runs by."""

    file: str  # for conflict messages
    artifact: str
    model: str
    column: Column
    value: float  # median ms (LATENCY) or resident MiB (MEMORY)
    checkpoint_sha256: str | None = None
    macs: int | None = None


@dataclass
class Row:
    model: str
    dataset: str
    routing: str  # none | image | token
    macs: int | None
    params: int | None
    active_params: int | None
    top1: float | None
    top5: float | None
    router_top1: float | None
    source: str  # run dir, or "published: ..."
    published: bool = False
    latency: dict[Column, float] = field(default_factory=dict)  # LATENCY column -> median ms
    memory: dict[Column, float] = field(default_factory=dict)  # MEMORY column -> resident MiB
    expert_usage: list | None = None
    superclass_names: list | None = None
    checkpoint: Path | None = None  # the run's model.pt, to match latency files by checkpoint_sha256
    checkpoint_sha256: str | None = None  # summary.json's; None for an older summary (model.pt is hashed)
    epochs: int | None = None
    arm: str = "dense"  # dense | moe-sc | moe-e2e | token | superclass-source | a peer's name
    seed: int | None = None
    top_k: int = 0  # experts per image (0: dense)

    def measured(self, col: Column) -> float | None:
        """The row's value in a latency or memory column (None: not measured)."""
        return (self.memory if col.kind == MEMORY else self.latency).get(col)


SUPERCLASS_SOURCE = "superclass-source"


def arm_of(s: dict, superclass_source: bool = False) -> str:
    """The comparison arm of a run from its summary.json."""
    if superclass_source:
        return SUPERCLASS_SOURCE
    if s.get("arm"):
        return str(s["arm"])
    routing = s.get("routing") or ("image" if s.get("num_experts") else "none")
    if routing == "none":
        return "dense"
    if routing == "token":
        return "token"
    return "moe-sc" if s.get("superclass_names") or s.get("superclasses_file") else "moe-e2e"


# ------------------------------------------------------------------------------------- loading

NUMERIC = ("top1", "top5", "router_superclass_top1", "macs", "params", "active_params")


def _row_from_summary(s: dict, source: str, superclass_source: bool = False) -> Row:
    missing = [k for k in ("model", "top1", "macs") if k not in s]
    if missing:
        raise MvmoeError(f"{source}/summary.json: missing key(s) {', '.join(missing)} (not a `mvmoe train` run?)")
    for key in NUMERIC:
        v = s.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
            raise MvmoeError(f"{source}/summary.json: {key} is {v!r}, expected a number")
    routing = s.get("routing") or ("image" if s.get("num_experts") else "none")
    return Row(str(s["model"]), str(s.get("dataset", "?")), routing, s.get("macs"), s.get("params"),
               s.get("active_params"), s.get("top1"), s.get("top5"), s.get("router_superclass_top1"), source,
               expert_usage=s.get("expert_usage"), superclass_names=s.get("superclass_names"),
               checkpoint=_run_checkpoint(s, Path(source)), checkpoint_sha256=s.get("checkpoint_sha256"),
               epochs=s.get("epochs"),
               arm=arm_of(s, superclass_source), seed=s.get("seed"),
               top_k=int(s.get("top_k") or 0) if routing != "none" else 0)


def _run_checkpoint(s: dict, run_dir: Path) -> Path | None:
    """The run's checkpoint: summary.json's ``checkpoint`` if it exists, else DIR/<its name>."""
    named = Path(str(s.get("checkpoint") or "model.pt"))
    for p in (named, run_dir / named.name):
        if p.is_file():
            return p
    return None


def load_runs(run_dirs: list[str | Path]) -> list[Row]:
    """One row per run, plus one per dense stage (DIR/dense) not already given as a run."""
    rows: list[Row] = []
    seen: set[Path] = set()
    for d in run_dirs:
        d = Path(d)
        if not d.is_dir():
            raise MvmoeError(f"run directory not found: {d}")
        if not (d / "summary.json").is_file():
            raise MvmoeError(f"{d}: no summary.json (unfinished run? finish it with `mvmoe train --resume --out {d}`)")
        for sub in (d, d / "dense"):
            if (sub / "summary.json").is_file() and sub.resolve() not in seen:
                seen.add(sub.resolve())
                rows.append(_row_from_summary(read_json_object(sub / "summary.json"), str(sub),
                                              superclass_source=sub != d))
    return rows


def load_latency(files: list[str | Path]) -> list[Measurement]:
    """Read latency and memory files (a file is memory when it has rss_mib and no median_ms)."""
    out = []
    for f in files:
        f = Path(f)
        if not f.is_file():
            raise MvmoeError(f"latency file not found: {f}")
        d = read_json_object(f)
        missing = [k for k in ("artifact", "device") if k not in d] + ([] if is_memory(d) else
                                                                      [k for k in ("median_ms",) if k not in d])
        if missing:
            raise MvmoeError(f"{f}: missing key(s) {', '.join(missing)}; expected the JSON of "
                             "`mvmoe profile latency --out`, `mvmoe profile memory --out` or `mvmoe profile ingest --out`")
        kind = MEMORY if is_memory(d) else LATENCY
        check_measured_values(d, kind, f)
        out.append(Measurement(str(f), d["artifact"], d.get("model") or parse_artifact_name(d["artifact"])["model"],
                               Column(latency_column(d), kind), d["rss_mib"] if kind == MEMORY else d["median_ms"],
                               d.get("checkpoint_sha256"), d.get("macs")))
    return out


TIMES = ("median_ms", "min_ms", "p90_ms", "mean_ms")


def check_measured_values(d: dict, kind: str, f: Path) -> None:
    """A latency or memory figure is a finite number above zero: a negative, zero, NaN or infinite
    latency (a hand-edited or corrupted file) is refused, naming the file and the key."""
    for key in (("rss_mib",) if kind == MEMORY else TIMES):
        v = d.get(key)
        if v is None and key != ("rss_mib" if kind == MEMORY else "median_ms"):
            continue  # optional statistics
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
        if not ok:
            raise MvmoeError(f"{f}: {key} is {v!r}; a {'resident size' if kind == MEMORY else 'latency'} must be a "
                             "finite number above zero (was the file edited?)")


def is_memory(d: dict) -> bool:
    """A `profile memory` file's JSON (rss_mib) rather than a latency one (median_ms)."""
    return "rss_mib" in d and "median_ms" not in d


def artifact_fields(lat: dict) -> dict:
    """target, backend, precision and dispatch of the measured artifact: those its .json carried into
    the file (``profile latency`` / ``profile memory``), else read from the artifact's name (an app's
    benchmark file, or an artifact measured without its .json)."""
    if lat.get("target") and lat.get("precision"):
        return {"target": lat["target"], "backend": lat.get("backend"), "precision": lat["precision"],
                "dispatch": lat.get("dispatch") or "gather"}
    return parse_artifact_name(lat["artifact"])


def latency_column(lat: dict) -> str:
    """The column label of a latency ("... (ms)") or memory ("... <loader> (MiB)") file's JSON."""
    a = artifact_fields(lat)
    target = label(a["target"], a["backend"])
    dispatch = lat.get("dispatch") or a["dispatch"]
    what = f"{target} {a['precision']}{'' if dispatch == 'gather' else ' ' + dispatch}"
    if is_memory(lat):
        return f"{what} {lat.get('loader') or ''} @ {lat['device']} (MiB)".replace("  ", " ")
    return f"{what} @ {lat['device']} (ms)"


def _rows_of(m: Measurement, rows: list[Row], hashes: dict) -> list[Row]:
    """The runs a measurement belongs to: the one whose checkpoint made the artifact when the file
    says which (checkpoint_sha256), else every run of the model name."""
    ours = [r for r in rows if not r.published]
    if m.checkpoint_sha256:
        return [r for r in ours if _sha256(r, hashes) == m.checkpoint_sha256]
    return [r for r in ours if r.model == m.model]


def _sha256(row: Row, cache: dict) -> str | None:
    """The run's checkpoint sha256: summary.json's, else (an older summary) its model.pt hashed once."""
    if row.checkpoint_sha256 or row.checkpoint is None:
        return row.checkpoint_sha256
    if row.checkpoint not in cache:
        cache[row.checkpoint] = file_sha256(row.checkpoint)
    return cache[row.checkpoint]


def attach_latency(rows: list[Row], measurements: list[Measurement]) -> list[Column]:
    """Put each latency median or memory figure on the row of the run it measured. Returns the
    columns in the order first seen. A measurement without checkpoint_sha256 that matches no run's
    model gets a row of its own (named by its artifact, arm "?"). Refused, naming the file and the
    runs or the other file: a checkpoint_sha256 of none of the runs; a model that disagrees with the
    run of its checkpoint_sha256; two files for one cell (same run, target, precision, dispatch,
    device and kind)."""
    cols: list[Column] = []
    hashes: dict = {}
    orphans: dict[str, Row] = {}  # one row per unmatched model name
    filled: dict[tuple, str] = {}  # (row id, column) -> the file that filled it
    for m in measurements:
        if m.column not in cols:
            cols.append(m.column)
        match = _rows_of(m, rows, hashes)
        if not match and m.checkpoint_sha256:
            given = ", ".join(r.source for r in rows if not r.published) or "none"
            raise MvmoeError(f"{m.file} measured an artifact of checkpoint sha256 {m.checkpoint_sha256[:12]}…, made by "
                             f"none of the runs given ({given}); add that run's folder or leave the file out")
        for r in match:
            if m.checkpoint_sha256 and r.model != m.model:
                raise MvmoeError(f"{m.file} names model {m.model}{_macs_note(m.macs)} but its checkpoint_sha256 is the "
                                 f"checkpoint of {r.source} ({r.model}{_macs_note(r.macs)}); the two disagree: "
                                 "measure the artifact again or leave the file out")
        if not match:
            # no checkpoint named (an older or a peer's file) and no run of its model: a row of its own,
            # its arm unknown
            key = m.model
            if key not in orphans:
                orphans[key] = Row(m.model, "?", "?", m.macs, None, None, None, None, None, m.artifact, arm="?")
                rows.append(orphans[key])
            match = [orphans[key]]
        for r in match:
            first = filled.setdefault((id(r), m.column), m.file)
            if first != m.file:
                raise MvmoeError(f"{first} and {m.file} both measure {m.column.label} of {r.model} "
                                 f"({r.source}); give one of them")
            (r.memory if m.column.kind == MEMORY else r.latency)[m.column] = m.value
    return cols


def _macs_note(macs) -> str:
    return f", {macs / 1e6:.2f}M MACs" if isinstance(macs, (int, float)) and not isinstance(macs, bool) else ""


def published_rows() -> list[Row]:
    rows = []
    for name, kind, preset, macs, top1, note in PUBLISHED:
        params = active = None
        if preset is not None:
            cfg = get_config(preset)
            macs = analytic_macs(cfg) if macs is None else macs
            with torch.device("meta"):
                m = MobileVMoE(cfg)
            params, active = m.num_params(), m.num_active_params()
        rows.append(Row(name, "ImageNet-1k", "image" if kind == "moe" else "none", int(macs), params, active,
                        top1, None, None, f"published: {note}", published=True,
                        arm="moe-sc" if kind == "moe" else "dense"))
    return rows


# --------------------------------------------------------------------------------------- table

def _fmt(v, kind: str = "") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if kind == "count":
        for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
            if abs(v) >= div:
                return f"{v / div:.2f}{unit}"
        return str(int(v))
    if kind == "pct":
        return f"{v:.2f}"
    if kind == "ms":
        return f"{v:.3f}"
    if kind == "mib":
        return f"{v:.1f}"
    return str(v)


HEAD = ["model", "dataset", "routing", "arm", "epochs", "active MACs", "params", "active params", "top-1 (%)",
        "top-5 (%)", "router superclass top-1 (%)"]


def table_rows(rows: list[Row], cols: list[Column]) -> list[list]:
    """Raw values (for CSV) in HEAD + measured column order."""
    return [[r.model + (" [published]" if r.published else ""), r.dataset, r.routing, r.arm, r.epochs, r.macs,
             r.params, r.active_params, r.top1, r.top5, r.router_top1] + [r.measured(c) for c in cols]
            for r in rows]


@dataclass
class Point:
    """The seeds of one (dataset, arm, model, epochs): mean and sample std of top-1."""

    dataset: str
    arm: str
    model: str
    epochs: int | None
    macs: int
    top1: list[float]
    top_k: int = 0

    @property
    def mean(self) -> float:
        return sum(self.top1) / len(self.top1)

    @property
    def std(self) -> float:
        n = len(self.top1)
        return math.sqrt(sum((v - self.mean) ** 2 for v in self.top1) / (n - 1)) if n > 1 else 0.0


def aggregate(rows: list[Row]) -> list[Point]:
    """Measured rows with an accuracy, grouped over seeds (the published rows are left out)."""
    points: dict[tuple, Point] = {}
    for r in rows:
        if r.published or r.top1 is None or not r.macs:
            continue
        key = (r.dataset, r.arm, r.model, r.top_k, r.epochs)
        points.setdefault(key, Point(r.dataset, r.arm, r.model, r.epochs, r.macs, [], r.top_k)).top1.append(r.top1)
    return list(points.values())


def render_points(points: list[Point]) -> str:
    lines = ["| dataset | arm | model | epochs | active MACs | seeds | top-1 (%) mean +- std |", "|---|---|---|---|---|---|---|"]
    for p in sorted(points, key=lambda p: (p.dataset, p.macs, p.arm)):
        lines.append(f"| {p.dataset} | {p.arm} | {p.model} | {_fmt(p.epochs)} | {_fmt(p.macs, 'count')} | "
                     f"{len(p.top1)} | {p.mean:.2f} +- {p.std:.2f} |")
    return "\n".join(lines) + "\n"


def render_markdown(rows: list[Row], cols: list[Column]) -> str:
    kinds = ["", "", "", "", "", "count", "count", "count", "pct", "pct", "pct"] + [
        "mib" if c.kind == MEMORY else "ms" for c in cols]
    head = HEAD + [c.head() for c in cols] + ["run"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r, vals in zip(rows, table_rows(rows, cols)):
        run = "published" if r.published else "/".join(Path(r.source).parts[-2:])  # tells same-named runs apart
        lines.append("| " + " | ".join([_fmt(v, k) for v, k in zip(vals, kinds)] + [run]) + " |")
    note = ("\nActive MACs: multiply-accumulates per image of what runs (gather path: the chosen experts only); "
            "latency: median over timed runs, batch 1; memory: resident MiB over the runtime's baseline after "
            "the timed images (`mvmoe profile memory`).")
    if any(r.arm == SUPERCLASS_SOURCE for r in rows):
        note += (f" Arm {SUPERCLASS_SOURCE}: the dense stage a superclass run clusters its confusions from, "
                 "trained on the training split less a holdout; not the equal-budget dense baseline.")
    if any(r.published for r in rows):
        note += (" Rows marked [published] are ImageNet-1k numbers quoted from the papers "
                 "(Mobile V-MoE arXiv 2309.04354, DeiT, MobileNetV3), not measured here.")
    points = aggregate(rows)
    seeds = ("\n## Over seeds\n\n" + render_points(points)) if any(len(p.top1) > 1 for p in points) else ""
    return "\n".join(lines) + "\n" + note + "\n" + seeds


def render_csv(rows: list[Row], cols: list[Column]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["model", "dataset", "routing", "arm", "epochs", "active_macs", "params", "active_params", "top1", "top5",
                "router_superclass_top1"] + [c.head(csv=True) for c in cols] + ["published", "source"])
    for r, vals in zip(rows, table_rows(rows, cols)):
        w.writerow([r.model] + ["" if v is None else v for v in vals[1:]] + [int(r.published), r.source])
    return buf.getvalue()


# --------------------------------------------------------------------------------------- plots

def _save_fig(fig, path: Path) -> None:
    def write(f):
        fig.savefig(f, format="png", dpi=130, bbox_inches="tight")

    atomic_write_bytes(path, write)


ARM_STYLE = {  # label, line, colour (the marker is the dataset's)
    "dense": ("dense", "--", "tab:gray"),
    "moe-sc": ("Mobile V-MoE (superclass router)", "-", "tab:blue"),
    "moe-e2e": ("per-image MoE (end-to-end router)", "-", "tab:green"),
    "token": ("per-token V-MoE", "-", "tab:purple"),
    SUPERCLASS_SOURCE: ("dense stage (superclass source, not a baseline)", "none", "tab:olive"),
}
ARM_SHORT = {"dense": "dense", "moe-sc": "sc", "moe-e2e": "e2e", "token": "token", SUPERCLASS_SOURCE: "sc-src"}
DATASET_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
PUBLISHED_MARKER = {"dense": "o", "moe-sc": "s"}


def curves(points: list[Point]) -> dict[tuple, list[Point]]:
    """(dataset, arm, k, epochs) -> its points by MACs: a line joins runs that differ in size alone."""
    out: dict[tuple, list[Point]] = {}
    for p in points:
        out.setdefault((p.dataset, p.arm, p.top_k, p.epochs), []).append(p)
    return {key: sorted(pts, key=lambda p: p.macs) for key, pts in out.items()}


def curve_label(arm: str, dataset: str, top_k: int, epochs, model: str) -> str:
    """'Mobile V-MoE (superclass router), k=1 · digits · 45 ep': arm, data and epochs of every point."""
    name = ARM_STYLE[arm][0] if arm in ARM_STYLE else f"{model} ({arm})"
    k = f", k={top_k}" if top_k else ""
    return f"{name}{k} · {dataset} · {'?' if epochs is None else epochs} ep"


def _draw_points(ax, points: list[Point]) -> None:
    """One line per curve (runs that differ in size alone); seed std as error bars only where a
    point has several seeds. Colour: arm; marker: dataset; hollow: the superclass-source stage."""
    datasets = list(dict.fromkeys(p.dataset for p in points))
    for (ds, arm, k, epochs), pts in curves(points).items():
        _, ls, colour = ARM_STYLE.get(arm, ("", "none", "black"))
        marker = DATASET_MARKERS[datasets.index(ds) % len(DATASET_MARKERS)]
        xs, ys = [p.macs / 1e6 for p in pts], [p.mean for p in pts]
        seeds = any(len(p.top1) > 1 for p in pts)
        ax.errorbar(xs, ys, yerr=[p.std for p in pts] if seeds else None, capsize=3 if seeds else 0,
                    label=curve_label(arm, ds, k, epochs, pts[0].model), marker=marker,
                    ls=ls if len(pts) > 1 else "none", color=colour, mfc="none" if arm == SUPERCLASS_SOURCE else colour)
        for x, y in zip(xs, ys):  # the point itself says what the legend says, in short
            ax.annotate(f"{ARM_SHORT.get(arm, arm)}{'' if k in (0, 1) else f' k{k}'} {ds} {_fmt(epochs)}ep", (x, y),
                        textcoords="offset points", xytext=(4, 3), fontsize=6, color=colour)


def _draw_published(ax, rows: list[Row]) -> None:
    """Published points, each labelled in full inside the axes (right-hand labels point left)."""
    xs = [r.macs / 1e6 for r in rows]
    mid = math.sqrt(min(xs) * max(xs)) if xs else 0
    for r in rows:
        x = r.macs / 1e6
        ax.plot([x], [r.top1], marker=PUBLISHED_MARKER.get(r.arm, "*"), ls="none", color=ARM_STYLE[r.arm][2])
        right = x > mid
        ax.annotate(r.model, (x, r.top1), textcoords="offset points", xytext=(-5 if right else 5, 5),
                    ha="right" if right else "left", fontsize=7)
    if xs:
        lo, hi = min(xs), max(xs)
        ax.set_xlim(lo / 1.6, hi * 1.6)  # room for the points at both ends (log axis)
        ys = [r.top1 for r in rows]
        ax.set_ylim(min(ys) - 4, max(ys) + 4)


def _format_axes(ax, xs: list[float], title: str) -> None:
    import matplotlib.ticker

    wide = bool(xs) and max(xs) / min(xs) > 3
    if wide:
        ax.set_xscale("log")
        ticks: list[float] = []  # the measured points themselves, none within 15 % of the last
        for x in sorted(xs):
            if not ticks or x > 1.15 * ticks[-1]:
                ticks.append(x)
        ax.set_xticks(ticks)
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{float(f'{v:.3g}'):g}"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    if xs and not wide and title == "measured here":  # all at (nearly) equal MACs: a linear axis with some room
        lo, hi = min(xs), max(xs)
        pad = max(hi - lo, 0.05 * hi)
        ax.set_xlim(lo - pad, hi + pad)
    ax.set_xlabel("active MACs per image (M" + (", log scale)" if wide else ")"))
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)


def flops_figure(rows: list[Row]):
    """The figure of plot_flops_vs_accuracy (returned for tests): top-1 against active MACs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = aggregate(rows)
    pub = [r for r in rows if r.published]
    panels = [("measured here", points)] + ([("published, ImageNet-1k (not measured here)", pub)] if pub else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(6.8 * len(panels), 4.8), squeeze=False)
    for ax, (title, items) in zip(axes[0], panels):
        if title == "measured here":
            _draw_points(ax, items)
        else:
            _draw_published(ax, items)
        _format_axes(ax, [p.macs / 1e6 for p in items], title)
        if items and title == "measured here":  # below the axes: never over a point
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=1)
        elif not items:
            ax.text(0.5, 0.5, "no runs with accuracy", ha="center", va="center", transform=ax.transAxes)
    seeds = max((len(p.top1) for p in points), default=0)
    bars = "error bars: std over seeds" if seeds > 1 else "one seed per point, no error bars"
    fig.suptitle(f"Accuracy vs. compute per arm ({bars}; lines join runs that differ in size only)", fontsize=10)
    return fig


def plot_flops_vs_accuracy(rows: list[Row], path: Path) -> None:
    """Top-1 against active MACs per arm (the paper's Fig. 1 form), mean +- std over seeds;
    published ImageNet numbers in a panel of their own."""
    import matplotlib.pyplot as plt

    fig = flops_figure(rows)
    _save_fig(fig, path)
    plt.close(fig)


def routing_titles(rs: list[Row]) -> list[str]:
    """One title per routing panel: model, run folder, data and epochs; numbered if still alike."""
    titles = [f"{r.model} ({'/'.join(Path(r.source).parts[-2:])})\n{r.dataset}, {_fmt(r.epochs)} ep; "
              "diagonal = router follows superclasses" for r in rs]
    if len(set(titles)) < len(titles):
        titles = [f"[{i + 1}] {t}" for i, t in enumerate(titles)]
    return titles


def plot_routing(rows: list[Row], path: Path, max_runs: int = 6) -> None:
    """Superclass x expert usage heat maps (share of each superclass's val images per expert)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rs = [r for r in rows if r.expert_usage][:max_runs]
    n = max(1, len(rs))
    fig, axes = plt.subplots(1, n, figsize=(5.8 * n, 4.4), squeeze=False)
    if not rs:
        ax = axes[0][0]
        ax.text(0.5, 0.5, "no per-image MoE run with expert_usage", ha="center", va="center")
        ax.set_axis_off()
    for ax, r, title in zip(axes[0], rs, routing_titles(rs)):
        counts = np.asarray(r.expert_usage, dtype=float)  # (S, E)
        if counts.ndim != 2:
            raise MvmoeError(f"{r.source}: expert_usage must be a superclass x expert list of lists")
        share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
        im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1, aspect="auto")
        S, E = share.shape
        for i in range(S):
            for j in range(E):
                ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=8,
                        color="white" if share[i, j] > 0.6 else "black")
        names = r.superclass_names if r.superclass_names and len(r.superclass_names) == S else [f"sc{i}" for i in range(S)]
        ax.set_yticks(range(S), [s if len(s) < 16 else s[:14] + "…" for s in names], fontsize=8)
        ax.set_xticks(range(E), [f"e{j}" for j in range(E)], fontsize=8)
        ax.set_xlabel("expert chosen (top-1)")
        ax.set_ylabel("superclass of the true class")
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046, label="share of the superclass's val images")
    fig.tight_layout()
    _save_fig(fig, path)
    plt.close(fig)


# ---------------------------------------------------------------------------------------- main

def summary_lines(rows: list[Row], cols: list[Column], max_rows: int = 12) -> list[str]:
    """A short console summary (the wide table is in table.md): one line per measured run."""
    ours = [r for r in rows if not r.published]
    lines = [f"{r.model} · {r.dataset} · {r.arm} · {_fmt(r.epochs)} ep: top-1 {_fmt(r.top1, 'pct')} %, "
             f"{_fmt(r.macs, 'count')} MACs" + (f", {len(r.latency) + len(r.memory)} latency/memory figure(s)"
                                                 if r.latency or r.memory else "")
             for r in ours[:max_rows]]
    if len(ours) > max_rows:
        lines.append(f"... and {len(ours) - max_rows} more runs")
    lines.append(f"{len(ours)} runs, {len(cols)} latency/memory columns, "
                 f"{sum(r.published for r in rows)} published reference rows")
    return lines


def make_report(run_dirs: list[str | Path], latency_files: list[str | Path] = (), out: str | Path = "report",
                published: bool = True, summary: list | None = None) -> dict:
    """Write the four report files into `out`; returns {name: path}. A list given as `summary`
    receives the console summary's lines."""
    if not run_dirs and not latency_files:
        raise MvmoeError("give at least one RUN_DIR (or --latency FILE)")
    rows = load_runs(list(run_dirs))
    cols = attach_latency(rows, load_latency(list(latency_files)))
    if published:
        rows += published_rows()
    out = writable_dir(out, "--out")
    paths = {"table.md": out / "table.md", "table.csv": out / "table.csv",
             "flops_vs_accuracy.png": out / "flops_vs_accuracy.png", "routing.png": out / "routing.png"}
    atomic_write_text(paths["table.md"], render_markdown(rows, cols))
    atomic_write_text(paths["table.csv"], render_csv(rows, cols))
    plot_flops_vs_accuracy(rows, paths["flops_vs_accuracy.png"])
    plot_routing(rows, paths["routing.png"])
    if summary is not None:
        summary += summary_lines(rows, cols)
    return paths
