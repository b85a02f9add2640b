"""Capacity study: can per-image experts pay where a small dense ViT is short of capacity?

    uv run python bench/capacity_study.py --out runs/capacity                  # the pre-registered study
    uv run python bench/capacity_study.py --probe-only --out runs/capacity     # the timing probe and plan alone
    uv run python bench/capacity_study.py --quick --out runs/capacity-quick    # SMOKE CHECK only
    uv run python bench/capacity_study.py --summarize --out runs/capacity      # the tables again

The claim tested (the paper's Fig. 3e, a capacity effect of small models on many classes): at equal
active MACs, a per-image MoE whose router is trained on superclasses of the dense model's confusions
beats its dense twin; and a headroom check first: with every expert active, does the MoE beat dense
at all? (If it does not, no routing can.)

PROTOCOL, fixed before any run (the constants below hold it; OUT/results.json records it):
- Data: ``graded:500:10:100:L`` (mobile_vmoe/data/graded.py: 500 classes in 10 planted
  superclasses, each class its superclass's prototype with 1-2 of 6 attributes changed; 100
  training and 20 eval images per class, 32 px); the nuisance level L is set by the calibration.
- Model sizes DxW: 6x32 (heads W/16, patch 8, 16 tokens; MoE E = 10, k = 1, last 2 blocks, equal
  active MACs), and 6x48 when the budget holds (the first cut).
- EPOCHS = 12 for every arm and every dense stage, warmup EPOCHS / 30, cosine, batch 64, AdamW,
  TrainConfig's other defaults, one thread per process, JOBS = 2 processes side by side.
- Step 1, calibration (6x32, dense, seed 0, trained on the training split less its 10 % stratified
  holdout, lr CAL_LR): "capacity-limited" = holdout top-1 in [40, 60] % AND train top-1 (the
  images it trained on, eval transform) minus holdout top-1 < 5 points. Search over levels in
  [0, LEVEL_MAX]: each round trains the two levels at 1/3 and 2/3 of the current interval side by
  side; a level meeting both criteria ends it (two: the holdout top-1 closer to 50); else the
  interval shrinks to the part where the target lies (holdout top-1 falls as the level rises);
  at most CAL_ROUNDS rounds. If none meets them the study STOPS before its arms (no verdict could
  be read; the benchmark needs changing, not the rule); ``--run-if-missed`` runs them anyway at
  the level closest to 50 % among those with a gap < 5 (else overall), reported, not read.
  The eval split is not looked at.
- Step 2, lr: dense, seed 0, on train less the 10 % holdout at the calibrated level, for each lr
  in LR_GRID (per 512 images; x 1/8 at batch 64); the best final holdout top-1 wins (ties: the
  smaller lr). While the winner sits at an edge of the grid, the grid is extended by a factor of 2
  beyond that edge (at most LR_EXTENSIONS times). Every arm of that size uses it. The calibration
  run at CAL_LR is the grid's run at that lr (the same settings). Flattening is REPORTED, not a
  gate here: the slope of the winner's holdout curve over its last 5 epochs (< 0.2 points per
  epoch = flattened). 500 classes at 6x32 do not reach a plateau in the epochs this budget allows
  (an exploratory run at level 0.5, 12 epochs, on a first draft of the generator: slope 0.95 points
  per epoch over its last 5), so
  the comparisons are at equal epochs; a verdict where dense had not flattened says so.
- Step 3, superclass method (6x32, seed 0, the chosen lr): candidates {counts, soft} confusion x
  {10 %, 20 %} holdout; the 10 % models are step 2's winner, the 20 % one is trained for this.
  Each candidate's balanced clustering is scored by ARI against the planted superclasses; the
  highest wins (within 0.02 of it: the smaller holdout, then counts, the library default).
  moe-sc and moe-sc-upcycled use the winner (``superclass_confusion``, ``superclass_holdout``).
- Step 4, arms, seeds 0..SEEDS-1 (each seed draws its own images; the class structure is fixed):
    dense            the dense twin, full training split
    moe-all          the MoE with every expert active (top_k = E, softmax gates, dense dispatch,
                     router end to end): the HEADROOM check; NOT equal active MACs (about 2.8x
                     dense's at 6x32: 10 expert MLPs in each of the last 2 blocks)
    moe-planted      the MoE routed on the planted superclasses (routing solved)
    moe-sc           the paper's pipeline: dense stage, superclasses of its confusions, the MoE
                     with CE + 0.3 router CE (the step-3 method)
    moe-e2e          router end to end (importance + Switch balancing loss)
    moe-sc-upcycled  moe-sc with ``moe_init=upcycle``: every expert starts as a copy of the dense
                     stage's MLP, the router new, ``gate=unit`` (the trainer's default for an
                     upcycled MoE: it starts as the dense model); the dense stage trains again in
                     this arm's folder with the same seed, data and settings as moe-sc's
    dense-long       the dense twin trained for the epochs that match moe-sc-upcycled's total
                     training compute (dense stage + MoE stage): round(EPOCHS x (1 - holdout +
                     MoE MACs / dense MACs))
- Comparisons, one Holm family per size: moe-all - dense, moe-planted - dense, moe-sc - dense,
  moe-e2e - dense, moe-sc-upcycled - dense-long. Per seed paired difference in eval top-1 points.
- Decision rule (a relative margin): an arm "supports" when its mean gain removes >= 5 % of the
  reference's errors (gain >= 0.05 x (100 - reference top-1)) AND its Holm-corrected one-sided
  test of "no gain" rejects at 0.05 (the corrected 95 % lower bound > 0). "contradicts" only when
  the Holm-corrected one-sided test of "no loss" rejects at 0.05 (the corrected upper bound <= 0)
  AND moe-all showed headroom (moe-all - dense: Holm-corrected lower bound > 0); otherwise
  "inconclusive". moe-all - dense itself reads "headroom" / "no headroom" (corrected upper bound
  <= 0) / "inconclusive". The tables show the unadjusted 90 % interval and the Bonferroni-adjusted
  one (alpha / m each side; conservative: the verdicts use Holm's step-down p-values), labelled.
  If the calibration missed the band, no verdict is read (the study is reported, not read).
- Reported with it: ARI of each moe-sc / moe-sc-upcycled seed's superclasses against the planted
  ones, router top-1 on the holdout (not a gate here), training compute (3 x MACs x images) and
  wall time per arm.
- Budget: a 1-epoch timing probe (dense, MoE k = 1, moe-all at each size) projects the wall time
  of the whole protocol (calibration at CAL_ROUNDS rounds, the lr grid with one extension, step 3,
  the arms) at JOBS processes. Cuts until it fits BUDGET_MIN: the second size, then seeds down to
  MIN_SEEDS, then arms in ARM_CUTS order. If it still does not fit, it runs anyway and says so.

OUT/results.json (``provenance``, ``protocol``, ``probe``, ``plan``, ``steps`` with start / end
times, ``calibration``, ``lr``, ``method``, ``runs``) is rewritten atomically after each run: a
stopped study continues where it stopped (``train_or_continue``); ``--summarize`` refuses to pool
runs of different commits unless ``--mixed-commits``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import time
from pathlib import Path

import routing_study as rs
import study_stats

from mobile_vmoe.errors import MvmoeError

DATA = "graded:500:10:100"  # + ":<level>" from the calibration
SIZES = ["6x32", "6x48"]
SEEDS, MIN_SEEDS = 5, 3
EPOCHS = 12  # first written as 16; set to 12 after the timing probe, before the study ran (docs/results.md)
WARMUP_PER_EPOCH = 1 / 30
LR_GRID = [1.2e-2, 2.4e-2, 4.8e-2]  # per 512 images: 1.5e-3, 3e-3, 6e-3 at batch 64
LR_EXTENSIONS = 2
CAL_LR = 2.4e-2
LEVEL_MAX = 1.5
CAL_ROUNDS = 3
BAND = (40.0, 60.0)  # holdout top-1 (%) of the capacity-limited dense model
MAX_GAP = 5.0  # train top-1 minus holdout top-1 (points)
HOLDOUT = 0.1
METHODS = [("counts", 0.1), ("soft", 0.1), ("counts", 0.2), ("soft", 0.2)]
ARI_TIE = 0.02
ARMS = ("dense", "moe-all", "moe-planted", "moe-sc", "moe-e2e", "moe-sc-upcycled", "dense-long")
COMPARISONS = (("moe-all", "dense"), ("moe-planted", "dense"), ("moe-sc", "dense"), ("moe-e2e", "dense"),
               ("moe-sc-upcycled", "dense-long"))
ARM_CUTS = (("moe-e2e",), ("moe-sc-upcycled", "dense-long"), ("moe-planted",))
UPCYCLED = ("moe-sc-upcycled", "dense-long")  # need TrainConfig.moe_init
ERROR_SHARE = 0.05  # a supporting arm removes at least this share of the reference's errors
BUDGET_MIN = 150.0
JOBS = 2
PROTOCOL_SETTINGS = {"batch_size": 64, "threads": 1}
QUICK = dict(data="graded:12:3:10", sizes=["3x16"], seeds=2, epochs=2, lr_grid=[2.4e-2, 4.8e-2], cal_rounds=1,
             lr_extensions=1, cal_lr=2.4e-2)


def has_moe_init() -> bool:
    """Whether this commit's TrainConfig has the ``moe_init`` key (upcycling)."""
    from mobile_vmoe.config import TrainConfig

    return "moe_init" in {f.name for f in dataclasses.fields(TrainConfig)}


