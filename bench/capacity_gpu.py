"""The capacity study's protocol on one GPU: more images per class, both sizes, more epochs.

    uv run python bench/capacity_gpu.py --dry --out runs/capacity-gpu      # CPU: checks, plan, commands; trains nothing
    uv run python bench/capacity_gpu.py --out runs/capacity-gpu            # on a machine with a CUDA GPU
    uv run python bench/capacity_study.py --summarize --out runs/capacity-gpu

Prepared beside bench/capacity_study.py for a session lent a GPU (none has run it). It is that
script's protocol (calibration, lr choice, superclass method, arms, seeds, decision rule: see its
docstring) with these changes, fixed before any run:
- data ``graded:500:10:300`` (300 training images per class, 60 eval: 150,000 / 30,000 images);
  the calibration then sets the level for this amount of data;
- sizes 6x32 and 6x48, EPOCHS 30, seeds 5;
- batch 256 with bf16 autocast; lr grid 1.2e-2, 2.4e-2, 4.8e-2 per 512 images (as on CPU: lrs
  are stated per 512 images), extended at an edge as on CPU;
- JOBS = 8 processes share the GPU (one CPU thread each); budget 12 minutes of projected wall.
``--dry`` writes OUT/plan.json (the command, the settings checked, whether CUDA is there).
"""

from __future__ import annotations

from pathlib import Path

import capacity_study as cs
from study_gpu import gpu_main

DATA = "graded:500:10:300"
SIZES = ["6x32", "6x48"]
EPOCHS = 30
SETTINGS = ["batch_size=256", "amp=bf16"]
JOBS = 8
BUDGET_MIN = 12.0


def study_args(out: Path) -> list[str]:
    return ["--data", DATA, "--sizes", *SIZES, "--seeds", str(cs.SEEDS), "--epochs", str(EPOCHS),
            "--lr-grid", *(f"{v:g}" for v in cs.LR_GRID), "--jobs", str(JOBS), "--budget", str(BUDGET_MIN),
            "--set", *SETTINGS, "--out", str(out)]


def dry_run(out: Path) -> dict:
    """Everything but training: every arm's settings make a valid config on a tiny build of the data."""
    import torch

    from mobile_vmoe.config import field_names, parse_overrides
    from mobile_vmoe.data import build_data
    from mobile_vmoe.fileio import atomic_write_json
    from mobile_vmoe.provenance import provenance
    from mobile_vmoe.train import adapt_to_data
    from mobile_vmoe.train.run import base_config

    extra = parse_overrides(SETTINGS)
    bundle = build_data(cs.level_spec(DATA.rsplit(":", 1)[0] + ":3", 0.5), augment="none")  # 3 images per class
    method = {"confusion": "soft", "holdout": 0.1}
    checked = []
    for size in SIZES:
        for arm in cs.ARMS:
            if arm in cs.UPCYCLED and not cs.has_moe_init():
                continue
            s = cs.settings_for(arm, cs.level_spec(DATA, 0.5), size, cs.LR_GRID[0], EPOCHS, extra, method)
            model_keys = {k: v for k, v in s.items() if k in field_names()}
            tcfg = base_config("vit-6x64-p32" if arm.startswith("dense") else "vmoe-6x64-p32", None)
            tcfg.with_settings({k: v for k, v in s.items() if k not in model_keys})
            adapt_to_data(tcfg.model, bundle, model_keys)
            checked.append(f"{size}/{arm}")
    info = {"dry": True, "cuda": torch.cuda.is_available(), "command": f"uv run python bench/capacity_gpu.py --out {out}",
            "capacity_study_args": study_args(out), "checked": checked, "moe_init": cs.has_moe_init(),
            "provenance": provenance()}
    atomic_write_json(out / "plan.json", info)
    return info


def main(argv=None) -> int:
    return gpu_main(argv, doc=__doc__, script="bench/capacity_gpu.py", default_out=Path("runs/capacity-gpu"), dry_run=dry_run,
                    study_main=cs.main, study_args=study_args)


if __name__ == "__main__":
    from mobile_vmoe.errors import run_script

    run_script(main)
