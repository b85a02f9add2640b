"""From scratch vs upcycled Mobile V-MoE at equal total epochs, on the embedded digits data.

Both arms pay for the same dense stage (the recipe needs it for the superclasses); they differ
only in where the MoE stage starts:

    scratch   `mvmoe train` (the embedded default): dense stage D epochs -> superclasses -> MoE
              M epochs from random weights (the dense weights are thrown away)
    upcycled  the same run's dense/model.pt and superclasses.json, then the MoE M epochs with
              `--init dense/model.pt --set moe_init=upcycle` (every expert a copy of the dense MLP,
              the router new, gate=unit so it starts as the dense model)

Total epochs are equal (D + M in both arms; the upcycled arm reuses the scratch arm's dense stage
of the same seed, which is deterministic on CPU, so both see the very same dense model and
superclasses). Settings are the embedded default's (vmoe-6x64 with 5 experts, D = 20, M = 45),
seeds 0, 1, 2, two one-thread processes.

    uv run python bench/upcycle_bench.py --out runs/upcycle-bench            # ~25-40 min on 2 cores
    uv run python bench/upcycle_bench.py --out /tmp/u --quick                # smoke check (1 + 1 epochs)

Prints one table (mean +- sample std over seeds, and per-seed differences) and writes
``OUT/results.json`` with the provenance (commit, command, versions).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mobile_vmoe.errors import MvmoeError, run_script
from mobile_vmoe.fileio import atomic_write_json
from mobile_vmoe.provenance import provenance

SEEDS = (0, 1, 2)


def mvmoe(args: list[str]) -> None:
    cmd = [str(Path(sys.executable).with_name("mvmoe")), "train", "--quiet", *args]  # the venv's console script
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise MvmoeError(f"{' '.join(cmd)} failed: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")


def epochs_args(quick: bool) -> list[str]:
    return ["--set", "epochs=1", "--set", "dense_epochs=1"] if quick else []


def run_seed(out: Path, seed: int, quick: bool) -> dict:
    """Both arms of one seed -> their summaries."""
    scratch, upcycled = out / f"scratch-s{seed}", out / f"upcycled-s{seed}"
    if not (scratch / "summary.json").exists():
        mvmoe(["--out", str(scratch), "--seed", str(seed), *epochs_args(quick)])
    if not (upcycled / "summary.json").exists():
        mvmoe(["--out", str(upcycled), "--seed", str(seed), *epochs_args(quick),
               "--superclasses", str(scratch / "superclasses.json"), "--init", str(scratch / "dense" / "model.pt"),
               "--set", "moe_init=upcycle"])
    read = lambda p: json.loads((p / "summary.json").read_text())  # noqa: E731
    return {"seed": seed, "scratch": read(scratch), "upcycled": read(upcycled), "dense": read(scratch / "dense")}


def mean_std(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.2f} +- {statistics.stdev(xs):.2f}" if len(xs) > 1 else f"{xs[0]:.2f}"


def table(rows: list[dict]) -> str:
    s = [r["scratch"]["top1"] for r in rows]
    u = [r["upcycled"]["top1"] for r in rows]
    d = [b - a for a, b in zip(s, u)]
    r0 = rows[0]
    lines = ["| arm | MoE top-1 (%) | router superclass top-1 (%) | epochs (dense + MoE) | active MACs |",
             "|---|---|---|---|---|"]
    for arm, xs in (("scratch", s), ("upcycled", u)):
        router = [r[arm]["router_superclass_top1"] for r in rows]
        epochs = f"{r0['dense']['epochs']} + {r0[arm]['epochs']}"
        lines.append(f"| {arm} | {mean_std(xs)} | {mean_std(router)} | {epochs} | {r0[arm]['macs'] / 1e6:.2f}M |")
    lines.append("")
    lines.append(f"upcycled - scratch, per seed {', '.join(f'{x:+.2f}' for x in d)}: mean {mean_std(d)} points "
                 f"({len(rows)} seeds; dense stage {mean_std([r['dense']['top1'] for r in rows])} %)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--quick", action="store_true", help="1 + 1 epochs, a smoke check of the script (not a result)")
    ap.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    ap.add_argument("--procs", type=int, default=2)
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with ThreadPoolExecutor(a.procs) as pool:
        rows = list(pool.map(lambda s: run_seed(a.out, s, a.quick), a.seeds))
    text = table(rows)
    print(text)
    atomic_write_json(a.out / "results.json", {
        "provenance": provenance(), "quick": a.quick, "seeds": a.seeds, "wall_seconds": round(time.time() - t0, 1),
        "table": text, "runs": [{"seed": r["seed"], **{arm: {k: r[arm][k] for k in ("top1", "router_superclass_top1",
                                                                                    "epochs", "macs", "model")}
                                                       for arm in ("scratch", "upcycled")},
                                 "dense_top1": r["dense"]["top1"]} for r in rows]})
    return 0


if __name__ == "__main__":
    run_script(main)
