"""The routing study's protocol on one GPU: more data per class, sizes up to 12x192, under 8 minutes.

    uv run python bench/study_gpu.py --dry --out runs/study-gpu      # CPU: checks, plan, commands; trains nothing
    uv run python bench/study_gpu.py --out runs/study-gpu            # on a machine with a CUDA GPU
    uv run python bench/routing_study.py --summarize --out runs/study-gpu

Prepared for the first session that is lent a GPU (none has been so far: nothing here was run on
one). It is bench/routing_study.py's protocol (arms, seeds, epochs, lr choice, gates, statistics,
verdicts: see that docstring) with these changes, fixed before any run:
- data: 300 training and 100 eval images per class (``shapes-disjoint:100:10:300`` and the
  negative control ``shapes:100:10:300``: 30,000 / 10,000 images, 5x the CPU study);
- sizes 6x64 and 12x192 (the paper's ViT-Tiny width and depth; heads W/16 as on CPU);
- batch 256 with bf16 autocast; lr grid 1e-3, 2e-3, 4e-3 per 512 images (5e-4, 1e-3, 2e-3 at batch
  256: lower than the CPU grid for the deeper, wider models), chosen per size by the dense arm on
  the holdout as on CPU;
- JOBS = 8 processes share the GPU (one CPU thread each; the machines lent have 16 cores);
- budget 7 minutes of projected wall (under 8 with the probe); the probe runs first, and the cut
  rule keeps the largest size: the SMALLER sizes go first, then the control's token and moe-e2e
  arms; seeds and epochs are never cut. If it still does not fit, the GPU script does NOT start
  the study (a lent GPU's time is short): it stops with the projection, and ``--force`` runs it
  anyway.
Every figure lands in OUT/results.json (one JSON, with provenance); ``--dry`` writes
OUT/plan.json (the commands, the task counts, whether CUDA is there) and trains nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import routing_study

from mobile_vmoe.errors import MvmoeError

DATA = ["shapes-disjoint:100:10:300", "shapes:100:10:300"]
SIZES = ["6x64", "12x192"]
LR_GRID = [1e-3, 2e-3, 4e-3]  # per 512 images: 5e-4, 1e-3, 2e-3 at batch 256
SETTINGS = ["batch_size=256", "amp=bf16"]
JOBS = 8
BUDGET_MIN = 7.0


def study_args(out: Path) -> list[str]:
    """routing_study's command line for the GPU protocol."""
    return ["--data", *DATA, "--sizes", *SIZES, "--seeds", str(routing_study.SEEDS),
            "--epochs", str(routing_study.EPOCHS), "--lr-grid", *(f"{v:g}" for v in LR_GRID), "--jobs", str(JOBS),
            "--budget", str(BUDGET_MIN), "--keep-largest", "--set", *SETTINGS, "--out", str(out)]


def dry_run(out: Path) -> dict:
    """Everything but training: the settings resolve, the data specs build, the task counts."""
    import torch

    from mobile_vmoe.config import field_names, parse_overrides
    from mobile_vmoe.data import build_data
    from mobile_vmoe.fileio import atomic_write_json
    from mobile_vmoe.provenance import provenance
    from mobile_vmoe.train import adapt_to_data
    from mobile_vmoe.train.run import base_config

    extra = parse_overrides(SETTINGS)
    for data in DATA:
        bundle = build_data(data.rsplit(":", 1)[0] + ":3", augment="none")  # the spec builds (3 images per class)
        for size in SIZES:
            for arm in routing_study.ARMS:  # every arm's settings make a valid config (what resolve checks)
                s = routing_study.settings_for(arm, data, size, LR_GRID[0], routing_study.EPOCHS, extra)
                model_keys = {k: v for k, v in s.items() if k in field_names()}
                tcfg = base_config("vit-6x64-p32" if arm == "dense" else "vmoe-6x64-p32", None)
                tcfg.with_settings({k: v for k, v in s.items() if k not in model_keys})
                adapt_to_data(tcfg.model, bundle, model_keys)
    lr_runs = len(DATA) * len(SIZES) * len(LR_GRID)
    arm_runs = len(DATA) * len(SIZES) * routing_study.SEEDS * len(routing_study.ARMS)
    info = {"dry": True, "cuda": torch.cuda.is_available(), "command": f"uv run python bench/study_gpu.py --out {out}",
            "routing_study_args": study_args(out), "lr_runs": lr_runs, "arm_runs": arm_runs,
            "probe_runs": len(SIZES) * 3, "provenance": provenance()}
    atomic_write_json(out / "plan.json", info)
    return info


def gpu_main(argv, *, doc: str, script: str, default_out: Path, dry_run, study_main, study_args) -> int:
    """The GPU variant of a study: ``--dry`` plans on any machine; otherwise the study's probe,
    a refusal when even its cut plan is over budget (unless ``--force``), then the study itself."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--out", type=Path, default=default_out)
    ap.add_argument("--dry", action="store_true", help="check and plan on any machine; train nothing")
    ap.add_argument("--force", action="store_true", help="run even when the probe's plan is over budget")
    a = ap.parse_args(argv)
    if a.dry:
        print(json.dumps(dry_run(a.out), indent=1, allow_nan=False))
        return 0
    import torch

    if not torch.cuda.is_available():
        raise MvmoeError(f"no CUDA device here: {script} is for a GPU machine (use --dry to check it on CPU)")
    study_main([*study_args(a.out), "--probe-only"])
    if not a.force:
        check_plan(a.out)
    return study_main(study_args(a.out))


def main(argv=None) -> int:
    return gpu_main(argv, doc=__doc__, script="bench/study_gpu.py", default_out=Path("runs/study-gpu"), dry_run=dry_run,
                    study_main=routing_study.main, study_args=study_args)


def check_plan(out: Path) -> None:
    """After the probe: refuse to start when even the cut plan is over budget."""
    plan = json.loads((out / "results.json").read_text())["plan"]
    if plan.get("over_budget"):
        raise MvmoeError(f"the probe projects {plan['projected_min']} min after every cut ({', '.join(plan['cuts'])}), "
                         f"over the {plan['budget_min']} min budget: not started (--force runs it anyway; the probe's "
                         f"figures are in {out / 'results.json'})")


if __name__ == "__main__":
    from mobile_vmoe.errors import run_script

    run_script(main)
