"""Distillation 2x2: dense / Mobile V-MoE x without / with a convnet teacher, at equal student MACs.

    uv run python bench/distill_study.py --out runs/study-distill [--lr-from runs/study]
    uv run python bench/distill_study.py --summarize --out runs/study-distill

A product question kept apart from the replication arms of bench/routing_study.py: a phone user
compares against convnets too, and distillation is the usual way to close that gap. Design, fixed
before any run:
- data ``shapes-disjoint``; students at 6x48 (patch 8; MoE: E = 10, k = 1, last 2 blocks, the
  paper's superclass recipe); EPOCHS, warmup, batch and seeds 0-4 as in routing_study.py; the
  student lr is the one routing_study chose for this data and size (``--lr-from OUT``), else 1.5e-3
  (at batch 64; lrs are stated per 512 images in the code, as TrainConfig takes them).
- teacher: torchvision mobilenet_v3_small trained once (seed 0) through the library's training
  loop on the training split less the 10 % holdout of seed 0 (so it never saw the images seed 0's
  superclasses are fit on), lr 3e-3 at batch 64 (the setting at which it reached 82.5 % in the earlier study),
  same epochs; its eval top-1 is reported.
- arms per seed: dense, dense-kd, moe-sc, moe-sc-kd; kd = soft distillation (KL at tau 1, weight
  0.5, the options study's). moe-sc-kd routes on the same seed's superclasses as moe-sc (only the
  teacher differs), so its compute column does not repeat the dense stage.
- statistic: routing_study's (paired t, 90 % interval, Holm across these 4 comparisons, the same
  verdict rule): dense-kd - dense, moe-sc-kd - moe-sc, moe-sc - dense, moe-sc-kd - dense-kd.
OUT/results.json (``provenance``, ``teacher``, ``runs``) is rewritten after each run; a stopped
study resumes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import routing_study as rs
import study_stats

from mobile_vmoe.errors import MvmoeError

DATA, SIZE = "shapes-disjoint", "6x48"
LR, TEACHER_LR = 1.2e-2, 2.4e-2  # per 512 images: 1.5e-3 and 3e-3 at batch 64
KD = {"distill": "soft", "distill_weight": 0.5, "distill_tau": 1.0}
ARMS = ("dense", "dense-kd", "moe-sc", "moe-sc-kd")
COMPARISONS = (("dense-kd", "dense"), ("moe-sc-kd", "moe-sc"), ("moe-sc", "dense"), ("moe-sc-kd", "dense-kd"))


class Logits:
    """A torchvision classifier as the training loop's module: images -> (logits, None, None)."""

    def __init__(self, model):
        self.model = model

    def __call__(self, x):
        return self.model(x), None, None

    def train(self):
        self.model.train()


