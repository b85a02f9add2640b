"""Routing study: accuracy against active MACs for dense, Mobile V-MoE and its ablations, over seeds.

    uv run python bench/routing_study.py --data shapes --sizes 6x32 6x48 6x64 --seeds 3 --epochs 30 \
        --jobs 2 --out runs/study-shapes              # the full study (see docs/results.md for its time)
    uv run python bench/routing_study.py --quick --out runs/study-quick    # 1 seed, 2 sizes, 10 epochs: 8 min
    uv run python bench/routing_study.py --summarize --out runs/study-shapes

Arms at each size DxW (depth x width, heads W/16, patch = image/4, E experts, k=1, the last 2 MLPs
MoE; every arm of one size runs the same active MACs per image up to the tiny router):
    dense     the dense twin, trained on the full training split for the same epochs
    moe-sc    Mobile V-MoE, the paper's recipe: a dense stage on the training split less a 10 %
              holdout, superclasses from its confusions on that holdout (balanced, one per expert),
              then the MoE with loss CE + 0.3 x router CE
    moe-e2e   per-image MoE, router trained end to end (+ importance/Switch balancing loss)
    token     per-token V-MoE (k=1, capacity 1.05 over a group of the whole batch, BPR, aux loss)
    peer      torchvision mobilenet_v3_small, the same data, loop, schedule and epochs (once per seed)
E = 10 on shapes (10 superclasses), 5 on digits, 4 on synthetic.

Runs go to OUT/<data>/seed<k>/<size>/<arm> (peer: OUT/<data>/seed<k>/peer); OUT/results.json is
rewritten atomically after each run, so a stopped study resumes where it stopped. ``--jobs N`` runs
N one-thread processes side by side. At the end, seed 0's models of the largest size and the peer
are exported to ExecuTorch XNNPACK and timed interleaved (batch 1, one thread) into
OUT/latency.json. The markdown tables (mean +- sample std over seeds) print at the end and with
``--summarize``; ``mvmoe report OUT/<data>/seed*/*/* ...`` draws the plot.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from mobile_vmoe.errors import MvmoeError

ARMS = ("dense", "moe-sc", "moe-e2e", "token")
EXPERTS = {"digits": 5, "synthetic": 4, "shapes": 10}
KEYS = ("model", "top1", "top5", "router_superclass_top1", "macs", "active_params", "params", "train_seconds",
        "expert_counts", "expert_entropy", "expert_entropy_max", "token_drop_fraction", "superclass_ari",
        "superclass_sizes")
# Fixed before any run was made: batch 64 (a 6,000-image split gives 93 steps per epoch), one
# warmup epoch, one thread per process, peak lr 3e-3 (0.024 per 512 images); everything else is
# TrainConfig's default.
STUDY_SETTINGS = {"batch_size": 64, "lr": 0.024, "warmup_epochs": 1.0, "threads": 1}
QUICK = dict(data=["shapes"], sizes=["6x32", "6x64"], seeds=1, epochs=10)


def size_settings(size: str) -> dict:
    """"6x48" -> depth 6, width 48, heads 3 (head dim 16)."""
    try:
        depth, width = (int(v) for v in size.split("x"))
    except ValueError:
        raise MvmoeError(f"--sizes {size!r}: expected DEPTHxWIDTH, e.g. 6x64") from None
    if width % 16:
        raise MvmoeError(f"--sizes {size!r}: width must be a multiple of 16 (heads of dimension 16)")
    return {"depth": depth, "width": width, "heads": width // 16}


def run_arm(arm: str, data: str, size: str, seed: int, epochs: int, out: Path, extra: dict) -> dict:
    """Train one arm (in a worker process); returns its summary."""
    import torch

    from mobile_vmoe.train import resolve, train

    torch.set_num_threads(1)
    base = "vit-6x64-p32" if arm == "dense" else "vmoe-6x64-p32"
    settings = {**size_settings(size), **STUDY_SETTINGS, **extra}
    if arm != "dense":
        settings["num_experts"] = EXPERTS.get(data.split(":")[0], 5)
    if arm == "token":
        settings["routing"] = "token"
    tcfg, bundle = resolve(base, data, settings, epochs=epochs, seed=seed)
    return train(tcfg, bundle, out, superclasses="auto" if arm == "moe-sc" else "none", quiet=True)


class PeerForward:
    """A torchvision classifier as the training loop's module: images -> (logits, None, None)."""

    def __init__(self, model):
        self.model = model

    def __call__(self, x):
        return self.model(x), None, None

    def train(self):
        self.model.train()