def level_spec(base: str, level: float) -> str:
    return f"{base}:{level:g}"


def data_dir(out: Path, data: str) -> Path:
    return out / data.replace(":", "-")


def run_time(t0: float) -> float:
    return round(time.time() - t0, 1)


# ---------------------------------------------------------------------------- settings
def settings_for(arm: str, data: str, size: str, lr: float, epochs: int, extra: dict, method: dict | None = None) -> dict:
    """One run's settings (model and train keys alike)."""
    s = {**rs.size_settings(size), **PROTOCOL_SETTINGS, "lr": lr, "warmup_epochs": epochs * WARMUP_PER_EPOCH,
         "eval_every": epochs, **extra}
    if arm in ("dense", "dense-long"):
        return s
    s["num_experts"] = rs.num_experts(data)
    if arm == "moe-all":
        s.update(top_k=s["num_experts"], dispatch="dense")
    if arm in ("moe-sc", "moe-sc-upcycled") and method:
        s.update(superclass_confusion=method["confusion"], superclass_holdout=method["holdout"])
    if arm == "moe-sc-upcycled":
        s["moe_init"] = "upcycle"
    return s


def long_epochs(size: str, data: str, epochs: int, holdout: float) -> int:
    """dense-long's epochs: the training compute of moe-sc-upcycled (dense stage on 1 - holdout of
    the split + the MoE stage) at the dense model's MACs per image."""
    from mobile_vmoe.config import ModelConfig
    from mobile_vmoe.models.flops import analytic_macs

    n = int(data.split(":")[1]) if data.count(":") >= 2 else 500
    dense = ModelConfig(**rs.size_settings(size), img_size=32, patch_size=8, num_classes=n)
    moe = dense.replace(num_experts=rs.num_experts(data))
    return round(epochs * (1 - holdout + analytic_macs(moe) / analytic_macs(dense)))