def train_teacher(data: str, epochs: int, out: Path, extra: dict) -> dict:
    """mobilenet_v3_small on train less the holdout (seed 0), through train_one_epoch -> teacher file."""
    import torch
    import torchvision

    from mobile_vmoe.data.holdout import split_for_superclasses
    from mobile_vmoe.train import TrainState, resolve, train_one_epoch
    from mobile_vmoe.train.distill import save_torchvision_teacher
    from mobile_vmoe.train.ema import build_ema
    from mobile_vmoe.train.loop import Stage
    from mobile_vmoe.train.metrics import Progress
    from mobile_vmoe.train.optim import build_optimizer, build_scheduler
    from mobile_vmoe.train.state import seed_everything

    torch.set_num_threads(1)
    t0 = time.time()
    settings = {**rs.PROTOCOL_SETTINGS, "lr": TEACHER_LR, "warmup_epochs": epochs * rs.WARMUP_PER_EPOCH, **extra}
    tcfg, bundle = resolve("vit-6x64-p32", data, settings, epochs=epochs, seed=0)
    rest, _ = split_for_superclasses(bundle, tcfg.superclass_holdout, 0)
    stage = Stage(tcfg, rest, out / "teacher", name="teacher", quiet=True)
    seed_everything(0)
    model = torchvision.models.mobilenet_v3_small(num_classes=bundle.num_classes).to(stage.device)
    opt = build_optimizer(model, tcfg.effective_lr, tcfg.weight_decay, (tcfg.betas1, tcfg.betas2))
    sched = build_scheduler(opt, stage.steps_per_epoch * epochs, round(tcfg.warmup_epochs * stage.steps_per_epoch),
                            tcfg.min_lr / tcfg.effective_lr)
    scaler = torch.amp.GradScaler(stage.device.type, enabled=stage.amp_dtype == torch.float16)
    state = TrainState(model, opt, sched, build_ema(model, tcfg.ema_decay), scaler)
    (out / "teacher").mkdir(parents=True, exist_ok=True)
    for _ in range(epochs):
        train_one_epoch(stage, state, Logits(model), lambda: False, Progress(0, 0, "", enabled=False))
        state.epoch, state.epoch_step = state.epoch + 1, 0
    net = state.eval_model.eval()
    with torch.no_grad():
        correct = sum(int((net(x.to(stage.device)).argmax(-1).cpu() == y).sum()) for x, y in stage.val_loader())
    top1 = 100 * correct / len(bundle.val)
    path = save_torchvision_teacher(out / "teacher" / "teacher.pt", net, "mobilenet_v3_small", bundle, top1)
    return {"kind": "teacher", "top1": top1, "path": str(path), "lr": TEACHER_LR, "epochs": epochs,
            "train_images": len(rest.train), "wall_seconds": round(time.time() - t0, 1)}


def run_student(arm: str, seed: int, lr: float, epochs: int, size: str, data: str, out: Path, extra: dict) -> dict:
    import torch

    from mobile_vmoe.provenance import git_state
    from mobile_vmoe.train import resolve

    torch.set_num_threads(1)
    t0 = time.time()
    s = rs.settings_for("dense" if arm.startswith("dense") else "moe-sc", data, size, lr, epochs, extra)
    if arm.endswith("-kd"):
        s = {**s, **KD, "teacher": str(out / "teacher" / "teacher.pt")}
    sc = {"moe-sc": "auto", "moe-sc-kd": str(out / f"seed{seed}" / "moe-sc" / "superclasses.json")}.get(arm, "none")
    base = "vit-6x64-p32" if arm.startswith("dense") else "vmoe-6x64-p32"
    tcfg, bundle = resolve(base, data, s, epochs=epochs, seed=seed)
    where = out / f"seed{seed}" / arm
    summ = rs.train_or_continue(tcfg, bundle, where, sc)
    macs = rs.train_macs(summ["macs"], epochs, len(bundle.train), tcfg.batch_size)
    if arm == "moe-sc":
        macs += rs.train_macs(summ["dense"]["macs"], epochs, int(len(bundle.train) * (1 - tcfg.superclass_holdout)),
                              tcfg.batch_size)
    return {"kind": "arm", "data": data, "size": size, "seed": seed, "arm": arm, "lr": lr, "top1": summ["top1"],
            "macs": summ["macs"], "train_macs": macs, "train_seconds": summ["train_seconds"],
            "router_eval_top1": summ.get("router_superclass_top1"), "commit": summ.get("commit"),
            "dirty": git_state()[1], "wall_seconds": round(time.time() - t0, 1), "dir": str(where)}


def chosen_lr(study: Path | None, data: str, size: str) -> float:
    if study is None:
        return LR
    res = json.loads((study / "results.json").read_text())
    key = f"{data}|{size}"
    if key not in res.get("lr", {}):
        raise MvmoeError(f"--lr-from {study}: that study chose no lr for {data} at {size}")
    return res["lr"][key]["lr"]


