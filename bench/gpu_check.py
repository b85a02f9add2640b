"""The prepared GPU check: the figures docs/training.md needs, in one JSON, in under 8 minutes on one GPU.

    uv run python bench/gpu_check.py --out gpu_check.json          # on a CUDA machine
    uv run python bench/gpu_check.py --dry --out /tmp/dry.json     # CPU: tiny model, gloo, few steps (tests)

It measures, in this order (each part records its error instead of stopping the rest):

1. ``train``: training-step images/s (forward_with_routing + CE + 0.3 router CE + backward +
   fused AdamW, bf16 autocast, random batch, no data loading) of vmoe-12x192-p32 and its dense
   twin at 224 px, eager and with torch.compile; the MoE / dense ratio of each.
2. ``dali``: the DALI training loader's images/s on the GPU (decode + crop + RandAugment +
   normalise, ``mobile_vmoe.data.loader.build_train_loader`` with loader=dali) over a generated
   folder of 500x375 JPEGs; ``"not installed"`` without DALI (``uv sync --extra dali``).
3. ``ddp``: ``torchrun`` on one node through dense twin -> superclasses -> MoE on a generated
   ImageNet-format folder (every GPU, at least 2 processes: NCCL with one process per GPU; on a
   single GPU 2 processes share it over gloo, since NCCL refuses two ranks on one device).

``--dry`` runs the same code on the CPU with a tiny model, the eager compile backend, 2 steps and
gloo, so the tests exercise every path without a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REAL = dict(model="vmoe-12x192-p32", img_size=224, batch=256, classes=1000, warmup=5, steps=20, backend="inductor",
            ddp_img=64, ddp_classes=10, ddp_train=120, ddp_epochs=2, jpeg_size=(500, 375), dali_batches=30)
DRY = dict(model="vmoe-2x32-p8", img_size=32, batch=8, classes=10, warmup=1, steps=2, backend="eager",
           ddp_img=16, ddp_classes=4, ddp_train=16, ddp_epochs=1, jpeg_size=(40, 30), dali_batches=2)


# ------------------------------------------------------------------------------- 1. train step
def model_pair(p: dict):
    """(MoE config, dense twin config) of the check's model."""
    from mobile_vmoe.models.registry import dense_twin, get_config

    if p["model"] == DRY["model"]:
        moe = get_config("vmoe-6x64-p32", depth=2, width=32, heads=2, moe_blocks=1, img_size=p["img_size"],
                         patch_size=8, num_classes=p["classes"]).replace(name=p["model"])
    else:
        moe = get_config(p["model"], img_size=p["img_size"], num_classes=p["classes"])
    return moe, dense_twin(moe)


