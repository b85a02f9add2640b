"""Options study: the small Mobile V-MoE with and without distillation, QK-norm and parallel blocks, over seeds.

    uv run python bench/options_study.py --out runs/study-options          # the study (see docs/results.md)
    uv run python bench/options_study.py --summarize --out runs/study-options
    uv run python bench/options_study.py --quick --out /tmp/options-quick    # SMOKE CHECK only

Design (fixed before any run): the shapes data, the student is the per-image Mobile V-MoE at 6x64
(patch 8, E = 10, k = 1, the last 2 MLPs MoE, the paper's superclass recipe), 30 epochs, batch 64,
one warmup epoch, TrainConfig's other defaults, seeds 0-2. Arms:
    base      the student as it is (its dense stage writes the seed's superclasses.json)
    distill   + soft distillation (KL at tau 1, weight 0.5) from the teacher below
    qk_norm   + LayerNorm on queries and keys
    parallel  + parallel attention and MLP (one shared norm)
Every arm of one seed uses that seed's superclasses (from ``base``), so only the option differs.
The teacher is a wider dense ViT, 6x128 (8 heads, patch 8, 4x the student's active MACs), trained
once (seed 0) on the same training split for the same epochs; all students distill from it.

Follow-up (added after the first teacher, at the default lr 3e-3, stalled for 8 epochs and ended
at 21.6 % top-1, below every student): ``teacher-lr`` is the same 6x128 teacher at lr 1.5e-3 (the
default scaled by 64/128, the student's width over the teacher's, fixed before it ran), and
``distill-lr`` the students distilled from it. The first teacher's arm is kept and reported.

Runs go to OUT/<teacher> and OUT/seed<k>/<arm>; OUT/results.json is rewritten after each run, so a
stopped study resumes. The training throughput cost of each option is measured apart, side by
side, by ``bench/bench_train.py --options``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from routing_study import STUDY_SETTINGS, check_commits, ms, size_settings, train_or_continue

DISTILL = {"distill": "soft", "distill_weight": 0.5, "distill_tau": 1.0}
ARMS = {"base": {}, "distill": DISTILL, "qk_norm": {"qk_norm": True}, "parallel": {"parallel_block": True},
        "distill-lr": DISTILL}
TEACHERS = {"teacher": {}, "teacher-lr": {"lr": 0.012}}  # lr 1.5e-3 at batch 64; the teacher each distill arm uses: ARM_TEACHER
ARM_TEACHER = {"distill": "teacher", "distill-lr": "teacher-lr"}
STUDENT, TEACHER, DATA, EXPERTS = "6x64", "6x128", "shapes", 10
KEYS = ("model", "top1", "top5", "router_superclass_top1", "macs", "active_params", "params", "train_seconds",
        "commit")


# --quick: the study's steps on tiny data and models (it checks that the script runs, not the claim)
QUICK = {"data": "shapes:20:4", "student": "3x32", "teacher": "3x64"}


def run_one(arm: str, seed: int, epochs: int, out: Path, quick: bool = False) -> dict:
    """Train one run in a worker process (one thread); returns its result row."""
    import torch

    from mobile_vmoe.train import resolve

    torch.set_num_threads(1)
    t0 = time.time()
    if arm in TEACHERS:
        settings = {**size_settings(QUICK["teacher"] if quick else TEACHER), **STUDY_SETTINGS, **TEACHERS[arm]}
        tcfg, bundle = resolve("vit-6x64-p32", QUICK["data"] if quick else DATA, settings, epochs=epochs, seed=seed)
        where = out / arm
        s = train_or_continue(tcfg, bundle, where, "none")
    else:
        where = out / f"seed{seed}" / arm
        settings = {**size_settings(QUICK["student"] if quick else STUDENT), **STUDY_SETTINGS, "num_experts": EXPERTS,
                    **ARMS[arm]}
        if arm in ARM_TEACHER:
            settings["teacher"] = str(out / ARM_TEACHER[arm] / "model.pt")
        sc = "auto" if arm == "base" else str(out / f"seed{seed}" / "base" / "superclasses.json")
        tcfg, bundle = resolve("vmoe-6x64-p32", QUICK["data"] if quick else DATA, settings, epochs=epochs, seed=seed)
        s = train_or_continue(tcfg, bundle, where, sc)
    return {"arm": arm, "seed": seed, "epochs": epochs, **{k: s.get(k) for k in KEYS},
            "wall_seconds": round(time.time() - t0, 1), "dir": str(where)}


def summarize(results: list[dict]) -> str:
    """Markdown: per arm, mean +- sample std over seeds, and the paired gap to ``base``."""
    base = {r["seed"]: r["top1"] for r in results if r["arm"] == "base"}
    lines = ["| arm | n | top-1 (%) | top-5 (%) | router superclass top-1 (%) | top-1 - base (paired) | "
             "active MACs | train s / run |", "|---|---|---|---|---|---|---|---|"]
    for arm in (*TEACHERS, *ARMS):
        rs = [r for r in results if r["arm"] == arm]
        if not rs:
            continue
        gap = [r["top1"] - base[r["seed"]] for r in rs if r["seed"] in base] if arm != "base" and arm not in TEACHERS else []
        lines.append(f"| {arm} | {len(rs)} | {ms([r['top1'] for r in rs])} | {ms([r['top5'] for r in rs])} | "
                     f"{ms([r.get('router_superclass_top1') for r in rs])} | {ms(gap) if gap else '-'} | "
                     f"{rs[0]['macs'] / 1e6:.2f}M | {statistics.mean(r['train_seconds'] for r in rs):.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--jobs", type=int, default=2, help="one-thread training processes side by side")
    ap.add_argument("--out", type=Path, default=Path("runs/study-options"))
    ap.add_argument("--summarize", action="store_true", help="only print the table from OUT/results.json")
    ap.add_argument("--mixed-commits", action="store_true", help="with --summarize: pool runs of different commits")
    ap.add_argument("--quick", action="store_true", help="SMOKE CHECK: tiny data and models, 1 seed, 1 epoch")
    a = ap.parse_args(argv)
    if a.quick:
        a.seeds, a.epochs = 1, 1
        print("SMOKE CHECK (--quick): tiny data and models, 1 seed, 1 epoch; it checks that the study runs, not the claim")
    res_path = a.out / "results.json"
    results = json.loads(res_path.read_text()) if res_path.exists() else []
    if a.summarize:
        check_commits(results, a.mixed_commits)  # rows of the first run have no commit: None
        print(summarize(results))
        return 0
    from mobile_vmoe.fileio import atomic_write_json

    done = {(r["arm"], r["seed"]) for r in results}
    # phase 1 makes what phase 2 needs: the teacher and each seed's superclasses
    phases = [[(t, 0) for t in TEACHERS] + [("base", s) for s in range(a.seeds)],
              [(arm, s) for s in range(a.seeds) for arm in ARMS if arm != "base"]]
    t0 = time.time()
    with ProcessPoolExecutor(max_workers=max(1, a.jobs)) as pool:
        for phase in phases:
            futures = [pool.submit(run_one, arm, seed, a.epochs, a.out, a.quick) for arm, seed in phase
                       if (arm, seed) not in done]
            for f in as_completed(futures):
                row = f.result()
                results.append(row)
                atomic_write_json(res_path, results)
                print(json.dumps({k: row[k] for k in ("arm", "seed", "top1", "wall_seconds")}, allow_nan=False), flush=True)
    print(f"done in {(time.time() - t0) / 60:.1f} min")
    print(summarize(results))
    return 0


if __name__ == "__main__":
    from mobile_vmoe.errors import run_script

    run_script(main)
