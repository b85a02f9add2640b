"""The prepared GPU check: the figures docs/training.md needs, in one JSON, in under 8 minutes on one GPU.

    uv run python bench/gpu_check.py --out gpu_check.json          # on a CUDA machine
    uv run python bench/gpu_check.py --dry --out /tmp/dry.json     # CPU: tiny model, gloo, few steps (tests)

It measures three parts, run in the order train, ddp, dali (each records its error instead of
stopping the rest; the JSON is rewritten atomically after every part, so a timeout or a crash keeps
what finished; ddp runs in subprocesses before the in-process dali part, because DALI's CPU decoder
crashed this machine's test process after a decode error, see docs/data.md):

1. ``train``: training-step images/s (forward_with_routing + CE + 0.3 router CE + backward +
   fused AdamW, bf16 autocast, random batch, no data loading) of vmoe-12x192-p32 and its dense
   twin at 224 px, eager and with torch.compile; the MoE / dense ratio of each.
2. ``dali``: the DALI training loader's images/s (decode + crop + RandAugment + normalise,
   ``build_train_loader`` with loader=dali) over ``dali_batches`` (>= 20) batches of ONE epoch of
   a generated folder of 500x375 JPEGs, after a first batch that is timed apart; it counts the
   pipelines built (1: no rebuilds) and checks the broken files were skipped; ``"not installed"``
   without DALI (``uv sync --extra dali``).
3. ``ddp``: the ImageNet recipe through the trainer (``--recipe imagenet-vmoe-6x64-p32``: repeated
   augmentation, DeiT augmentation, MixUp/CutMix, EMA) with loader=dali, ``workers``, compile=true
   and bf16, on a generated ImageNet-format folder with broken files in train/ and the official
   flat val/ + LOC_val_solution.csv, launched by ``python -m mobile_vmoe.torchrun``: NCCL, one
   process per GPU (one GPU: world size 1, so the trainer makes no process group, and NCCL is
   checked apart by a world-size-1 all_reduce, ``nccl``). The run is preempted: SIGTERM to the
   launcher once the dense stage has logged steps; it must exit 143 with last.pt saved; then
   ``--resume`` finishes dense twin -> superclasses -> MoE.

``--dry`` runs the same code on the CPU with a tiny model, the eager compile backend, 2 steps, 2
gloo processes, the torch loader when DALI is missing, compile off in the trainer (inductor on
this CPU takes minutes) and without the file that fails only when decoded (DALI's CPU mode crashed
on it here), so the tests exercise every path without a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F

REAL = dict(model="vmoe-12x192-p32", img_size=224, batch=256, classes=1000, warmup=5, steps=20, backend="inductor",
            ddp_img=64, ddp_classes=10, ddp_batch=256, jpeg_size=(500, 375), dali_batch=128, dali_batches=24,
            workers=8, trainer_compile=True, amp="bf16", decode_failure=True)
DRY = dict(model="vmoe-2x32-p8", img_size=32, batch=8, classes=10, warmup=1, steps=2, backend="eager",
           ddp_img=16, ddp_classes=4, ddp_batch=8, jpeg_size=(40, 30), dali_batch=8, dali_batches=23,
           workers=1, trainer_compile=False, amp="none", decode_failure=False)


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
def write_imagenet_folder(root: Path, classes: int, train_images: int, size: tuple[int, int],
                          decode_failure: bool = True) -> Path:
    """root/train/n<8 digits>/<i>.JPEG (``train_images`` in all: smooth class-coloured images +
    noise), three broken train files (empty, truncated, noise after a PNG signature), and the
    official flat root/val/ILSVRC2012_val_<8 digits>.JPEG with root/LOC_val_solution.csv."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    wnids = [f"n{c:08d}" for c in range(classes)]
    bases = [127 + 90 * np.stack([np.sin(xx * (c + 1) * 3), np.cos(yy * (c + 2) * 2), xx * yy], -1)
             for c in range(classes)]
    noise = [rng.normal(0, 25, (h, w, 3)) for _ in range(8)]

    def save(path: Path, c: int, i: int) -> None:
        img = bases[c] + np.roll(noise[i % 8], i, axis=1)
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(path, quality=90)

    jobs = []
    for c, wnid in enumerate(wnids):
        (root / "train" / wnid).mkdir(parents=True, exist_ok=True)
        jobs += [(root / "train" / wnid / f"{wnid}_{i}.JPEG", c, i) for i in range(c, train_images, classes)]
    (root / "val").mkdir(parents=True, exist_ok=True)
    rows = ["ImageId,PredictionString"]
    for i in range(max(2 * classes, train_images // 10)):
        name = f"ILSVRC2012_val_{i + 1:08d}"
        jobs.append((root / "val" / f"{name}.JPEG", i % classes, i))
        rows.append(f"{name},{wnids[i % classes]} 0 0 {w - 1} {h - 1}")
    with ThreadPoolExecutor(8) as pool:  # PIL encodes without the GIL
        list(pool.map(lambda job: save(*job), jobs))
    (root / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    buf = io.BytesIO()
    Image.fromarray(bases[0].clip(0, 255).astype(np.uint8)).save(buf, "JPEG")
    jpeg = buf.getvalue()
    broken = {"z_empty.JPEG": b"", "z_truncated.JPEG": jpeg[: len(jpeg) // 2],
              "z_noise.png": b"\x89PNG\r\n\x1a\n" + rng.bytes(2000)}  # the last passes the index check, fails to decode
    for k, (name, data) in enumerate(broken.items()):
        if decode_failure or name != "z_noise.png":
            (root / "train" / wnids[k % classes] / name).write_bytes(data)
    return root


# ------------------------------------------------------------------------------- 2. DALI loader
def check_dali(p: dict, device: torch.device, folder: Path) -> dict | str:
    """The DALI loader's images/s over ``dali_batches`` batches of one epoch, or "not installed"."""
    from mobile_vmoe.data.loader import build_train_loader, dali_available, skipped_files

    if not dali_available():
        return "not installed"
    import mobile_vmoe.data.dali as dali
    from mobile_vmoe.config import TrainConfig
    from mobile_vmoe.data import build_data
    from mobile_vmoe.train.distributed import DistInfo

    bundle = build_data(str(folder), 224 if device.type == "cuda" else 32, augment="deit")
    tcfg = TrainConfig(batch_size=p["dali_batch"], workers=p["workers"]).with_settings({"loader": "dali"})
    loader = build_train_loader(bundle, tcfg, DistInfo(device=device))
    if loader.steps_per_epoch < p["dali_batches"] + 1:
        raise RuntimeError(f"{loader.steps_per_epoch} batches per epoch: too few for {p['dali_batches']} + 1")
    builds, build = [0], dali.dali_pipeline

    def counted(*args, **kwargs):
        builds[0] += 1
        return build(*args, **kwargs)

    dali.dali_pipeline = counted
    try:
        n, t0, first = 0, time.perf_counter(), None
        for k, (images, _) in enumerate(loader.epoch(0)):
            images = loader.to_device(images)
            if k == 0:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                first = time.perf_counter() - t0  # pipeline build + first batch
                t0 = time.perf_counter()
            else:
                n += images.shape[0]
            if k == p["dali_batches"]:
                break
        if device.type == "cuda":
            torch.cuda.synchronize()
        secs = time.perf_counter() - t0
    finally:
        dali.dali_pipeline = build
    return {"images_per_sec": round(n / max(secs, 1e-9), 1), "images": n, "batches": p["dali_batches"],
            "first_batch_seconds": round(first or 0, 2), "pipelines_built": builds[0], "batch": p["dali_batch"],
            "jpeg_size": list(p["jpeg_size"]), "skipped_files": skipped_files(bundle)["train"]}


# ------------------------------------------------------------------------------------ 3. DDP
def nccl_world_of_one(device: torch.device) -> dict:
    """NCCL itself on one GPU: a world-size-1 process group, one all_reduce and a barrier."""
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("MVMOE_NCCL_PORT", "29533"))
    dist.init_process_group("nccl", rank=0, world_size=1, device_id=device)
    try:
        t = torch.arange(4.0, device=device)
        dist.all_reduce(t)
        dist.barrier()
        return {"ok": t.tolist() == [0.0, 1.0, 2.0, 3.0], "backend": dist.get_backend(), "world_size": 1}
    finally:
        dist.destroy_process_group()


def trainer_cmd(p: dict, nproc: int, out: Path, folder: Path | None, loader: str) -> list[str]:
    mvmoe = str(Path(sys.executable).parent / "mvmoe")
    cmd = [sys.executable, "-m", "mobile_vmoe.torchrun", "--standalone", "--nproc_per_node", str(nproc),
           "--shutdown_timeout", "120", "--no-python", mvmoe, "train", "--out", str(out), "-q"]
    if folder is None:
        return cmd + ["--resume"]
    s = {"img_size": p["ddp_img"], "batch_size": p["ddp_batch"], "epochs": 2, "dense_epochs": 2, "num_experts": 2,
         "workers": p["workers"], "loader": loader, "compile": str(p["trainer_compile"]).lower(), "amp": p["amp"],
         "log_every": 1, "warmup_epochs": 0.5, "eval_every": 1, "dist_timeout_min": 5,
         "min_lr": 1e-6}  # below the effective lr of the dry run's global batch of 8 (7.8e-6)
    if p is DRY:
        s.update(depth=2, width=32, heads=2, moe_blocks=1)
    cmd += ["--recipe", "imagenet-vmoe-6x64-p32", "--data", str(folder)]
    return cmd + [a for k, v in s.items() for a in ("--set", f"{k}={v}")]


def wait_for_steps(proc: subprocess.Popen, metrics: Path, steps: int, timeout: float) -> bool:
    """True once ``metrics`` (a metrics.jsonl) holds ``steps`` step rows while ``proc`` runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and sum('"kind": "step"' in line for line in metrics.read_text().splitlines()) >= steps:
            return True
        time.sleep(0.05)
    return False


def check_ddp(p: dict, device: torch.device, folder: Path, out: Path) -> dict:
    """The recipe through torchrun and the trainer, SIGTERM mid-run, --resume to the end."""
    from mobile_vmoe.checkpoint import load_checkpoint
    from mobile_vmoe.data.loader import dali_available

    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    nproc = gpus if gpus else 2
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if device.type != "cuda":
        env["CUDA_VISIBLE_DEVICES"] = ""
    loader = "dali" if dali_available() else "torch"
    rec: dict = {"backend": "nccl" if gpus else "gloo", "processes": nproc, "gpus": gpus, "loader": loader,
                 "compile": p["trainer_compile"], "amp": p["amp"]}
    if gpus == 1:
        rec["note"] = ("one GPU: the trainer ran as one process (world size 1, no process group); "
                       "NCCL was checked apart with a world-size-1 all_reduce")
        rec["nccl"] = nccl_world_of_one(device)
    t0 = time.perf_counter()
    proc = subprocess.Popen(trainer_cmd(p, nproc, out, folder, loader), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    reached = wait_for_steps(proc, out / "dense" / "metrics.jsonl", 3, 300)
    if reached:
        proc.send_signal(signal.SIGTERM)  # to the launcher (torchrun's agent), which forwards it
    _, err = proc.communicate(timeout=300)
    saved = load_checkpoint(out / "dense" / "last.pt") if (out / "dense" / "last.pt").exists() else {}
    rec["preempt"] = {"signal_sent": reached, "exit": proc.returncode, "seconds": round(time.perf_counter() - t0, 1),
                      "saved_at": {k: saved.get(k) for k in ("epoch", "epoch_step", "step")},
                      "mid_epoch": bool(saved.get("epoch_step")),
                      "skipped_files": (saved.get("skipped_files") or {}).get("train"),
                      "errors": [line for line in err.splitlines() if line.startswith("error:")][:5]}
    t1 = time.perf_counter()
    res = subprocess.run(trainer_cmd(p, nproc, out, None, loader), env=env, capture_output=True, text=True,
                         timeout=420)
    rec["resume"] = {"exit": res.returncode, "seconds": round(time.perf_counter() - t1, 1)}
    if res.returncode != 0:
        return {**rec, "ok": False, "stderr": res.stderr[-2000:]}
    s = json.loads((out / "summary.json").read_text())
    ok = reached and proc.returncode == 143 and rec["preempt"]["saved_at"]["step"] is not None
    return {**rec, "ok": ok, "stages": sorted(x.name for x in out.iterdir() if x.name in ("dense", "superclasses.json",
                                                                                          "model.pt")),
            **{k: s.get(k) for k in ("model", "top1", "router_superclass_top1", "world_size", "epochs",
                                     "skipped_images", "val_images")}}


# ------------------------------------------------------------------------------------- main
def guarded(fn, *args):
    """Run one part; its error becomes its record so the other parts still run."""
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 - a GPU check reports every failure and goes on
        return {"error": f"{type(e).__name__}: {e}"[:2000]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="the JSON of figures (rewritten after every part)")
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
    from mobile_vmoe.fileio import atomic_write_json

    parts = set(args.parts.split(","))
    t0 = time.perf_counter()
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "dry": args.dry,
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "cuda": torch.version.cuda, "done": []}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)

    def record(name: str, value) -> None:
        report[name] = value
        report["done"].append(name)
        report["seconds"] = round(time.perf_counter() - t0, 1)
        atomic_write_json(args.out, report)  # a timeout keeps every finished part
        print(json.dumps({name: value})[:2000], flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        if "train" in parts:
            record("train", guarded(check_train, p, device))
        if parts & {"dali", "ddp"}:
            images = (p["dali_batches"] + 2) * p["dali_batch"]
            folder = write_imagenet_folder(Path(tmp) / "imagenet", p["ddp_classes"], images, p["jpeg_size"],
                                           p["decode_failure"])
        if "ddp" in parts:  # before dali: its subprocesses survive a DALI crash, the in-process part would not
            record("ddp", guarded(check_ddp, p, device, folder, Path(tmp) / "run"))
        if "dali" in parts:
            record("dali", guarded(check_dali, p, device, folder))
    record("finished", True)


if __name__ == "__main__":
    from mobile_vmoe.errors import run_script

    run_script(main)
