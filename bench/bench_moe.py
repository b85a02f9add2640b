"""Eager CPU cost of the MoE layer: inference latency and training throughput, as ratios.

    uv run python bench/bench_moe.py [--model vmoe-12x192-p32] [--runs 50] [--threads 2]

Inference (batch 1): MoE with gather dispatch (k=1) vs its dense twin (equal active MACs) vs the
all-experts ("dense") dispatch fallback. Training (forward + backward, batch --train-batch):
gather vs grouped vs dense dispatch vs the dense twin. Per-token routing's slot filling (one
routing group of --train-batch images): the scatter training uses vs the compare-and-sum the
exporters need. The variants are timed interleaved, round by round, so machine noise hits all of
them alike; medians and ratios are printed.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from mobile_vmoe.config import expert_capacity
from mobile_vmoe.models.dispatch import slot_tokens
from mobile_vmoe.models.registry import create_model, dense_twin, get_config
from mobile_vmoe.profile.timing import time_interleaved


def interleaved(fns: dict, runs: int, warmup: int = 3) -> dict[str, float]:
    """Median ms per call of each function, timed interleaved."""
    return {k: statistics.median(v) for k, v in time_interleaved(fns, runs, warmup).items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vmoe-12x192-p32")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--train-runs", type=int, default=8)
    ap.add_argument("--train-batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    cfg = get_config(args.model)
    moe = create_model(cfg).eval()
    dense = create_model(dense_twin(cfg)).eval()
    fallback = create_model(cfg).eval()
    fallback.load_state_dict(moe.state_dict())
    moe.set_dispatch("gather")
    fallback.set_dispatch("dense")
    x = torch.randn(1, 3, cfg.img_size, cfg.img_size)

    print(f"# {cfg.name}: E={cfg.num_experts} k={cfg.top_k}, {args.threads} threads, torch {torch.__version__}")
    with torch.inference_mode():
        ms = interleaved({"dense twin": lambda: dense(x), "moe gather": lambda: moe(x),
                          "moe all-experts": lambda: fallback(x)}, args.runs)
    print(f"\ninference, batch 1, median of {args.runs} (ms)")
    for k, v in ms.items():
        print(f"  {k:16s} {v:8.2f} ms   {v / ms['dense twin']:.2f}x dense twin")

    xb = torch.randn(args.train_batch, 3, cfg.img_size, cfg.img_size)
    train_models = {"dense twin": create_model(dense_twin(cfg)).train()}
    for mode in ("gather", "grouped", "dense"):
        m = create_model(cfg).train().set_dispatch(mode)
        train_models[f"moe {mode}"] = m

    def step(m):
        def run():
            m.zero_grad(set_to_none=True)
            m.forward_with_routing(xb).logits.sum().backward()
        return run

    ms = interleaved({k: step(m) for k, m in train_models.items()}, args.train_runs, warmup=1)
    print(f"\ntraining step (forward + backward), batch {args.train_batch}, median of {args.train_runs}")
    for k, v in ms.items():
        print(f"  {k:16s} {v:8.1f} ms  {args.train_batch / v * 1e3:7.1f} img/s   {v / ms['dense twin']:.2f}x dense twin")
    token_slots(cfg, args.train_batch, args.train_runs)


def token_slots(cfg, images: int, runs: int) -> None:
    """Which token fills each expert slot, for one routing group of ``images`` images (k = 1,
    capacity ratio 1.05): scatter (training) vs compare-and-sum (export), time and mask size."""
    T = images * cfg.num_tokens  # tokens in the group
    E, C = cfg.num_experts, expert_capacity(T, 1, cfg.num_experts, 1.05)
    g = torch.Generator().manual_seed(0)
    slot = torch.full((1, T), E * C)  # dropped unless given a slot below
    kept = torch.randperm(T, generator=g)[: min(T, E * C)]
    slot[0, kept] = torch.randperm(E * C, generator=g)[: len(kept)]
    with torch.inference_mode():
        ms = interleaved({"scatter": lambda: slot_tokens(slot, T, 1, E * C),
                          "compare": lambda: slot_tokens(slot, T, 1, E * C, compare=True)}, runs, warmup=1)
    mask_mb = T * E * C * (1 + 8) / 2**20  # the bool mask and its int64 copy
    print(f"\nper-token slot filling, one group of {images} images ({T} tokens, {E}x{C} slots), median of {runs}")
    for k, v in ms.items():
        print(f"  {k:16s} {v:8.2f} ms   {v / ms['scatter']:.1f}x scatter")
    print(f"  compare builds a ({T}, {E * C}) mask: {mask_mb:.0f} MiB per group per MoE block")


if __name__ == "__main__":
    from mobile_vmoe.errors import run_script

    run_script(main)