def train_peer(data: str, seed: int, epochs: int, out: Path, extra: dict) -> dict:
    """mobilenet_v3_small through the library's training loop (train_one_epoch), same settings."""
    import torch
    import torchvision

    from mobile_vmoe.fileio import atomic_write_json
    from mobile_vmoe.profile.flops import flop_counter
    from mobile_vmoe.train import TrainState, resolve, train_one_epoch
    from mobile_vmoe.train.ema import build_ema
    from mobile_vmoe.train.loop import Stage
    from mobile_vmoe.train.metrics import Progress
    from mobile_vmoe.train.optim import build_optimizer, build_scheduler
    from mobile_vmoe.train.state import seed_everything

    torch.set_num_threads(1)
    tcfg, bundle = resolve("vit-6x64-p32", data, {**STUDY_SETTINGS, **extra}, epochs=epochs, seed=seed)
    stage = Stage(tcfg, bundle, out, name="peer", quiet=True)
    seed_everything(seed)
    model = torchvision.models.mobilenet_v3_small(num_classes=bundle.num_classes)
    opt = build_optimizer(model, tcfg.effective_lr, tcfg.weight_decay, (tcfg.betas1, tcfg.betas2))
    sched = build_scheduler(opt, stage.steps_per_epoch * epochs, round(tcfg.warmup_epochs * stage.steps_per_epoch),
                            tcfg.min_lr / tcfg.effective_lr)
    state = TrainState(model, opt, sched, build_ema(model, tcfg.ema_decay))
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    for _ in range(epochs):
        train_one_epoch(stage, state, PeerForward(model), lambda: False, Progress(0, 0, "", enabled=False))
        state.epoch, state.epoch_step = state.epoch + 1, 0
    net = state.eval_model.eval()
    correct1 = correct5 = n = 0
    with torch.no_grad():
        for x, y in stage.val_loader():
            top = net(x).topk(5, dim=-1).indices
            correct1 += int((top[:, 0] == y).sum())
            correct5 += int((top == y[:, None]).any(-1).sum())
            n += len(y)
        with flop_counter() as fc:
            net(torch.zeros(1, 3, bundle.img_size, bundle.img_size))
    params = sum(p.numel() for p in net.parameters())
    summary = {"model": "mobilenet_v3_small", "dataset": bundle.name, "arm": "peer", "routing": "none",
               "top1": 100 * correct1 / n, "top5": 100 * correct5 / n, "macs": fc.get_total_flops() // 2,
               "params": params, "active_params": params, "epochs": epochs, "seed": seed,
               "train_seconds": round(time.time() - t0, 2), "checkpoint": str(out / "model.pt")}
    torch.save(net.state_dict(), out / "model.pt")
    atomic_write_json(out / "summary.json", summary)
    return summary


def task_list(a) -> list[tuple]:
    """(data, seed, size, arm) in the order to run: seeds outermost, so a stopped study has whole seeds."""
    tasks = []
    for seed in range(a.seeds):
        for data in a.data:
            tasks.append((data, seed, "-", "peer"))
            for size in a.sizes:
                tasks += [(data, seed, size, arm) for arm in ARMS]
    return tasks


def run_task(task: tuple, epochs: int, out: Path, extra: dict) -> dict:
    data, seed, size, arm = task
    where = out / data.replace(":", "-") / f"seed{seed}"
    t0 = time.time()
    if arm == "peer":
        s = train_peer(data, seed, epochs, where / "peer", extra)
    else:
        s = run_arm(arm, data, size, seed, epochs, where / size / arm, extra)
    return {"data": data, "seed": seed, "size": size, "arm": arm, "epochs": epochs, **{k: s.get(k) for k in KEYS},
            "wall_seconds": round(time.time() - t0, 1), "dir": str(where / (arm if arm == "peer" else f"{size}/{arm}"))}


def ms(vals) -> str:
    vals = [v for v in vals if v is not None]
    if not vals:
        return "-"
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.mean(vals):.1f} ± {sd:.1f}"