# ------------------------------------------------------------------------------- workers
def run_holdout_dense(data: str, size: str, lr: float, epochs: int, holdout: float, out: Path, extra: dict,
                      kind: str = "lr") -> dict:
    """Dense, seed 0, on train less ``holdout``, scored on the holdout every epoch; then its train
    top-1 (eval transform) and the ARI of both confusion modes' clusterings vs the planted ones."""
    import torch
    from torch.utils.data import DataLoader

    from mobile_vmoe.checkpoint import model_from_checkpoint
    from mobile_vmoe.data.holdout import split_for_superclasses
    from mobile_vmoe.data.superclasses import cluster_superclasses, confusion_matrix, planted_ari
    from mobile_vmoe.provenance import git_state
    from mobile_vmoe.train import fit, resolve
    from mobile_vmoe.train.evaluate import evaluate

    torch.set_num_threads(1)
    t0 = time.time()
    s = {**rs.size_settings(size), **PROTOCOL_SETTINGS, "lr": lr, "warmup_epochs": epochs * WARMUP_PER_EPOCH,
         "superclass_holdout": holdout, **extra}
    tcfg, bundle = resolve("vit-6x64-p32", data, s, epochs=epochs, seed=0)
    rest, held = split_for_superclasses(bundle, holdout, 0)
    where = data_dir(out, data) / f"holdout{holdout:g}" / f"{size}-lr{lr:g}"
    summ = fit(tcfg, dataclasses.replace(rest, val=held), where, quiet=True, stage="dense", resume=True)
    curve = [json.loads(line)["top1"] for line in (where / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "eval"]
    model, _ = model_from_checkpoint(where / "model.pt")
    seen = copy.copy(bundle.train)  # the images it trained on, with the eval transform
    seen.transform = bundle.val.transform
    seen_rest = torch.utils.data.Subset(seen, rest.train.indices)
    train_top1 = evaluate(model, DataLoader(seen_rest, batch_size=256))["top1"]
    loader = DataLoader(held, batch_size=256)
    ari = {mode: planted_ari(bundle.planted_superclasses,
                             cluster_superclasses(confusion_matrix(model, loader, bundle.num_classes, mode=mode),
                                                  rs.num_experts(data), seed=0).tolist())
           for mode in ("counts", "soft")}
    return {"kind": kind, "data": data, "size": size, "lr": lr, "holdout": holdout, "epochs": epochs,
            "holdout_top1": summ["top1"], "train_top1": train_top1, "gap": train_top1 - summ["top1"], "curve": curve,
            "ari": ari, "train_seconds": summ["train_seconds"], "wall_seconds": run_time(t0),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "commit": summ.get("commit"),
            "dirty": git_state()[1], "dir": str(where)}


def run_arm(data: str, size: str, seed: int, arm: str, lr: float, epochs: int, out: Path, extra: dict,
            method: dict) -> dict:
    """Train one arm; score it (routers on the holdout, ARI); -> result row."""
    import torch

    from mobile_vmoe.provenance import git_state
    from mobile_vmoe.train import resolve

    torch.set_num_threads(1)
    t0 = time.time()
    ep = long_epochs(size, data, epochs, method["holdout"]) if arm == "dense-long" else epochs
    base = "vit-6x64-p32" if arm.startswith("dense") else "vmoe-6x64-p32"
    s = settings_for(arm, data, size, lr, ep, extra, method)
    tcfg, bundle = resolve(base, data, s, epochs=ep, seed=seed)
    where = data_dir(out, data) / f"seed{seed}" / size / arm
    sc = {"moe-sc": "auto", "moe-sc-upcycled": "auto", "moe-planted": str(rs.planted_file(out, data))}.get(arm, "none")
    summ = rs.train_or_continue(tcfg, bundle, where, sc)
    row = {"kind": "arm", "data": data, "size": size, "seed": seed, "arm": arm, "lr": lr, "epochs": ep,
           "top1": summ["top1"], "top5": summ["top5"], "macs": summ["macs"], "active_params": summ["active_params"],
           "params": summ["params"], "router_eval_top1": summ.get("router_superclass_top1"),
           "expert_entropy": summ.get("expert_entropy"), "superclass_sizes": summ.get("superclass_sizes"),
           "commit": summ.get("commit"), "dirty": git_state()[1], "dir": str(where)}
    row.update(score(arm, tcfg, bundle, where, summ))
    row["wall_seconds"] = run_time(t0)
    return row


def score(arm: str, tcfg, bundle, where: Path, s: dict) -> dict:
    """Training compute (dense stage included), ARI, router top-1 on the holdout."""
    sc_arms = ("moe-sc", "moe-sc-upcycled")
    return rs.stage_scores(tcfg, bundle, where, s, arm in sc_arms, arm in sc_arms + ("moe-planted",))


def probe_one(size: str, kind: str, data: str, out: Path, extra: dict) -> dict:
    """One epoch of ``kind`` (dense | moe | moe-all) at ``size`` -> seconds of setup, train and eval."""
    arm = {"dense": "dense", "moe": "moe-e2e", "moe-all": "moe-all"}[kind]
    s, _, setup, wall = rs.probe_train("vit-6x64-p32" if kind == "dense" else "vmoe-6x64-p32", data,
                                       settings_for(arm, data, size, LR_GRID[0], 1, extra), out / "probe" / f"{size}-{kind}")
    return {"size": size, "kind": kind, "train_epoch_s": s["train_seconds"],
            "eval_s": round(max(wall - s["train_seconds"], 0.0), 2), "setup_s": round(setup, 2)}


# ---------------------------------------------------------------------------- projection
def run_seconds(probe: dict, size: str, what: str, epochs: int, holdout: float = HOLDOUT) -> float:
    """Projected seconds of one run from the probe's {(size, kind): row}."""
    def stage(kind: str, share: float, evals: float) -> float:
        r = probe[(size, kind)]
        return epochs * share * r["train_epoch_s"] + evals * r["eval_s"]

    setup = probe[(size, "dense")]["setup_s"]
    if what == "holdout":  # scored on the holdout each epoch (holdout / eval share of images), + train top-1
        return setup + stage("dense", 1 - holdout, epochs * 5 * holdout + 5)
    if what == "dense":
        return setup + stage("dense", 1, 1)
    if what == "dense-long":
        return setup + stage("dense", 1 - holdout + 1, 1)
    if what == "moe-all":
        return setup + stage("moe-all", 1, 1)
    dense_stage = stage("dense", 1 - holdout, 1) if what in ("moe-sc", "moe-sc-upcycled") else 0.0
    return setup + dense_stage + stage("moe", 1, 2)


def project(probe: dict, sizes: list[str], seeds: int, arms: list[str], epochs: int, lr_grid: list[float],
            cal_rounds: int, jobs: int) -> float:
    """Projected wall minutes: total process seconds / jobs (calibration rounds run 2 levels at a time)."""
    total = 2 * cal_rounds * run_seconds(probe, sizes[0], "holdout", epochs)
    for i, size in enumerate(sizes):
        lr_runs = len(lr_grid) + 1 - (1 if i == 0 else 0)  # one extension; the calibration run reused at 6x32
        total += lr_runs * run_seconds(probe, size, "holdout", epochs)
        total += seeds * sum(run_seconds(probe, size, arm, epochs) for arm in arms)
    total += run_seconds(probe, sizes[0], "holdout", epochs, 0.2)  # step 3's 20 % holdout model
    return total / max(jobs, 1) / 60


def plan(probe: dict, sizes: list[str], seeds: int, arms: list[str], epochs: int, lr_grid: list[float],
         cal_rounds: int, jobs: int, budget_min: float = BUDGET_MIN) -> dict:
    """The pre-registered cuts: the second size, then seeds down to MIN_SEEDS, then ARM_CUTS."""
    sizes, arms, cuts = list(sizes), list(arms), []

    def minutes():
        return project(probe, sizes, seeds, arms, epochs, lr_grid, cal_rounds, jobs)

    first = minutes()
    while minutes() > budget_min and len(sizes) > 1:
        cuts.append(f"size {sizes.pop()}")
    while minutes() > budget_min and seeds > MIN_SEEDS:
        seeds -= 1
        cuts.append(f"seeds to {seeds}")
    for group in ARM_CUTS:
        if minutes() <= budget_min:
            break
        if any(a in arms for a in group):
            arms = [a for a in arms if a not in group]
            cuts.append("arms " + " + ".join(group))
    return {"sizes": sizes, "seeds": seeds, "arms": arms, "cuts": cuts, "projected_min_uncut": round(first, 1),
            "projected_min": round(minutes(), 1), "over_budget": minutes() > budget_min, "budget_min": budget_min,
            "jobs": jobs}


# ---------------------------------------------------------------------------- statistics
def judge(found: list[dict], error_share: float = ERROR_SHARE) -> list[dict]:
    """One Holm family of paired comparisons (``study_stats.paired(diffs, min_gain=0)``, each with
    ``ref_top1`` the reference's mean top-1) -> the same dicts with Holm p-values, Bonferroni
    bounds, the share of the reference's errors removed, and the verdict (module docstring)."""
    m = len(found)
    gain = study_stats.holm([c["p_gain"] for c in found])
    loss = study_stats.holm([c["p_short"] for c in found])  # with min_gain 0: P(T <= mean / se), "no loss"
    alpha = study_stats.ALPHA
    headroom = any(c["arm"] == "moe-all" and c["ref"] == "dense" and pg < alpha for c, pg in zip(found, gain))
    out = []
    for c, pg, pl in zip(found, gain, loss):
        q = study_stats.t_ppf(1 - alpha / m, c["df"])
        share = c["mean"] / (100.0 - c["ref_top1"]) if c["ref_top1"] < 100 else 0.0
        if c["arm"] == "moe-all":
            v = "headroom" if pg < alpha else ("no headroom" if pl < alpha else "inconclusive")
        elif share >= error_share and pg < alpha:
            v = "supports"
        elif pl < alpha and headroom:
            v = "contradicts"
        else:
            v = "inconclusive"
        out.append({**c, "p_gain_holm": pg, "p_loss_holm": pl, "error_share": share,
                    "lower_bonf": c["mean"] - q * c["se"], "upper_bonf": c["mean"] + q * c["se"], "verdict": v})
    return out


def comparisons(res: dict) -> list[dict]:
    """Every comparison, one Holm family per (data, size), with its gate notes and verdict."""
    rows = arm_rows(res)
    by = {(r["data"], r["size"], r["arm"], r["seed"]): r["top1"] for r in rows}
    judged = []
    for data, size in dict.fromkeys((r["data"], r["size"]) for r in rows):
        found = []
        for arm, ref in COMPARISONS:
            seeds = sorted(sd for (d, sz, a, sd) in by if (d, sz, a) == (data, size, arm) and (data, size, ref, sd) in by)
            if len(seeds) < 2:
                continue
            diffs = [by[(data, size, arm, sd)] - by[(data, size, ref, sd)] for sd in seeds]
            found.append({"data": data, "size": size, "arm": arm, "ref": ref, "seeds": seeds,
                          "ref_top1": statistics.mean(by[(data, size, ref, sd)] for sd in seeds),
                          **study_stats.paired(diffs, min_gain=0.0)})
        for c in judge(found) if found else []:
            gate = gate_notes(res, data, size)
            c["reading"] = (c["verdict"] if not gate else f"not read: {gate}") + caveat(res, data, size)
            judged.append(c)
    return judged


def gate_notes(res: dict, data: str, size: str) -> str:
    """"" when the comparisons of this size may be read: the calibration met the band."""
    return "" if (res.get("calibration") or {}).get("in_band") else "calibration missed"


def caveat(res: dict, data: str, size: str) -> str:
    """Reported beside a verdict, not a gate: whether dense had flattened."""
    return "" if (res.get("lr") or {}).get(f"{data}|{size}", {}).get("flat", False) else " (dense not flattened)"


def arm_rows(res: dict) -> list[dict]:
    return [r for r in res["runs"] if r.get("kind") == "arm"]


# -------------------------------------------------------------------------------- tables
def step_lines(res: dict) -> list[str]:
    return [f"step {k}: started {v.get('started')}, finished {v.get('finished')}" for k, v in res["steps"].items()]


def calibration_table(res: dict) -> str:
    cal = res.get("calibration") or {}
    lines = ["| round | level | holdout top-1 (%) | train top-1 (%) | train - holdout | in band? | finished (UTC) |",
             "|---|---|---|---|---|---|---|"]
    for r in cal.get("tried", []):
        ok = BAND[0] <= r["holdout_top1"] <= BAND[1] and r["gap"] < MAX_GAP
        lines.append(f"| {r['round']} | {r['level']:g} | {r['holdout_top1']:.1f} | {r['train_top1']:.1f} | "
                     f"{r['gap']:+.1f} | {'yes' if ok else 'no'} | {r['finished']} |")
    if "level" in cal:
        lines.append(f"\nchosen level {cal['level']:g} ({'in band' if cal['in_band'] else 'CALIBRATION MISSED'}): "
                     f"data {cal['data']}")
    return "\n".join(lines)


def lr_table(res: dict) -> str:
    lines = ["| data | size | holdout top-1 per lr (%) | chosen lr | extensions | slope, last 5 (points/epoch) "
             "| flattened (< 0.2)? |", "|---|---|---|---|---|---|---|"]
    for key, v in (res.get("lr") or {}).items():
        data, size = key.split("|")
        per = ", ".join(f"{lr}: {acc:.1f}" for lr, acc in v["holdout_top1"].items())
        slope = "-" if v["slope"] is None else f"{v['slope']:+.3f}"
        lines.append(f"| {data} | {size} | {per} | {v['lr']:g} | {v.get('extensions', 0)} | {slope} | "
                     f"{'yes' if v['flat'] else '**no**'} |")
    return "\n".join(lines)


def method_table(res: dict) -> str:
    m = res.get("method") or {}
    lines = ["| confusion | holdout | ARI vs planted |", "|---|---|---|"]
    for c in m.get("candidates", []):
        lines.append(f"| {c['confusion']} | {c['holdout']:g} | {c['ari']:.3f} |")
    if m.get("chosen"):
        lines.append(f"\nchosen: {m['chosen']['confusion']} confusion, {m['chosen']['holdout']:g} holdout")
    return "\n".join(lines)


def arm_table(res: dict) -> str:
    lines = ["| data | size | arm | n | eval top-1 (%) | router top-1 holdout (%) | ARI vs planted | active MACs | "
             "train GMACs (x dense) | train min |", "|---|---|---|---|---|---|---|---|---|---|"]
    rows = arm_rows(res)
    for data, size in dict.fromkeys((r["data"], r["size"]) for r in rows):
        dense = [r["train_macs"] for r in rows if (r["data"], r["size"], r["arm"]) == (data, size, "dense")]
        for arm in ARMS:
            a = [r for r in rows if (r["data"], r["size"], r["arm"]) == (data, size, arm)]
            if not a:
                continue
            tm = statistics.mean(r["train_macs"] for r in a)
            ratio = f" ({tm / statistics.mean(dense):.2f}x)" if dense else ""
            ari = [r["ari"] for r in a if r.get("ari") is not None]
            ari_s = f"{statistics.mean(ari):.2f} (min {min(ari):.2f})" if ari else "-"
            router = rs.mean_sd([r.get("router_holdout_top1") for r in a])
            macs = f"{a[0]['macs'] / 1e6:.2f}M" + (" (not equal: all experts)" if arm == "moe-all" else "")
            lines.append(f"| {data} | {size} | {arm} | {len(a)} | {rs.mean_sd([r['top1'] for r in a])} | {router} | "
                         f"{ari_s} | {macs} | {tm / 1e9:.4g}{ratio} | "
                         f"{statistics.mean(r['train_seconds'] for r in a) / 60:.1f} |")
    return "\n".join(lines)


def verdict_table(res: dict) -> str:
    lines = ["| data | size | arm - reference | n | per seed | mean | share of ref. errors | 90 % CI (unadjusted) | "
             "Bonferroni-adjusted bounds | Holm p (gain <= 0) | Holm p (gain >= 0) | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in comparisons(res):
        per = " / ".join(f"{d:+.1f}" for d in c["diffs"])
        lines.append(f"| {c['data']} | {c['size']} | {c['arm']} - {c['ref']} | {c['n']} | {per} | {c['mean']:+.2f} | "
                     f"{100 * c['error_share']:+.1f} % | [{c['lower90']:+.2f}, {c['upper90']:+.2f}] | "
                     f"[{c['lower_bonf']:+.2f}, {c['upper_bonf']:+.2f}] | {c['p_gain_holm']:.3f} | "
                     f"{c['p_loss_holm']:.3f} | {c['reading']} |")
    return "\n".join(lines)


def summarize(res: dict, allow_mixed: bool = False) -> str:
    head = rs.provenance_lines(res, allow_mixed, "tiny data and epochs")
    p = res.get("plan") or {}
    if p:
        head.append(f"plan: sizes {p.get('sizes')}, seeds {p.get('seeds')}, arms {p.get('arms')}, cuts "
                    f"{p.get('cuts') or 'none'}, projected {p.get('projected_min')} min"
                    + (f"; {p['note']}" if p.get("note") else ""))
    head += step_lines(res)
    return "\n\n".join(["\n".join(head), "calibration (6x32 dense, seed 0, holdout = 10 % of train):\n\n"
                        + calibration_table(res), lr_table(res), "superclass method (seed 0):\n\n" + method_table(res),
                        arm_table(res), "verdicts (Holm family per size; intervals labelled):\n\n" + verdict_table(res)])


# ----------------------------------------------------------------------------- the steps
def in_band(r: dict) -> bool:
    return BAND[0] <= r["holdout_top1"] <= BAND[1] and r["gap"] < MAX_GAP


def calibrate(a, out: Path, res: dict, save, extra: dict) -> None:
    """Step 1 (module docstring): rounds of two levels side by side, the interval narrowed each round."""
    if not res.get("calibration"):
        res["calibration"] = {"tried": [], "interval": [0.0, LEVEL_MAX]}
    cal = res["calibration"]
    if "level" in cal:
        return
    size = a.sizes[0]
    mid = sum(BAND) / 2
    while cal.setdefault("rounds_done", 0) < a.cal_rounds:
        lo, hi = cal["interval"]
        levels = [round(lo + (hi - lo) * f, 4) for f in (1 / 3, 2 / 3)]
        done = {r["level"] for r in cal["tried"]}
        rows = []
        rs.execute([(run_holdout_dense, level_spec(a.data, lv), size, a.cal_lr, a.epochs, HOLDOUT, out, extra, "lr")
                    for lv in levels if lv not in done], a.jobs, rows.append)
        for r in rows:
            lv = float(r["data"].rsplit(":", 1)[1])
            cal["tried"].append({"round": cal["rounds_done"], "level": lv,
                                 **{k: r[k] for k in ("holdout_top1", "train_top1", "gap", "finished", "dir")}})
            res["runs"].append(r)
            print(f"calibration: level {lv:g}: holdout {r['holdout_top1']:.1f} %, gap {r['gap']:+.1f}", flush=True)
        this = [r for r in cal["tried"] if r["level"] in levels]
        # bisection towards the band's middle: holdout top-1 falls as the level rises
        above = [r["level"] for r in this if r["holdout_top1"] > mid]
        below = [r["level"] for r in this if r["holdout_top1"] <= mid]
        cal["interval"] = [max(above, default=lo), min(below, default=hi)]
        cal["rounds_done"] += 1
        save()
        if any(in_band(r) for r in this):
            break
    good = [r for r in cal["tried"] if in_band(r)]
    pool = good or [r for r in cal["tried"] if r["gap"] < MAX_GAP] or cal["tried"]
    best = min(pool, key=lambda r: (abs(r["holdout_top1"] - sum(BAND) / 2), r["level"]))
    cal.update(level=best["level"], in_band=bool(good), data=level_spec(a.data, best["level"]))
    save()


def lr_step(a, out: Path, res: dict, save, extra: dict, sizes: list[str]) -> None:
    """Step 2: the grid at each size, extended at an edge."""
    data = res["calibration"]["data"]
    for size in sizes:
        key = f"{data}|{size}"
        if key in res["lr"]:
            continue
        grid, ext = sorted(a.lr_grid), 0
        while True:
            have = {r["lr"] for r in res["runs"] if r.get("kind") == "lr" and (r["data"], r["size"]) == (data, size)
                    and r["holdout"] == HOLDOUT}
            rs.execute([(run_holdout_dense, data, size, lr, a.epochs, HOLDOUT, out, extra, "lr")
                        for lr in grid if lr not in have], a.jobs, lambda r: (res["runs"].append(r), save()))
            rows = [r for r in res["runs"] if r.get("kind") == "lr" and (r["data"], r["size"]) == (data, size)
                    and r["holdout"] == HOLDOUT and r["lr"] in grid]
            best = max(rows, key=lambda r: (r["holdout_top1"], -r["lr"]))
            if ext >= a.lr_extensions or best["lr"] not in (grid[0], grid[-1]):
                break
            grid = sorted(grid + [best["lr"] * 2 if best["lr"] == grid[-1] else best["lr"] / 2])
            ext += 1
        res["lr"][key] = {"lr": best["lr"], "grid": grid, "extensions": ext,
                          "holdout_top1": {f"{r['lr']:g}": r["holdout_top1"] for r in sorted(rows, key=lambda r: r["lr"])},
                          **study_stats.flattened(best["curve"])}
        save()


def method_step(a, out: Path, res: dict, save, extra: dict) -> None:
    """Step 3: ARI of each (confusion, holdout) candidate at seed 0; the winner."""
    if (res.get("method") or {}).get("chosen"):
        return
    data, size = res["calibration"]["data"], a.sizes[0]
    lr = res["lr"][f"{data}|{size}"]["lr"]
    models = {}
    for r in res["runs"]:
        if r.get("kind") in ("lr", "method") and (r["data"], r["size"], r["lr"]) == (data, size, lr):
            models[r["holdout"]] = r
    need = sorted({h for _, h in METHODS} - set(models))
    rs.execute([(run_holdout_dense, data, size, lr, a.epochs, h, out, extra, "method") for h in need], a.jobs,
               lambda r: (res["runs"].append(r), models.__setitem__(r["holdout"], r), save()))
    cands = [{"confusion": c, "holdout": h, "ari": models[h]["ari"][c]} for c, h in METHODS]
    top = max(c["ari"] for c in cands)
    chosen = next(c for c in sorted(cands, key=lambda c: (c["holdout"], c["confusion"] != "counts"))
                  if c["ari"] >= top - ARI_TIE)
    res["method"] = {"candidates": cands, "chosen": chosen,
                     "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    save()


def new_results(a) -> dict:
    from mobile_vmoe.provenance import provenance

    return {"provenance": provenance(), "resumed_by": [], "quick": bool(a.quick),
            "protocol": {"data": a.data, "sizes": a.sizes, "seeds": a.seeds, "epochs": a.epochs, "lr_grid": a.lr_grid,
                         "lr_extensions": a.lr_extensions, "cal_lr": a.cal_lr, "cal_rounds": a.cal_rounds,
                         "level_max": LEVEL_MAX, "band": list(BAND), "max_gap": MAX_GAP, "holdout": HOLDOUT,
                         "methods": [list(m) for m in METHODS], "ari_tie": ARI_TIE,
                         "warmup_epochs": a.epochs * WARMUP_PER_EPOCH, "settings": PROTOCOL_SETTINGS, "extra": a.set,
                         "arms": list(ARMS), "comparisons": [list(c) for c in COMPARISONS],
                         "error_share": ERROR_SHARE, "alpha": study_stats.ALPHA,
                         "flat_slope": study_stats.FLAT_SLOPE, "flat_epochs": study_stats.FLAT_EPOCHS,
                         "min_seeds": MIN_SEEDS, "arm_cuts": [list(g) for g in ARM_CUTS], "budget_min": a.budget,
                         "jobs": a.jobs},
            "steps": {}, "probe": None, "plan": None, "calibration": None, "lr": {}, "method": None, "runs": []}


def step(res: dict, name: str, save):
    """Context: record the step's start and end (UTC) in the results. A step a stopped study had
    finished keeps its times (a continuing study passes through it without work)."""
    import contextlib

    @contextlib.contextmanager
    def cm():
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        rec = res["steps"].setdefault(name, {"started": now})
        save()
        yield
        if "finished" not in rec:
            rec["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            save()

    return cm()


def run_probe(a, out: Path, res: dict, save, extra: dict) -> None:
    if res["probe"] is None and not a.no_probe:
        rows = []
        rs.execute([(probe_one, size, kind, level_spec(a.data, 0.5), out, extra) for size in a.sizes
                    for kind in ("dense", "moe", "moe-all")], a.jobs, rows.append)
        res["probe"] = rows
    if res["plan"] is None:
        arms = list(ARMS)
        note = ""
        if not has_moe_init():
            arms = [x for x in arms if x not in UPCYCLED]
            note = "moe_init is not a TrainConfig key at this commit: moe-sc-upcycled and dense-long not run"
        if res["probe"]:
            probe = {(r["size"], r["kind"]): r for r in res["probe"]}
            res["plan"] = plan(probe, a.sizes, a.seeds, arms, a.epochs, a.lr_grid, a.cal_rounds, a.jobs, a.budget)
        else:
            res["plan"] = {"sizes": a.sizes, "seeds": a.seeds, "arms": arms, "cuts": [], "projected_min": None}
            note = "; ".join(filter(None, [note, "no timing probe (--no-probe): nothing cut"]))
        res["plan"]["note"] = note
    save()
    print("plan: " + json.dumps(res["plan"], allow_nan=False), flush=True)


def run_study(a, out: Path) -> int:
    from mobile_vmoe.config import parse_overrides

    for size in a.sizes:
        rs.size_settings(size)
    extra = parse_overrides(a.set)
    res, save, add = rs.ledger(out / "results.json", lambda: new_results(a), ("size", "seed", "arm", "top1", "wall_seconds"))

    if a.quick:
        print("SMOKE CHECK (--quick): tiny data and epochs; it checks that the study runs, not the claim")
    t0 = time.time()
    with step(res, "probe", save):
        run_probe(a, out, res, save, extra)
    if a.probe_only:
        return 0
    p = res["plan"]
    with step(res, "1-calibration", save):
        calibrate(a, out, res, save, extra)
    cal = res["calibration"]
    if not cal["in_band"] and not a.run_if_missed:
        best = min(cal["tried"], key=lambda r: abs(r["holdout_top1"] - sum(BAND) / 2))
        raise MvmoeError(f"the calibration missed the band: the nearest level ({best['level']:g}) gave "
                         f"{best['holdout_top1']:.1f} % holdout top-1 (gap {best['gap']:+.1f}); the study stops before "
                         f"its arms (no verdict could be read); --run-if-missed runs them anyway")
    with step(res, "2-lr", save):
        lr_step(a, out, res, save, extra, p["sizes"])
    with step(res, "3-superclass-method", save):
        method_step(a, out, res, save, extra)
    data, method = res["calibration"]["data"], res["method"]["chosen"]
    rs.write_planted(out, data)
    with step(res, "4-arms", save):
        done = {(r["size"], r["seed"], r["arm"]) for r in arm_rows(res)}
        calls = [(run_arm, data, size, seed, arm, res["lr"][f"{data}|{size}"]["lr"], a.epochs, out, extra, method)
                 for seed in range(p["seeds"]) for size in p["sizes"] for arm in ARMS
                 if arm in p["arms"] and (size, seed, arm) not in done]
        rs.execute(calls, a.jobs, add)
    res.setdefault("wall_minutes", []).append(round((time.time() - t0) / 60, 1))
    save()
    print(f"study: {len(calls)} arm runs in {(time.time() - t0) / 60:.1f} min\n")
    print(summarize(res, allow_mixed=True))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=DATA, help="graded:N:S:P, the level appended by the calibration")
    ap.add_argument("--sizes", nargs="+", default=SIZES, help="DEPTHxWIDTH; the first is calibrated on")
    ap.add_argument("--seeds", type=int, default=SEEDS)
    ap.add_argument("--epochs", type=int, default=EPOCHS)
    ap.add_argument("--lr-grid", type=float, nargs="+", default=LR_GRID)
    ap.add_argument("--jobs", type=int, default=JOBS, help="one-thread training processes side by side (1: in process)")
    ap.add_argument("--budget", type=float, default=BUDGET_MIN, help="wall minutes the cut rule aims at")
    ap.add_argument("--quick", action="store_true", help="SMOKE CHECK: tiny data, 2 seeds, 2 epochs, no probe")
    ap.add_argument("--no-probe", action="store_true", help="skip the timing probe (and so every cut)")
    ap.add_argument("--run-if-missed", action="store_true",
                    help="run the arms even when the calibration missed the band (reported, not read)")
    ap.add_argument("--probe-only", action="store_true", help="run the timing probe, print the plan, stop")
    ap.add_argument("--out", type=Path, default=Path("runs/capacity"))
    ap.add_argument("--set", nargs="*", default=[], help="extra KEY=VALUE settings for every run (recorded)")
    ap.add_argument("--summarize", action="store_true", help="only print the tables from OUT/results.json")
    ap.add_argument("--mixed-commits", action="store_true", help="with --summarize: pool runs of different commits")
    a = ap.parse_args(argv)
    a.cal_rounds, a.lr_extensions, a.cal_lr = CAL_ROUNDS, LR_EXTENSIONS, CAL_LR
    if a.quick:
        for k, v in QUICK.items():
            setattr(a, k, v)
        a.no_probe = a.run_if_missed = True
    if not a.data.startswith("graded") or a.data.count(":") != 3:
        raise MvmoeError(f"--data {a.data!r}: expected graded:N:S:P (the calibration appends the level)")
    if a.summarize:
        path = a.out / "results.json"
        if not path.is_file():
            raise MvmoeError(f"no study in {a.out}: {path} does not exist")
        print(summarize(json.loads(path.read_text()), a.mixed_commits))
        return 0
    if a.seeds < 2:
        raise MvmoeError("--seeds must be >= 2 (paired intervals need two differences)")
    return run_study(a, a.out)


if __name__ == "__main__":
    from mobile_vmoe.errors import run_script

    run_script(main)
