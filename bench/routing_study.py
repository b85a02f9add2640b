"""Routing study: at equal active MACs, which routing helps a small ViT?

    uv run python bench/routing_study.py --data digits synthetic --seeds 3 --epochs 8 --out runs/study

Arms, all the same backbone (vmoe-6x64-p32 adapted to 32-px data: patch 8, 16 tokens; last 2 MLPs
are MoE with E experts, k=1, so every arm runs the same MACs per image, up to the tiny router):
    dense        the dense twin: stage 1 of `moe-sc`'s recipe (DIR/moe-sc/dense), same epochs
    moe-e2e      per-image MoE, router trained end to end by the classification loss only
                 (superclasses "none": no router loss)
    moe-sc       per-image MoE, the paper's recipe: superclasses from the dense model's confusion
                 matrix, loss CE + 0.3 x router CE
    token        per-token V-MoE (routing=token, k=1, capacity + BPR, aux loss 0.01)
E = 5 on digits (10 classes), E = 4 on synthetic (20 classes in 4 planted superclasses).

Every run goes through mobile_vmoe.train.train into OUT/<data>/seed<k>/<arm>; OUT/results.json is
rewritten (atomically) after each run, so a stopped study keeps what finished. `--summarize`
prints the markdown table (mean +- sample std over seeds) from OUT/results.json without training.
Runs here use one torch thread (the CI box is shared); the epoch count is sized for minutes, not
for the best accuracy: read the numbers as a comparison between arms at one small budget.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from mobile_vmoe.errors import MvmoeError

ARMS = ("dense", "moe-e2e", "moe-sc", "token")
EXPERTS = {"digits": 5, "synthetic": 4}
KEYS = ("top1", "top5", "router_superclass_top1", "macs", "active_params", "params", "train_seconds")


def run_arm(arm: str, data: str, seed: int, epochs: int, out: Path, extra: dict) -> dict:
    from mobile_vmoe.train import resolve, train

    e = EXPERTS.get(data, 5)
    settings = {"num_experts": e, "warmup_epochs": 1.0, **extra}
    if arm == "dense":  # stage 1 of moe-sc: already trained
        p = out / "moe-sc" / "dense" / "summary.json"
        if not p.exists():
            raise MvmoeError(f"{p} missing: the dense arm is moe-sc's stage 1; run moe-sc first")
        return json.loads(p.read_text())
    superclasses = {"moe-sc": "auto", "moe-e2e": "none", "token": "none"}[arm]
    if arm == "token":
        settings["routing"] = "token"
    tcfg, bundle = resolve("vmoe-6x64-p32", data, settings, epochs=epochs, seed=seed)
    return train(tcfg, bundle, out / arm, superclasses=superclasses, quiet=True)


def save_results(path: Path, results: list[dict]) -> None:
    from mobile_vmoe.fileio import atomic_write_text

    atomic_write_text(path, json.dumps(results, indent=1) + "\n")


def summarize(results: list[dict]) -> str:
    """Markdown table: per dataset and arm, mean +- sample std over seeds (n shown)."""
    lines = ["| data | arm | n | top-1 (%) | top-5 (%) | router superclass top-1 (%) | superclass ARI | MACs | active params |",
             "|---|---|---|---|---|---|---|---|---|"]

    def ms(vals):
        vals = [v for v in vals if v is not None]
        if not vals:
            return "-"
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        return f"{statistics.mean(vals):.1f} ± {sd:.1f}"

    def ms2(vals):  # adjusted Rand index of found vs planted superclasses: 2 decimals
        vals = [v for v in vals if v is not None]
        return f"{statistics.mean(vals):.2f} (min {min(vals):.2f})" if vals else "-"

    for data in dict.fromkeys(r["data"] for r in results):
        for arm in ARMS:
            rs = [r for r in results if r["data"] == data and r["arm"] == arm]
            if not rs:
                continue
            lines.append(f"| {data} | {arm} | {len(rs)} | {ms([r['top1'] for r in rs])} | {ms([r['top5'] for r in rs])} | "
                         f"{ms([r.get('router_superclass_top1') for r in rs])} | {ms2([r.get('superclass_ari') for r in rs])} | "
                         f"{rs[0]['macs'] / 1e6:.2f}M | "
                         f"{rs[0]['active_params'] / 1e3:.0f}K |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", nargs="+", default=["digits", "synthetic"])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, nargs="+", default=[Path("runs/study")],
                    help="output dir (several only with --summarize: their results are merged)")
    ap.add_argument("--set", nargs="*", default=[], help="extra KEY=VALUE ModelConfig/TrainConfig settings for every arm, e.g. lr=1e-3")
    ap.add_argument("--summarize", action="store_true", help="only print the table from OUT/results.json")
    a = ap.parse_args(argv)
    if a.summarize:
        merged = [r for d in a.out if (d / "results.json").exists() for r in json.loads((d / "results.json").read_text())]
        print(summarize(merged))
        return 0
    if len(a.out) != 1:
        ap.error("give one --out DIR to train into")
    out = a.out[0]
    res_path = out / "results.json"
    results = json.loads(res_path.read_text()) if res_path.exists() else []
    import torch

    from mobile_vmoe.config import parse_overrides

    torch.set_num_threads(a.threads)
    extra = parse_overrides(a.set)
    done = {(r["data"], r["seed"], r["arm"]) for r in results}
    for seed in range(a.seeds):  # seeds outermost: a stopped study still has whole seeds
        for data in a.data:
            for arm in ("moe-sc", "dense", "moe-e2e", "token"):
                if (data, seed, arm) in done:
                    continue
                t0 = time.time()
                s = run_arm(arm, data, seed, a.epochs, out / data / f"seed{seed}", extra)
                row = {"data": data, "seed": seed, "arm": arm, "model": s.get("model"), "epochs": a.epochs,
                       **{k: s.get(k) for k in KEYS}, "superclass_ari": s.get("superclass_ari"),
                       "wall_seconds": round(time.time() - t0, 1)}
                results.append(row)
                save_results(res_path, results)
                print(json.dumps(row), flush=True)
    print(summarize(results))
    return 0


if __name__ == "__main__":
    from mobile_vmoe.errors import run_script

    run_script(main)
