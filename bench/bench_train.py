"""Training throughput: a Mobile V-MoE preset against its dense twin at equal active MACs, and the
MoE's grouped (rows sorted by expert, F.grouped_mm, no host sync) against its gather dispatch,
measured side by side in one run.

One "step" = forward_with_routing + CE (+ 0.3 x router CE for the MoE) + backward + AdamW step on a
random batch, exactly the work of mobile_vmoe/train/loop.py without data loading. The variants
run interleaved (A B C, A B C, ...) so machine load hits them alike; the median step time of each
gives images/s, and the ratios are what to read (absolute numbers depend on the machine).

    uv run python bench/bench_train.py                              # vmoe-6x64-p32 at 32 px, patch 8, batch 128
    uv run python bench/bench_train.py --model vmoe-12x192-p32 --img-size 224 --patch 32 --batch 64 --device cuda
    uv run python bench/bench_train.py --options --batch 64 --threads 1   # cost of the ViT-22B options and distillation

``--options`` times the MoE (training dispatch: auto) as it is against the same
MoE with qk_norm, with parallel_block, with bias=False, and with soft distillation from a dense
teacher twice as wide (depth 6, width 128, 8 heads: its forward in eval mode without gradients
on the same batch, plus the KL term), each step otherwise the step above.
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F

from mobile_vmoe.models.flops import analytic_macs
from mobile_vmoe.profile.timing import time_interleaved
from mobile_vmoe.models.registry import create_model, dense_twin, get_config
from mobile_vmoe.train.losses import distillation_loss
from mobile_vmoe.train.optim import build_optimizer


def make_step(model, batch: int, device: torch.device, num_classes: int, teacher=None):
    opt = build_optimizer(model, 1e-4, 0.05)
    cfg = model.cfg
    x = torch.randn(batch, 3, cfg.img_size, cfg.img_size, device=device)
    y = torch.randint(0, num_classes, (batch,), device=device)
    sc = torch.randint(0, max(cfg.num_experts, 1), (batch,), device=device)

    def step() -> None:
        out = model.forward_with_routing(x)
        loss = F.cross_entropy(out.logits, y)
        if out.router_logits is not None:
            loss = loss + 0.3 * F.cross_entropy(out.router_logits, sc)
        if teacher is not None:
            with torch.no_grad():
                t_logits = teacher(x)
            loss = 0.5 * loss + 0.5 * distillation_loss(out.logits, t_logits, "soft", 1.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vmoe-6x64-p32")
    ap.add_argument("--img-size", type=int, default=32)
    ap.add_argument("--patch", type=int, default=8)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--experts", type=int, default=10)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--options", action="store_true", help="the ViT-22B options and distillation against the MoE as is")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    moe_cfg = get_config(args.model, img_size=args.img_size, patch_size=args.patch, num_classes=args.classes,
                         num_experts=args.experts)
    if args.options:
        return run_options(args, moe_cfg, device)
    dense_cfg = dense_twin(moe_cfg)
    torch.manual_seed(0)
    variants = {
        f"dense twin ({dense_cfg.name})": create_model(dense_cfg).to(device),
        "MoE, grouped dispatch": create_model(moe_cfg, dispatch="grouped").to(device),
        "MoE, gather dispatch": create_model(moe_cfg, dispatch="gather").to(device),
    }
    steps = {name: make_step(m.train(), args.batch, device, args.classes) for name, m in variants.items()}
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    times = {name: [t / 1e3 for t in ts]  # seconds per step
             for name, ts in time_interleaved(steps, args.repeats, args.warmup, sync=sync).items()}
    print(f"{args.model} at {args.img_size} px, patch {args.patch}, E={args.experts}, k=1, batch {args.batch}, "
          f"{args.device}, {torch.get_num_threads()} threads, median of {args.repeats} interleaved steps")
    print(f"active MACs per image: dense {analytic_macs(dense_cfg) / 1e6:.2f}M, MoE {analytic_macs(moe_cfg) / 1e6:.2f}M")
    base = statistics.median(times[next(iter(times))])
    print(f"{'variant':34s} {'ms/step':>9s} {'images/s':>9s} {'vs dense':>9s}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:34s} {1000 * med:9.1f} {args.batch / med:9.0f} {base / med:8.2f}x")
    g, a = statistics.median(times["MoE, grouped dispatch"]), statistics.median(times["MoE, gather dispatch"])
    print(f"grouped / gather throughput: {a / g:.2f}x")


def run_options(args, cfg, device: torch.device) -> None:
    """Images/s of the MoE with each option (and with a distillation teacher), interleaved."""
    torch.manual_seed(0)
    teacher_cfg = dense_twin(cfg).replace(width=2 * cfg.width, heads=2 * cfg.heads, name="teacher")
    teacher = create_model(teacher_cfg).to(device).eval()
    variants = {"as is": (create_model(cfg), None),
                "qk_norm": (create_model(cfg.replace(qk_norm=True)), None),
                "parallel_block": (create_model(cfg.replace(parallel_block=True)), None),
                "bias=False": (create_model(cfg.replace(bias=False)), None),
                f"soft distillation ({teacher_cfg.depth}x{teacher_cfg.width} teacher)": (create_model(cfg), teacher)}
    steps = {name: make_step(m.to(device).train(), args.batch, device, args.classes, t) for name, (m, t) in variants.items()}
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    times = {n: [t / 1e3 for t in ts] for n, ts in time_interleaved(steps, args.repeats, args.warmup, sync=sync).items()}
    print(f"{cfg.name} at {args.img_size} px, patch {args.patch}, E={args.experts}, batch {args.batch}, {args.device}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats} interleaved steps")
    base = statistics.median(times["as is"])
    print(f"{'variant':34s} {'ms/step':>9s} {'images/s':>9s} {'vs as is':>9s}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:34s} {1000 * med:9.1f} {args.batch / med:9.0f} {base / med:8.2f}x")


if __name__ == "__main__":
    from mobile_vmoe.errors import run_script

    run_script(main)
