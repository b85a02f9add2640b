"""Routing study: does per-image routing with superclass guidance beat its dense twin at equal active MACs?

    uv run python bench/routing_study.py --out runs/study                  # the pre-registered study
    uv run python bench/routing_study.py --probe-only --out runs/probe     # the 1-epoch timing probe alone
    uv run python bench/routing_study.py --quick --out runs/study-quick    # SMOKE CHECK only (4.5 min, loaded box)
    uv run python bench/routing_study.py --summarize --out runs/study      # the tables again

The claim tested (the paper's Fig. 3e: per-image end-to-end +1.87, per-image superclass +2.72 over
dense at ViT-Tiny scale): per-image routing with superclass guidance beats the dense twin at equal
active MACs, and beats the end-to-end router. Not that it beats per-token V-MoE.

PROTOCOL, fixed before any run (the constants below hold it; the results record them):
- Data: ``shapes-disjoint`` (each superclass owns its outline, hue band and detail family: the
  test) and ``shapes`` (details shared across outlines: the negative control, where experts should
  not help); 100 classes in 10 planted superclasses, 60 train / 20 eval images per class, E = 10.
- Sizes DxW: 6x32, 6x48, 6x64 (heads W/16, patch 8, 16 tokens; MoE k = 1 in the last 2 blocks).
- Learning rate per (data, size), chosen ONCE by the dense arm: seed 0, trained on the training
  split less its 10 % stratified holdout and scored on that holdout, for each lr in LR_GRID (stated
  per 512 images as TrainConfig does; at batch 64 the optimizer runs 7.5e-4, 1.5e-3, 3e-3); the
  highest final holdout top-1 wins (ties: the smaller lr). Every arm of that size then uses it
  (conservative for the MoE, whose lr is not tuned).
- EPOCHS = 60 for every arm (the dense stage of moe-sc too), warmup EPOCHS / 30 epochs (the 1-in-30
  of the earlier 30-epoch study), cosine, batch 64, AdamW, TrainConfig's other defaults, one thread;
  the arms are evaluated once, at the end (only the lr runs need a curve).
- Validity gate (flattening): the chosen lr's dense holdout top-1 must change by < 0.2 points per
  epoch (least-squares slope over the last 5 epochs). A size that fails is reported, not read.
- Seeds 0-4 for every arm:
    dense           the dense twin, full training split
    moe-sc          Mobile V-MoE: dense stage on train less the holdout, superclasses from its
                    confusions on the holdout (balanced, one per expert), MoE with CE + 0.3 router CE
    moe-sc-planted  the same MoE on the planted superclasses (separates routing from clustering)
    moe-e2e         per-image MoE, router trained end to end (+ importance / Switch balancing loss)
    token           per-token V-MoE (k = 1, capacity 1.05, BPR); scored at batch 1 as exported
                    (its verdict) AND with the training group (the batch: 64 images), both shown
- Router gate: a superclass arm's router must send >= 85 % of holdout images (mean over seeds) to
  their superclass's expert, else its comparisons are reported as "router gate failed", not read.
- Statistic (bench/study_stats.py): per-seed paired difference (arm - reference), 90 % t interval;
  supports = mean >= 2 points and Holm-corrected one-sided p(gain <= 0) < 0.05; contradicts =
  Holm-corrected one-sided p(gain >= 2) < 0.05 (90 % upper bound < 2); else inconclusive. One Holm
  family per dataset: the 5 comparisons of COMPARISONS at every size. Gated comparisons stay in it.
  (For moe-sc - moe-e2e the paper's own gap is 0.85 points, so "contradicts" there means "under 2
  points", as the paper predicts; only "supports" would say more.)
- Reported with it: ARI of moe-sc's clustered superclasses against the planted ones, training
  compute per arm (3 x MACs x images seen; moe-sc includes its dense stage) and wall seconds.
- Budget and cuts: a 1-epoch timing probe of each size (dense, per-image MoE, token; JOBS
  one-thread processes side by side) runs first and projects the wall time. If it exceeds
  BUDGET_MIN, cuts are made in this order until it fits: sizes, largest first, down to one; then
  the negative control's token arm, then its moe-e2e arm. Seeds and epochs are never cut. If it
  still does not fit, the study runs anyway and says so.

Runs go to OUT/<data>/lr/<size>-lr<lr> and OUT/<data>/seed<k>/<size>/<arm>; OUT/results.json
(``provenance``, ``protocol``, ``probe``, ``plan``, ``lr``, ``runs``) is rewritten atomically after
each run, so a stopped study resumes where it stopped. ``--summarize`` refuses to pool runs made
at different commits unless ``--mixed-commits`` is given.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import study_stats

from mobile_vmoe.errors import MvmoeError

DATASETS = ["shapes-disjoint", "shapes"]  # the test, the negative control
SIZES = ["6x32", "6x48", "6x64"]
SEEDS = 5
EPOCHS = 60
LR_GRID = [6e-3, 1.2e-2, 2.4e-2]  # per 512 images (TrainConfig's convention): 7.5e-4, 1.5e-3, 3e-3 at batch 64
WARMUP_PER_EPOCH = 1 / 30
ARMS = ("dense", "moe-sc", "moe-sc-planted", "moe-e2e", "token")
COMPARISONS = (("moe-sc", "dense"), ("moe-sc-planted", "dense"), ("moe-e2e", "dense"), ("token", "dense"),
               ("moe-sc", "moe-e2e"))
SUPERCLASS_ARMS = ("moe-sc", "moe-sc-planted")
ROUTER_GATE = 85.0  # % of holdout images routed to their superclass's expert
BUDGET_MIN = 90.0
JOBS = 2
CONTROL_CUTS = ("token", "moe-e2e")  # negative-control arms dropped, in order, after the sizes
PROTOCOL_SETTINGS = {"batch_size": 64, "threads": 1}
# The earlier study's settings (bench/options_study.py still uses them).
STUDY_SETTINGS = {"batch_size": 64, "lr": 0.024, "warmup_epochs": 1.0, "threads": 1}  # lr 3e-3 at batch 64
QUICK = dict(data=["shapes-disjoint:20:4", "shapes:20:4"], sizes=["3x32"], seeds=2, epochs=5)


def size_settings(size: str) -> dict:
    """"6x48" -> depth 6, width 48, heads 3 (head dim 16)."""
    try:
        depth, width = (int(v) for v in size.split("x"))
    except ValueError:
        raise MvmoeError(f"--sizes {size!r}: expected DEPTHxWIDTH, e.g. 6x64") from None
    if width % 16:
        raise MvmoeError(f"--sizes {size!r}: width must be a multiple of 16 (heads of dimension 16)")
    return {"depth": depth, "width": width, "heads": width // 16}


def num_experts(data: str) -> int:
    """One expert per planted superclass: shapes* and synthetic name S in their spec; digits 5."""
    parts = data.split(":")
    if len(parts) >= 3:
        return int(parts[2])
    return {"digits": 5, "synthetic": 4}.get(parts[0], 10)


def settings_for(arm: str, data: str, size: str, lr: float, epochs: int, extra: dict) -> dict:
    s = {**size_settings(size), **PROTOCOL_SETTINGS, "lr": lr, "warmup_epochs": epochs * WARMUP_PER_EPOCH, **extra}
    if arm != "lr":  # only the lr runs need the per-epoch curve (the flattening gate)
        s["eval_every"] = epochs
    if arm not in ("dense", "lr"):
        s["num_experts"] = num_experts(data)
    if arm == "token":
        s["routing"] = "token"
    return s


def train_macs(macs: int, epochs: int, images: int, batch: int) -> float:
    """Training compute: forward + backward ~ 3 x forward MACs, over the images of full batches."""
    return 3.0 * macs * epochs * (images // batch) * batch


# ------------------------------------------------------------------------------- workers
def run_lr(data: str, size: str, lr: float, epochs: int, out: Path, extra: dict) -> dict:
    """Dense, seed 0, on train less the holdout, scored on the holdout every epoch."""
    import torch

    from mobile_vmoe.data.holdout import split_for_superclasses
    from mobile_vmoe.provenance import git_state
    from mobile_vmoe.train import fit, resolve

    torch.set_num_threads(1)
    t0 = time.time()
    settings = settings_for("lr", data, size, lr, epochs, extra)
    tcfg, bundle = resolve("vit-6x64-p32", data, settings, epochs=epochs, seed=0)
    rest, holdout = split_for_superclasses(bundle, tcfg.superclass_holdout, tcfg.seed)
    where = out / data.replace(":", "-") / "lr" / f"{size}-lr{lr:g}"
    s = fit(tcfg, dataclasses.replace(rest, val=holdout), where, quiet=True, stage="dense", resume=True)  # a stopped lr run continues
    curve = [json.loads(line)["top1"] for line in (where / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "eval"]
    return {"kind": "lr", "data": data, "size": size, "lr": lr, "epochs": epochs, "holdout_top1": s["top1"],
            "curve": curve, "train_seconds": s["train_seconds"], "wall_seconds": round(time.time() - t0, 1),
            "commit": s.get("commit"), "dirty": git_state()[1], "dir": str(where)}


def train_or_continue(tcfg, bundle, where: Path, superclasses: str) -> dict:
    """``train`` into ``where``; a run that a stopped study left there half-trained is continued
    (``resume``, exact on CPU), not refused. A run there with other settings is an error."""
    from mobile_vmoe.fileio import read_json_object
    from mobile_vmoe.train import resume, train

    if not (where / "run.json").is_file():
        return train(tcfg, bundle, where, superclasses=superclasses, quiet=True)
    run = read_json_object(where / "run.json")
    want = json.loads(json.dumps(tcfg.replace(stop_after_steps=0).to_dict()))
    if run.get("train_config") != want or run.get("superclasses") != str(superclasses):
        raise MvmoeError(f"{where} holds a run with other settings: move it away or pick another --out")
    return resume(where, quiet=True)


def run_arm(data: str, size: str, seed: int, arm: str, lr: float, epochs: int, out: Path, extra: dict) -> dict:
    """Train one arm; score it (token at batch 1 and 64, routers on the holdout); -> result row."""
    import torch

    from mobile_vmoe.provenance import git_state
    from mobile_vmoe.train import resolve

    torch.set_num_threads(1)
    t0 = time.time()
    base = "vit-6x64-p32" if arm == "dense" else "vmoe-6x64-p32"
    tcfg, bundle = resolve(base, data, settings_for(arm, data, size, lr, epochs, extra), epochs=epochs, seed=seed)
    where = out / data.replace(":", "-") / f"seed{seed}" / size / arm
    sc = {"moe-sc": "auto", "moe-sc-planted": str(planted_file(out, data))}.get(arm, "none")
    s = train_or_continue(tcfg, bundle, where, sc)
    row = {"kind": "arm", "data": data, "size": size, "seed": seed, "arm": arm, "lr": lr, "epochs": epochs,
           "top1": s["top1"], "top5": s["top5"], "macs": s["macs"], "active_params": s["active_params"],
           "params": s["params"], "router_eval_top1": s.get("router_superclass_top1"),
           "expert_entropy": s.get("expert_entropy"), "expert_entropy_max": s.get("expert_entropy_max"),
           "token_drop_fraction": s.get("token_drop_fraction"), "superclass_sizes": s.get("superclass_sizes"),
           "commit": s.get("commit"), "dirty": git_state()[1], "dir": str(where)}
    row.update(score(arm, tcfg, bundle, where, s))
    row["wall_seconds"] = round(time.time() - t0, 1)
    return row


def stage_scores(tcfg, bundle, where: Path, s: dict, dense_stage: bool, router: bool, dev: str = "cpu") -> dict:
    """Training compute and seconds (the dense stage's added where the arm had one), the ARI of its
    superclasses, and its router's superclass top-1 on the holdout (``router``)."""
    import torch
    from torch.utils.data import DataLoader

    from mobile_vmoe.checkpoint import model_from_checkpoint
    from mobile_vmoe.data.holdout import split_for_superclasses
    from mobile_vmoe.data.superclasses import load_superclasses, planted_ari
    from mobile_vmoe.train.evaluate import evaluate

    n, b = len(bundle.train), tcfg.batch_size
    out = {"train_macs": train_macs(s["macs"], tcfg.epochs, n, b), "train_seconds": s["train_seconds"]}
    if dense_stage or router:
        rest, holdout = split_for_superclasses(bundle, tcfg.superclass_holdout, tcfg.seed)
    if dense_stage:
        out["train_macs"] += train_macs(s["dense"]["macs"], s["dense"]["epochs"], len(rest.train), b)
        out["train_seconds"] += json.loads((where / "dense" / "summary.json").read_text())["train_seconds"]
        sc = load_superclasses(where / "superclasses.json", bundle.class_names)
        out["ari"] = planted_ari(bundle.planted_superclasses, sc["class_to_superclass"])
    if router:
        model, ck = model_from_checkpoint(where / "model.pt")
        c2s = torch.tensor(ck["superclasses"]["class_to_superclass"])
        ev = evaluate(model.to(dev), DataLoader(holdout, batch_size=256), class_to_superclass=c2s, device=dev)
        out["router_holdout_top1"] = ev["router_superclass_top1"]
    return out


def score(arm: str, tcfg, bundle, where: Path, s: dict) -> dict:
    """Compute, ARI, router accuracy on the holdout, the token arm at batch 1 and at the training group."""
    import torch
    from torch.utils.data import DataLoader

    from mobile_vmoe.checkpoint import model_from_checkpoint
    from mobile_vmoe.train.evaluate import evaluate

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    out = stage_scores(tcfg, bundle, where, s, arm == "moe-sc", arm in SUPERCLASS_ARMS, dev)
    if arm == "token":
        model = model_from_checkpoint(where / "model.pt")[0].to(dev)
        b = tcfg.batch_size
        out["top1_group"] = evaluate(model, DataLoader(bundle.val, batch_size=b), device=dev)["top1"]
        out["top1_batch1"] = evaluate(model, DataLoader(bundle.val, batch_size=1), device=dev)["top1"]
        out["top1"] = out["top1_batch1"]  # as exported: one image per routing group
    return out


def probe_train(base: str, data: str, settings: dict, where: Path) -> tuple[dict, object, float, float]:
    """One timed epoch of ``base`` with ``settings`` into ``where`` -> (summary, data bundle, setup s,
    train+eval wall s)."""
    import torch

    from mobile_vmoe.train import resolve, train

    torch.set_num_threads(1)
    t0 = time.time()
    tcfg, bundle = resolve(base, data, settings, epochs=1, seed=0)
    if where.exists():  # a probe a stopped study left: its timing is worthless, time it afresh
        shutil.rmtree(where)
    t1 = time.time()
    s = train(tcfg, bundle, where, superclasses="none", quiet=True)
    return s, bundle, t1 - t0, time.time() - t1


def probe_one(size: str, kind: str, data: str, out: Path, extra: dict) -> dict:
    """One epoch of ``kind`` (dense | moe | token) at ``size``: -> seconds of setup, train and eval."""
    from torch.utils.data import DataLoader

    from mobile_vmoe.checkpoint import model_from_checkpoint
    from mobile_vmoe.train.evaluate import evaluate

    arm = {"dense": "dense", "moe": "moe-e2e", "token": "token"}[kind]
    where = out / "probe" / f"{size}-{kind}"
    s, bundle, setup, _ = probe_train("vit-6x64-p32" if kind == "dense" else "vmoe-6x64-p32", data,
                              settings_for(arm, data, size, LR_GRID[0], 1, extra), where)
    t1 = time.time()
    model = model_from_checkpoint(where / "model.pt")[0]
    evaluate(model, DataLoader(bundle.val, batch_size=64))
    row = {"size": size, "kind": kind, "train_epoch_s": s["train_seconds"], "eval_s": round(time.time() - t1, 2),
           "setup_s": round(setup, 2), "batch1_s": 0.0}
    if kind == "token":  # the arm is also scored at batch 1
        t2 = time.time()
        evaluate(model, DataLoader(bundle.val, batch_size=1))
        row["batch1_s"] = round(time.time() - t2, 2)
    return row


# ---------------------------------------------------------------------------- projection
def run_seconds(probe: dict, size: str, arm: str, epochs: int, holdout: float = 0.1) -> float:
    """Projected seconds of one run from the probe's {(size, kind): row} (1-epoch measurements)."""
    def stage(kind: str, share: float, evals: float) -> float:  # train epochs on ``share`` of the split
        r = probe[(size, kind)]
        return epochs * share * r["train_epoch_s"] + evals * r["eval_s"]

    setup = probe[(size, "dense")]["setup_s"]
    if arm == "lr":  # scored on the holdout every epoch (3 x holdout as many images as eval: 60 / 20 per class)
        return setup + stage("dense", 1 - holdout, epochs * 3 * holdout)
    if arm == "dense":
        return setup + stage("dense", 1, 1)
    if arm == "token":  # + the rescoring at the training group size and at batch 1
        return setup + stage("token", 1, 2) + probe[(size, "token")]["batch1_s"]
    dense_stage = stage("dense", 1 - holdout, 1) if arm == "moe-sc" else 0.0
    return setup + dense_stage + stage("moe", 1, 2)  # + the router on the holdout


def project(probe: dict, datasets: list[str], sizes: list[str], control_arms: list[str], seeds: int, epochs: int,
            lr_grid: list[float], jobs: int) -> float:
    """Projected wall minutes of the study (total process seconds / jobs); datasets[1:] are controls."""
    total = 0.0
    for i, _ in enumerate(datasets):
        arms = ARMS if i == 0 else control_arms
        for size in sizes:
            total += len(lr_grid) * run_seconds(probe, size, "lr", epochs)
            total += seeds * sum(run_seconds(probe, size, arm, epochs) for arm in arms)
    return total / max(jobs, 1) / 60


def plan(probe: dict, datasets: list[str], sizes: list[str], seeds: int, epochs: int, lr_grid: list[float],
         jobs: int, budget_min: float = BUDGET_MIN, keep_largest: bool = False) -> dict:
    """The pre-registered cuts: sizes largest first (``keep_largest``: smallest first, the GPU
    variant's rule) down to one, then the control's CONTROL_CUTS."""
    sizes = sorted(sizes, key=lambda sz: [int(v) for v in sz.split("x")], reverse=keep_largest)
    control = list(ARMS)
    cuts = []

    def minutes():
        return project(probe, datasets, sizes, control, seeds, epochs, lr_grid, jobs)

    first = minutes()
    while minutes() > budget_min and len(sizes) > 1:
        cuts.append(f"size {sizes.pop()}")
    for arm in CONTROL_CUTS:
        if minutes() <= budget_min or len(datasets) < 2:
            break
        control.remove(arm)
        cuts.append(f"control arm {arm}")
    return {"sizes": sizes, "control_arms": control, "cuts": cuts, "projected_min_uncut": round(first, 1),
            "projected_min": round(minutes(), 1), "over_budget": minutes() > budget_min, "budget_min": budget_min,
            "jobs": jobs}


# ---------------------------------------------------------------------------- statistics
def mean_sd(vals) -> str:
    vals = [v for v in vals if v is not None]
    if not vals:
        return "-"
    return f"{statistics.mean(vals):.1f} ± {statistics.stdev(vals) if len(vals) > 1 else 0.0:.1f}"


ms = mean_sd  # the name bench/options_study.py imports


def arm_rows(res: dict) -> list[dict]:
    return [r for r in res["runs"] if r.get("kind") == "arm"]


def gate_notes(res: dict, data: str, size: str, arm: str, ref: str) -> str:
    """"" when the comparison may be read, else why not (flattening gate, router gate)."""
    notes = []
    if not res["lr"].get(f"{data}|{size}", {}).get("flat", False):
        notes.append("dense not flattened")
    for a in (arm, ref):
        if a in SUPERCLASS_ARMS:
            acc = [r.get("router_holdout_top1") for r in arm_rows(res)
                   if (r["data"], r["size"], r["arm"]) == (data, size, a) and r.get("router_holdout_top1") is not None]
            if not acc or statistics.mean(acc) < ROUTER_GATE:
                notes.append(f"router gate failed ({a})")
    return "; ".join(notes)


def comparisons(res: dict, data: str) -> list[dict]:
    """Every comparison of one dataset (one Holm family) with its paired numbers and verdict."""
    rows = [r for r in arm_rows(res) if r["data"] == data]
    by = {(r["size"], r["arm"], r["seed"]): r["top1"] for r in rows}
    found = []
    for size in dict.fromkeys(r["size"] for r in rows):
        for arm, ref in COMPARISONS:
            seeds = sorted(sd for (sz, a, sd) in by if (sz, a) == (size, arm) and (size, ref, sd) in by)
            if len(seeds) < 2:
                continue
            diffs = [by[(size, arm, sd)] - by[(size, ref, sd)] for sd in seeds]
            found.append({"data": data, "size": size, "arm": arm, "ref": ref, "seeds": seeds,
                          **study_stats.paired(diffs), "gate": gate_notes(res, data, size, arm, ref)})
    judged = study_stats.verdicts(found) if found else []
    for c in judged:
        c["reading"] = c["verdict"] if not c["gate"] else f"not read: {c['gate']}"
    return judged


def check_commits(runs: list[dict], allow_mixed: bool) -> set:
    """The commits the runs were made at; more than one is an error unless ``allow_mixed``."""
    commits = {r.get("commit") for r in runs}
    if len(commits) > 1 and not allow_mixed:
        raise MvmoeError(f"these runs were made at {len(commits)} different commits "
                         f"({', '.join(sorted(str(c)[:10] for c in commits))}): pooling them mixes code versions; "
                         "pass --mixed-commits to pool them anyway")
    return commits


# -------------------------------------------------------------------------------- tables
def lr_table(res: dict) -> str:
    lines = ["| data | size | holdout top-1 per lr (%) | chosen lr | slope, last 5 epochs (points/epoch) "
             "| flattened (< 0.2)? |",
             "|---|---|---|---|---|---|"]
    for key, v in res["lr"].items():
        data, size = key.split("|")
        per = ", ".join(f"{lr}: {acc:.1f}" for lr, acc in v["holdout_top1"].items())
        slope = "-" if v["slope"] is None else f"{v['slope']:+.3f}"
        lines.append(f"| {data} | {size} | {per} | {v['lr']:g} | {slope} | {'yes' if v['flat'] else '**no**'} |")
    return "\n".join(lines)


def arm_table(res: dict) -> str:
    """Per data, size and arm: top-1, gates' inputs, ARI, token at both group sizes, compute."""
    lines = ["| data | size | arm | n | top-1 (%) | router top-1 holdout / eval (%) | ARI vs planted | "
             "token top-1 batch 1 / training group (%) | active MACs | train GMACs (x dense) | train min |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    rows = arm_rows(res)
    for data in dict.fromkeys(r["data"] for r in rows):
        for size in dict.fromkeys(r["size"] for r in rows if r["data"] == data):
            dense = [r["train_macs"] for r in rows if (r["data"], r["size"], r["arm"]) == (data, size, "dense")]
            for arm in ARMS:
                rs = [r for r in rows if (r["data"], r["size"], r["arm"]) == (data, size, arm)]
                if not rs:
                    continue
                tm = statistics.mean(r["train_macs"] for r in rs)
                ratio = f" ({tm / statistics.mean(dense):.2f}x)" if dense else ""
                router = (f"{mean_sd([r.get('router_holdout_top1') for r in rs])} / "
                          f"{mean_sd([r.get('router_eval_top1') for r in rs])}" if arm in SUPERCLASS_ARMS else "-")
                token = (f"{mean_sd([r.get('top1_batch1') for r in rs])} / {mean_sd([r.get('top1_group') for r in rs])}"
                         if arm == "token" else "-")
                ari = [r["ari"] for r in rs if r.get("ari") is not None]
                ari_s = f"{statistics.mean(ari):.2f} (min {min(ari):.2f})" if ari else "-"
                lines.append(f"| {data} | {size} | {arm} | {len(rs)} | {mean_sd([r['top1'] for r in rs])} | {router} | "
                             f"{ari_s} | {token} | {rs[0]['macs'] / 1e6:.2f}M | {tm / 1e9:.4g}{ratio} | "
                             f"{statistics.mean(r['train_seconds'] for r in rs) / 60:.1f} |")
    return "\n".join(lines)


def verdict_table(res: dict) -> str:
    lines = ["| data | size | arm - reference | n | per seed | mean | 90 % CI | Holm p (gain <= 0) | "
             "Holm p (gain >= 2) | verdict |", "|---|---|---|---|---|---|---|---|---|---|"]
    for data in dict.fromkeys(r["data"] for r in arm_rows(res)):
        for c in comparisons(res, data):
            per = " / ".join(f"{d:+.1f}" for d in c["diffs"])
            lines.append(f"| {data} | {c['size']} | {c['arm']} - {c['ref']} | {c['n']} | {per} | {c['mean']:+.2f} | "
                         f"[{c['lower90']:+.2f}, {c['upper90']:+.2f}] | {c['p_gain_holm']:.3f} | "
                         f"{c['p_short_holm']:.3f} | {c['reading']} |")
    return "\n".join(lines)


def provenance_lines(res: dict, allow_mixed: bool, quick: str) -> list[str]:
    """The head of a study's summary: commits and command, wall time, mixed-commit and dirty warnings."""
    commits = check_commits(res["runs"], allow_mixed)
    prov = res.get("provenance") or {}
    head = [f"commit(s): {', '.join(sorted(str(c) for c in commits))}; study command: {prov.get('command')}"]
    if res.get("wall_minutes"):
        head.append(f"wall: {sum(res['wall_minutes']):.1f} min ({' + '.join(map(str, res['wall_minutes']))} per invocation)")
    if len(commits) > 1:
        head.append(f"WARNING: runs made at {len(commits)} different commits are pooled below")
    if any(r.get("dirty") for r in res["runs"]):
        head.append("WARNING: some runs were made with uncommitted changes (dirty checkout)")
    if res.get("quick"):
        head.append(f"SMOKE CHECK (--quick): {quick}; it checks that the study runs, its numbers mean nothing")
    return head


def summarize(res: dict, allow_mixed: bool = False) -> str:
    head = provenance_lines(res, allow_mixed, "tiny data, 5 epochs")
    plan_ = res.get("plan") or {}
    if plan_:
        head.append(f"plan: sizes {plan_.get('sizes')}, control arms {plan_.get('control_arms')}, cuts "
                    f"{plan_.get('cuts') or 'none'}, projected {plan_.get('projected_min')} min")
    return "\n\n".join(["\n".join(head), lr_table(res), arm_table(res), verdict_table(res)])


def per_superclass(res: dict, data: str, size: str) -> str:
    """EXPLORATORY (not part of the protocol): top-1 per planted superclass (class c in c % S) of every
    arm at ``size``, mean over seeds (each seed's models on that seed's generated data)."""
    import torch

    from mobile_vmoe.checkpoint import model_from_checkpoint
    from mobile_vmoe.data import build_data

    torch.set_num_threads(1)
    rs = [r for r in arm_rows(res) if (r["data"], r["size"]) == (data, size)]
    if not rs:
        raise MvmoeError(f"--per-superclass {data} {size}: no runs of that data and size in the results")
    bundles = {seed: build_data(data, augment="none", seed=seed) for seed in {r["seed"] for r in rs}}  # seeded data
    names = next(iter(bundles.values())).class_names
    S = max(next(iter(bundles.values())).planted_superclasses) + 1
    lines = ["| arm | " + " | ".join(n.split(".")[0] for n in names[:S]) + " |", "|---|" + "---|" * S]
    for arm in ARMS:
        accs = []
        for r in (r for r in rs if r["arm"] == arm):
            val = bundles[r["seed"]].val
            x, y = val.transform(val.images), val.labels  # (N, 3, H, W) normalised, (N,)
            model, _ = model_from_checkpoint(Path(r["dir"]) / "model.pt")
            step = 1 if arm == "token" else 500  # the token arm as exported: one image per routing group
            with torch.no_grad():
                pred = torch.cat([model(x[i:i + step]).argmax(-1) for i in range(0, len(x), step)])
            accs.append([100 * float((pred[y % S == s] == y[y % S == s]).float().mean()) for s in range(S)])
        if accs:
            lines.append(f"| {arm} | " + " | ".join(f"{statistics.mean(v):.1f}" for v in zip(*accs)) + " |")
    return "EXPLORATORY (post hoc, not pre-registered)\n\n" + "\n".join(lines)


# ----------------------------------------------------------------------------- the study
def planted_file(out: Path, data: str) -> Path:
    return out / data.replace(":", "-") / "planted_superclasses.json"


def write_planted(out: Path, data: str) -> None:
    """The planted class -> superclass map as a superclasses.json (for moe-sc-planted)."""
    from mobile_vmoe.data import build_data
    from mobile_vmoe.data.superclasses import make_superclasses, save_superclasses

    bundle = build_data(data, augment="none")
    if bundle.planted_superclasses is None:
        raise MvmoeError(f"{data} has no planted superclasses: the moe-sc-planted arm needs a generated set")
    save_superclasses(planted_file(out, data), make_superclasses(bundle.class_names, bundle.planted_superclasses,
                                                                 source=f"planted superclasses of {data}"))


def execute(calls: list[tuple], jobs: int, on_row) -> None:
    """Run ``(fn, *args)`` calls, ``jobs`` one-thread processes side by side (<= 1: in this process)."""
    if jobs <= 1:
        for fn, *args in calls:
            on_row(fn(*args))
        return
    import multiprocessing

    # spawn: a forked child must not inherit a CUDA context (the GPU variant), and spawn is safe everywhere
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        for f in as_completed([pool.submit(fn, *args) for fn, *args in calls]):
            on_row(f.result())


def choose_lr(res: dict, data: str, size: str) -> dict:
    """The pre-registered choice: the best final holdout top-1 (ties: the smaller lr) and its gate."""
    rows = sorted((r for r in res["runs"] if r.get("kind") == "lr" and (r["data"], r["size"]) == (data, size)),
                  key=lambda r: r["lr"])
    best = max(rows, key=lambda r: (r["holdout_top1"], -r["lr"]))
    return {"lr": best["lr"], "holdout_top1": {f"{r['lr']:g}": r["holdout_top1"] for r in rows},
            **study_stats.flattened(best["curve"])}


def new_results(a) -> dict:
    from mobile_vmoe.provenance import provenance

    return {"provenance": provenance(), "resumed_by": [], "quick": bool(a.quick),
            "protocol": {"data": a.data, "sizes": a.sizes, "seeds": a.seeds, "epochs": a.epochs, "lr_grid": a.lr_grid,
                         "warmup_epochs": a.epochs * WARMUP_PER_EPOCH, "settings": PROTOCOL_SETTINGS, "extra": a.set,
                         "arms": list(ARMS), "comparisons": [list(c) for c in COMPARISONS],
                         "router_gate": ROUTER_GATE, "flat_slope": study_stats.FLAT_SLOPE,
                         "flat_epochs": study_stats.FLAT_EPOCHS, "min_gain": study_stats.MIN_GAIN,
                         "alpha": study_stats.ALPHA, "budget_min": a.budget, "jobs": a.jobs,
                         "keep_largest": a.keep_largest},
            "probe": None, "plan": None, "lr": {}, "runs": []}


def run_probe(a, out: Path, res: dict, save, extra: dict) -> None:
    if res["probe"] is None and not a.no_probe:
        rows = []
        kinds = ("dense", "moe", "token")
        execute([(probe_one, size, kind, a.data[0], out, extra) for size in a.sizes for kind in kinds],
                a.jobs, rows.append)
        res["probe"] = rows
        save()
    if res["plan"] is None:
        if res["probe"]:
            probe = {(r["size"], r["kind"]): r for r in res["probe"]}
            res["plan"] = plan(probe, a.data, a.sizes, a.seeds, a.epochs, a.lr_grid, a.jobs, a.budget, a.keep_largest)
        else:
            res["plan"] = {"sizes": a.sizes, "control_arms": list(ARMS), "cuts": [], "projected_min": None,
                           "note": "no timing probe (--no-probe): nothing cut"}
        save()
    print("plan: " + json.dumps(res["plan"], allow_nan=False), flush=True)


def ledger(path: Path, fresh, keys: tuple):
    """The study's results file: -> (results, save(), add(row)). A file a stopped study left is
    continued (its ``resumed_by`` grows); ``add`` appends a run row, saves and prints ``keys`` of it."""
    from mobile_vmoe.fileio import atomic_write_json
    from mobile_vmoe.provenance import provenance

    res = json.loads(path.read_text()) if path.exists() else fresh()
    if path.exists():
        res["resumed_by"].append(provenance())

    def save():
        atomic_write_json(path, res)

    def add(row):
        res["runs"].append(row)
        save()
        print(json.dumps({k: row.get(k) for k in keys}, allow_nan=False), flush=True)

    return res, save, add


def run_study(a, out: Path) -> int:
    from mobile_vmoe.config import parse_overrides

    for size in a.sizes:
        size_settings(size)  # fail before training
    extra = parse_overrides(a.set)
    res, save, add = ledger(out / "results.json", lambda: new_results(a),
                            ("data", "size", "lr", "seed", "arm", "top1", "holdout_top1", "wall_seconds"))

    if a.quick:
        print("SMOKE CHECK (--quick): tiny data, 5 epochs, 2 seeds; it checks that the study runs, not the claim")
    t0 = time.time()
    run_probe(a, out, res, save, extra)
    if a.probe_only:
        return 0
    sizes, control = res["plan"]["sizes"], res["plan"]["control_arms"]
    done = {(r["kind"], r["data"], r["size"], r.get("lr"), r.get("seed"), r.get("arm")) for r in res["runs"]}
    execute([(run_lr, d, sz, lr, a.epochs, out, extra) for d in a.data for sz in sizes for lr in a.lr_grid
             if ("lr", d, sz, lr, None, None) not in done], a.jobs, add)
    for d in a.data:
        for sz in sizes:
            res["lr"][f"{d}|{sz}"] = choose_lr(res, d, sz)
        write_planted(out, d)
    save()
    calls = []
    for seed in range(a.seeds):
        for i, d in enumerate(a.data):
            for sz in sizes:
                lr = res["lr"][f"{d}|{sz}"]["lr"]
                calls += [(run_arm, d, sz, seed, arm, lr, a.epochs, out, extra) for arm in (ARMS if i == 0 else control)
                          if ("arm", d, sz, lr, seed, arm) not in done]
    execute(calls, a.jobs, add)
    res.setdefault("wall_minutes", []).append(round((time.time() - t0) / 60, 1))
    save()
    print(f"study: {len(calls)} runs in {(time.time() - t0) / 60:.1f} min\n")
    print(summarize(res, allow_mixed=True))  # says so when the commits differ; --summarize refuses
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", nargs="+", default=DATASETS, help="the test set first, then negative controls")
    ap.add_argument("--sizes", nargs="+", default=SIZES, help="DEPTHxWIDTH of each model size")
    ap.add_argument("--seeds", type=int, default=SEEDS)
    ap.add_argument("--epochs", type=int, default=EPOCHS)
    ap.add_argument("--lr-grid", type=float, nargs="+", default=LR_GRID)
    ap.add_argument("--jobs", type=int, default=JOBS, help="one-thread training processes side by side (1: in process)")
    ap.add_argument("--budget", type=float, default=BUDGET_MIN, help="wall minutes the cut rule aims at")
    ap.add_argument("--keep-largest", action="store_true", help="cut rule: drop the smallest sizes first (GPU variant)")
    ap.add_argument("--quick", action="store_true", help="SMOKE CHECK: tiny data, 2 seeds, 5 epochs, no probe")
    ap.add_argument("--no-probe", action="store_true", help="skip the timing probe (and so every cut)")
    ap.add_argument("--probe-only", action="store_true", help="run the 1-epoch timing probe, print the plan, stop")
    ap.add_argument("--out", type=Path, default=Path("runs/study"))
    ap.add_argument("--set", nargs="*", default=[], help="extra KEY=VALUE settings for every run (recorded)")
    ap.add_argument("--summarize", action="store_true", help="only print the tables from OUT/results.json")
    ap.add_argument("--mixed-commits", action="store_true", help="with --summarize: pool runs of different commits")
    ap.add_argument("--per-superclass", nargs=2, metavar=("DATA", "SIZE"), help="with --summarize: EXPLORATORY table")
    a = ap.parse_args(argv)
    if a.quick:
        for k, v in QUICK.items():
            setattr(a, k, v)
        a.no_probe = True
    if a.summarize:
        path = a.out / "results.json"
        if not path.is_file():
            raise MvmoeError(f"no study in {a.out}: {path} does not exist")
        res = json.loads(path.read_text())
        if isinstance(res, list):
            raise MvmoeError(f"{path} was written by the earlier study script (a plain list of runs); its tables are "
                             "in docs/results.md")
        print(summarize(res, a.mixed_commits))
        if a.per_superclass:
            print("\n" + per_superclass(res, *a.per_superclass))
        return 0
    return run_study(a, a.out)


if __name__ == "__main__":
    from mobile_vmoe.errors import run_script

    run_script(main)