def summarize(results: list[dict]) -> str:
    """Markdown: per data, size and arm, mean +- sample std over seeds; MoE minus dense per size."""
    lines = ["| data | size | arm | n | top-1 (%) | top-5 (%) | router superclass top-1 (%) | expert entropy / max | "
             "active MACs | active / total params |", "|---|---|---|---|---|---|---|---|---|---|"]
    for data in dict.fromkeys(r["data"] for r in results):
        for size in dict.fromkeys(r["size"] for r in results if r["data"] == data):
            for arm in (*ARMS, "peer"):
                rs = [r for r in results if (r["data"], r["size"], r["arm"]) == (data, size, arm)]
                if not rs:
                    continue
                ent = [r["expert_entropy"] / r["expert_entropy_max"] for r in rs if r.get("expert_entropy") is not None]
                lines.append(f"| {data} | {size} | {arm} | {len(rs)} | {ms([r['top1'] for r in rs])} | "
                             f"{ms([r['top5'] for r in rs])} | {ms([r.get('router_superclass_top1') for r in rs])} | "
                             f"{f'{statistics.mean(ent):.2f}' if ent else '-'} | {rs[0]['macs'] / 1e6:.2f}M | "
                             f"{rs[0]['active_params'] / 1e3:.0f}K / {rs[0]['params'] / 1e3:.0f}K |")
    return "\n".join(lines) + "\n\n" + gaps(results)


def gaps(results: list[dict]) -> str:
    """Top-1 of each MoE arm minus dense, paired by seed, mean +- std over seeds, and whether the
    gap exceeds twice the larger of the two arms' seed std (the goal's criterion)."""
    lines = ["| data | size | arm - dense | n | gap (points) | > 2 x seed std? |", "|---|---|---|---|---|---|"]
    for data in dict.fromkeys(r["data"] for r in results):
        for size in dict.fromkeys(r["size"] for r in results if r["data"] == data and r["arm"] != "peer"):
            by = {(r["arm"], r["seed"]): r["top1"] for r in results if (r["data"], r["size"]) == (data, size)}
            for arm in ARMS[1:]:
                seeds = [s for (a, s) in by if a == arm and ("dense", s) in by]
                if not seeds:
                    continue
                d = [by[(arm, s)] - by[("dense", s)] for s in seeds]
                sd = max((statistics.stdev([by[(x, s)] for s in seeds]) if len(seeds) > 1 else 0.0) for x in (arm, "dense"))
                lines.append(f"| {data} | {size} | {arm} | {len(d)} | {ms(d)} | "
                             f"{'yes' if len(d) > 1 and statistics.mean(d) > 2 * sd else 'no'} |")
    return "\n".join(lines)


def per_superclass(results: list[dict], size: str) -> str:
    """Markdown: top-1 per planted superclass of every arm at ``size``, mean over seeds (shapes-style
    data whose class c belongs to superclass c % S)."""
    import torch

    from mobile_vmoe.checkpoint import model_from_checkpoint
    from mobile_vmoe.data import build_data

    torch.set_num_threads(1)
    rs = [r for r in results if r["size"] == size]
    if not rs:
        raise MvmoeError(f"--per-superclass {size}: no runs of that size in the results")
    data = build_data(rs[0]["data"], augment="none")
    S = max(data.planted_superclasses) + 1
    x, y = data.val.transform(data.val.images), data.val.labels  # (N, 3, H, W) normalised, (N,)
    names = [n.split(".")[0] for n in data.class_names[:S]]
    lines = ["| arm | " + " | ".join(names) + " |", "|---|" + "---|" * S]
    for arm in ARMS:
        accs = []
        for r in (r for r in rs if r["arm"] == arm):
            model, _ = model_from_checkpoint(Path(r["dir"]) / "model.pt")
            with torch.no_grad():
                pred = torch.cat([model(x[i:i + 500]).argmax(-1) for i in range(0, len(x), 500)])
            accs.append([100 * float((pred[y % S == s] == y[y % S == s]).float().mean()) for s in range(S)])
        if accs:
            lines.append(f"| {arm} | " + " | ".join(f"{statistics.mean(v):.1f}" for v in zip(*accs)) + " |")
    return "\n".join(lines)