def table(res: dict) -> str:
    """Markdown: the 2x2 (mean +- std over seeds, compute) and the verdicts of the 4 comparisons."""
    rows = [r for r in res["runs"] if r["kind"] == "arm"]
    t = res.get("teacher") or {}
    lines = [f"teacher mobilenet_v3_small: top-1 {t.get('top1', float('nan')):.1f} % "
             f"(trained on {t.get('train_images')} images, seed 0)", "",
             "| arm | n | top-1 (%) | active MACs | train GMACs (student) |", "|---|---|---|---|---|"]
    for arm in ARMS:
        a = [r for r in rows if r["arm"] == arm]
        if a:
            lines.append(f"| {arm} | {len(a)} | {rs.mean_sd([r['top1'] for r in a])} | {a[0]['macs'] / 1e6:.2f}M | "
                         f"{sum(r['train_macs'] for r in a) / len(a) / 1e9:.4g} |")
    by = {(r["arm"], r["seed"]): r["top1"] for r in rows}
    found = []
    for arm, ref in COMPARISONS:
        seeds = sorted(s for (a, s) in by if a == arm and (ref, s) in by)
        if len(seeds) >= 2:
            found.append({"arm": arm, "ref": ref, **study_stats.paired([by[(arm, s)] - by[(ref, s)] for s in seeds])})
    lines += ["", "| arm - reference | n | mean | 90 % CI | verdict |", "|---|---|---|---|---|"]
    for c in (study_stats.verdicts(found) if found else []):
        lines.append(f"| {c['arm']} - {c['ref']} | {c['n']} | {c['mean']:+.2f} | [{c['lower90']:+.2f}, "
                     f"{c['upper90']:+.2f}] | {c['verdict']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    from mobile_vmoe.config import parse_overrides
    from mobile_vmoe.fileio import atomic_write_json
    from mobile_vmoe.provenance import provenance

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=DATA)
    ap.add_argument("--size", default=SIZE)
    ap.add_argument("--seeds", type=int, default=rs.SEEDS)
    ap.add_argument("--epochs", type=int, default=rs.EPOCHS)
    ap.add_argument("--lr-from", type=Path, help="a routing study's OUT: use the lr it chose for this data and size")
    ap.add_argument("--jobs", type=int, default=rs.JOBS)
    ap.add_argument("--out", type=Path, default=Path("runs/study-distill"))
    ap.add_argument("--set", nargs="*", default=[], help="extra KEY=VALUE settings for every run (recorded)")
    ap.add_argument("--summarize", action="store_true")
    a = ap.parse_args(argv)
    path = a.out / "results.json"
    settings = vars(a) | {"out": str(a.out), "lr_from": str(a.lr_from)}
    res = (json.loads(path.read_text()) if path.exists()
           else {"provenance": provenance(), "teacher": None, "runs": [], "settings": settings})
    if a.summarize:
        rs.check_commits(res["runs"], False)
        print(table(res))
        return 0
    extra, lr = parse_overrides(a.set), chosen_lr(a.lr_from, a.data, a.size)
    res["lr"] = lr

    def add(row):
        res["runs"].append(row)
        atomic_write_json(path, res)
        print(json.dumps({k: row.get(k) for k in ("arm", "seed", "top1", "wall_seconds")}, allow_nan=False), flush=True)

    if res["teacher"] is None:  # phase 1: the teacher and each seed's moe-sc (its superclasses)
        res["teacher"] = train_teacher(a.data, a.epochs, a.out, extra)
        atomic_write_json(path, res)
    done = {(r["arm"], r["seed"]) for r in res["runs"]}
    for phase in (("dense", "moe-sc"), ("dense-kd", "moe-sc-kd")):
        rs.execute([(run_student, arm, s, lr, a.epochs, a.size, a.data, a.out, extra) for s in range(a.seeds)
                    for arm in phase if (arm, s) not in done], a.jobs, add)
    print(table(res))
    return 0


if __name__ == "__main__":
    from mobile_vmoe.errors import run_script

    run_script(main)