def train_step_fn(cfg, p: dict, device: torch.device, compile_: bool):
    """One training step of ``cfg`` on a fixed random batch, as a closure."""
    from mobile_vmoe.models import MobileVMoE
    from mobile_vmoe.train.loop import RoutingForward
    from mobile_vmoe.train.optim import build_optimizer

    torch.manual_seed(0)
    model = MobileVMoE(cfg).to(device).train()
    module = RoutingForward(model)
    if compile_:
        module = torch.compile(module, backend=p["backend"])
    opt = build_optimizer(model, 1e-3, 0.05)
    x = torch.randn(p["batch"], 3, cfg.img_size, cfg.img_size, device=device)
    y = torch.randint(0, cfg.num_classes, (p["batch"],), device=device)
    sc = torch.randint(0, max(cfg.num_experts, 1), (p["batch"],), device=device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step() -> None:
        with amp:
            logits, router_logits, _ = module(x)
            loss = F.cross_entropy(logits.float(), y)
            if router_logits is not None:
                loss = loss + 0.3 * F.cross_entropy(router_logits.float(), sc)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def images_per_sec(step, p: dict, device: torch.device) -> dict:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    for _ in range(p["warmup"]):  # includes compilation
        step()
    sync()
    warm = time.perf_counter() - t0
    times = []
    for _ in range(p["steps"]):
        t = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    return {"images_per_sec": round(p["batch"] / med, 1), "ms_per_step": round(1000 * med, 3),
            "warmup_seconds": round(warm, 1)}


def check_train(p: dict, device: torch.device) -> dict:
    moe, dense = model_pair(p)
    rows = []
    for compile_ in (False, True):
        for cfg in (moe, dense):
            r = images_per_sec(train_step_fn(cfg, p, device, compile_), p, device)
            rows.append({"model": cfg.name, "compile": compile_, **r})
            if device.type == "cuda":
                torch.cuda.empty_cache()
    ratio = {("compile" if c else "eager"): round(rows[2 * i]["images_per_sec"] / rows[2 * i + 1]["images_per_sec"], 3)
             for i, c in enumerate((False, True))}
    return {"img_size": p["img_size"], "batch": p["batch"], "amp": "bf16" if device.type == "cuda" else "none",
            "compile_backend": p["backend"], "rows": rows, "moe_over_dense": ratio}


# ------------------------------------------------------------------------------ generated data
def write_jpeg_folder(root: Path, classes: int, train_per_class: int, size: tuple[int, int]) -> Path:
    """root/train/c<k>/<i>.jpg and root/val/c<k>/<i>.jpg: smooth class-coloured images + noise."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    for split, n in (("train", train_per_class), ("val", max(2, train_per_class // 4))):
        for c in range(classes):
            d = root / split / f"c{c:03d}"
            d.mkdir(parents=True, exist_ok=True)
            base = np.stack([np.sin(xx * (c + 1) * 3), np.cos(yy * (c + 2) * 2), xx * yy], -1)
            for i in range(n):
                img = 127 + 90 * base + rng.normal(0, 25, (h, w, 3))
                Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(d / f"{i}.jpg", quality=90)
    return root


# ------------------------------------------------------------------------------- 2. DALI loader
def check_dali(p: dict, device: torch.device, folder: Path) -> dict | str:
    """The DALI loader's images/s, or "not installed"."""
    try:
        from mobile_vmoe.data.loader import build_train_loader, dali_available
    except ImportError:
        return "not installed"
    if not dali_available():
        return "not installed"
    from mobile_vmoe.config import TrainConfig
    from mobile_vmoe.data import build_data
    from mobile_vmoe.train.distributed import DistInfo

    bundle = build_data(str(folder), 224 if device.type == "cuda" else 32, augment="deit")
    tcfg = TrainConfig(batch_size=p["batch"], workers=8).with_settings({"loader": "dali"})
    loader = build_train_loader(bundle, tcfg, DistInfo(device=device))
    n, k, t0, first = 0, 0, time.perf_counter(), None
    epoch = 0
    while k <= p["dali_batches"]:  # a few epochs of the small folder (each builds its pipeline)
        for images, _ in loader.epoch(epoch):
            images = loader.to_device(images)
            if k == 0:
                first = time.perf_counter() - t0  # pipeline build + first batch
                t0 = time.perf_counter()
            else:
                n += images.shape[0]
            k += 1
            if k > p["dali_batches"]:
                break
        epoch += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    return {"images_per_sec": round(n / max(secs, 1e-9), 1), "images": n, "first_batch_seconds": round(first or 0, 2),
            "batch": p["batch"], "jpeg_size": list(p["jpeg_size"])}


# ------------------------------------------------------------------------------------ 3. DDP
def check_ddp(p: dict, device: torch.device, folder: Path, out: Path) -> dict:
    """torchrun through dense twin -> superclasses -> MoE on ``folder``; the MoE summary's figures."""
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    nproc = max(2, gpus)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    backend = "nccl" if gpus >= 2 else "gloo"
    if gpus == 1:
        env["MVMOE_DIST_BACKEND"] = "gloo"  # two ranks on one GPU
    if device.type != "cuda":
        env["CUDA_VISIBLE_DEVICES"] = ""
    mvmoe = str(Path(sys.executable).parent / "mvmoe")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "--no-python", mvmoe, "train", "--model", "vmoe-6x64-p32", "--data", str(folder),
           "--epochs", str(p["ddp_epochs"]), "--out", str(out), "-q", "--set", f"img_size={p['ddp_img']}",
           "--set", "num_experts=2", "--set", f"batch_size={4 * nproc}", "--set", "workers=1",
           "--set", "dist_timeout_min=5"]
    if p is DRY:
        cmd += ["--set", "depth=2", "--set", "width=32", "--set", "heads=2", "--set", "moe_blocks=1"]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=420)
    secs = round(time.perf_counter() - t0, 1)
    if res.returncode != 0:
        return {"ok": False, "backend": backend, "processes": nproc, "seconds": secs, "stderr": res.stderr[-2000:]}
    s = json.loads((out / "summary.json").read_text())
    return {"ok": True, "backend": backend, "processes": nproc, "gpus": gpus, "seconds": secs,
            "stages": sorted(x.name for x in out.iterdir() if x.name in ("dense", "superclasses.json", "model.pt")),
            **{k: s.get(k) for k in ("model", "top1", "router_superclass_top1", "world_size", "epochs")}}


# ------------------------------------------------------------------------------------- main
def guarded(fn, *args):
    """Run one part; its error becomes its record so the other parts still run."""
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 - a GPU check reports every failure and goes on
        return {"error": f"{type(e).__name__}: {e}"[:2000]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="the JSON of figures")
    ap.add_argument("--dry", action="store_true", help="CPU, tiny model, gloo, few steps")
    ap.add_argument("--parts", default="train,dali,ddp", help="comma-separated subset of train,dali,ddp")
    args = ap.parse_args()
    p = DRY if args.dry else REAL
    device = torch.device("cpu" if args.dry or not torch.cuda.is_available() else "cuda")
    if not args.dry and device.type != "cuda":
        from mobile_vmoe.errors import MvmoeError

        raise MvmoeError("no CUDA device: run on a GPU machine, or use --dry for the CPU rehearsal")
    if args.dry:
        torch.set_num_threads(1)  # tiny ops: a second thread only waits on a busy machine
    parts = set(args.parts.split(","))
    t0 = time.perf_counter()
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "dry": args.dry,
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "cuda": torch.version.cuda}
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_jpeg_folder(Path(tmp) / "data", p["ddp_classes"], p["ddp_train"], p["jpeg_size"])
        if "train" in parts:
            report["train"] = guarded(check_train, p, device)
        if "dali" in parts:
            report["dali"] = guarded(check_dali, p, device, folder)
        if "ddp" in parts:
            report["ddp"] = guarded(check_ddp, p, device, folder, Path(tmp) / "run")
    report["seconds"] = round(time.perf_counter() - t0, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    from mobile_vmoe.fileio import atomic_write_json

    atomic_write_json(args.out, report)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    from mobile_vmoe.errors import run_script

    run_script(main)