def measure_latency(results: list[dict], out: Path) -> dict:
    """Seed 0's models of the largest size and the peer, ExecuTorch XNNPACK fp32, one thread,
    timed interleaved: {run dir: median ms}."""
    import torch

    from mobile_vmoe.converters.executorch import convert, load_runner
    from mobile_vmoe.converters.pipeline import export_checkpoint
    from mobile_vmoe.converters.prepare import export_static
    from mobile_vmoe.profile.timing import time_interleaved

    torch.set_num_threads(1)
    seed0 = [r for r in results if r["seed"] == 0]
    largest = max((r for r in seed0 if r["arm"] != "peer"), key=lambda r: r["macs"])["size"]
    runners = {}
    for r in seed0:
        if r["arm"] == "peer":
            import torchvision

            state = torch.load(Path(r["dir"]) / "model.pt", weights_only=True)
            net = torchvision.models.mobilenet_v3_small(num_classes=state["classifier.3.weight"].shape[0]).eval()
            net.load_state_dict(state)
            x = torch.zeros(1, 3, 32, 32)
            path = out / "latency" / "mobilenet_v3_small_executorch-xnnpack_fp32.pte"
            path.parent.mkdir(parents=True, exist_ok=True)
            convert(net, export_static(net, x), x, path, precision="fp32")
        elif r["size"] == largest:
            res = export_checkpoint(Path(r["dir"]) / "model.pt", "executorch", "xnnpack", "fp32",
                                    out / "latency" / r["arm"], parity_images=16, force=True)
            if not res[0].ok:
                raise MvmoeError(f"export of {r['dir']} failed: {res[0].error}")
            path = res[0].artifact
        else:
            continue
        runners[r["dir"]], _ = load_runner(path, threads=1)
    x = torch.zeros(1, 3, 32, 32).numpy()  # runners take numpy arrays
    times = time_interleaved({k: (lambda run=run: run(x)) for k, run in runners.items()}, rounds=200, warmup=20)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", nargs="+", default=["shapes"])
    ap.add_argument("--sizes", nargs="+", default=["6x32", "6x48", "6x64"], help="DEPTHxWIDTH of each model size")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--jobs", type=int, default=2, help="one-thread training processes side by side")
    ap.add_argument("--quick", action="store_true", help="1 seed, sizes 6x32 6x64, 10 epochs: a check that the study runs (8 min)")
    ap.add_argument("--no-latency", action="store_true", help="skip the ExecuTorch latency of seed 0's models")
    ap.add_argument("--out", type=Path, nargs="+", default=[Path("runs/study")],
                    help="output dir (several only with --summarize: their results are merged)")
    ap.add_argument("--set", nargs="*", default=[], help="extra KEY=VALUE ModelConfig/TrainConfig settings for every arm, e.g. lr=1e-3")
    ap.add_argument("--summarize", action="store_true", help="only print the tables from OUT/results.json")
    ap.add_argument("--per-superclass", metavar="SIZE", help="with --summarize: top-1 per planted superclass at SIZE")
    a = ap.parse_args(argv)
    if a.quick:
        for k, v in QUICK.items():
            setattr(a, k, v)
    if a.summarize:
        merged = [r for d in a.out if (d / "results.json").exists() for r in json.loads((d / "results.json").read_text())]
        print(summarize(merged))
        if a.per_superclass:
            print("\n" + per_superclass(merged, a.per_superclass))
        return 0
    if len(a.out) != 1:
        ap.error("give one --out DIR to train into")
    return run_study(a, a.out[0])


def run_study(a, out: Path) -> int:
    from mobile_vmoe.config import parse_overrides
    from mobile_vmoe.fileio import atomic_write_json

    for size in a.sizes:
        size_settings(size)  # fail before training
    extra = parse_overrides(a.set)
    res_path = out / "results.json"
    results = json.loads(res_path.read_text()) if res_path.exists() else []
    done = {(r["data"], r["seed"], r["size"], r["arm"]) for r in results}
    todo = [t for t in task_list(a) if t not in done]
    t0 = time.time()
    with ProcessPoolExecutor(max_workers=max(1, a.jobs)) as pool:
        futures = [pool.submit(run_task, t, a.epochs, out, extra) for t in todo]
        for f in as_completed(futures):
            row = f.result()
            results.append(row)
            atomic_write_json(res_path, results)
            print(json.dumps({k: row[k] for k in ("data", "seed", "size", "arm", "top1", "wall_seconds")}), flush=True)
    print(f"trained {len(todo)} runs in {(time.time() - t0) / 60:.1f} min")
    if not a.no_latency and results:
        lat = measure_latency(results, out)
        atomic_write_json(out / "latency.json", lat)
        for k, v in lat.items():
            print(f"latency {k}: {v:.3f} ms")
    print(summarize(results))
    return 0


if __name__ == "__main__":
    from mobile_vmoe.errors import run_script

    run_script(main)
