"""Latency of exported models: per-image MoE (gather, k=1) vs its dense twin (equal active MACs)
vs the all-experts fallback (dense dispatch), on ExecuTorch XNNPACK, LiteRT and onnxruntime, and
each runtime against eager PyTorch on the same CPU.

Everything is measured in one run, interleaved: each round times every (model, runtime) pair once
in turn, so load from other processes hits all of them alike; the report is the median over
rounds and ratios of medians. Random weights (latency does not depend on training).

    uv run python bench/bench_export.py --model vmoe-12x192-p32 --rounds 15 --threads 2

``xnnpack`` lowers the model as written (native LayerNorm, on the portable kernel);
``--runtimes eager,xnnpack,xnnpack-ln-decomposed`` adds the LayerNorm rewrite of
`mvmoe export --layer-norm decomposed` (converters.layernorm.decompose_layernorm), side by side.
``xnnpack-int8`` and ``litert-int8`` are the int8 exports (pt2e static int8 for XNNPACK; LiteRT
static int8, or dynamic-range where LiteRT cannot allocate static, as `mvmoe export` does),
calibrated on random images here (latency does not depend on the calibration). ``--split`` adds
the MoE as split expert programs (`--experts split`: trunk + the chosen tail, every tail loaded)
on xnnpack and litert, fp32 and int8.

    uv run python bench/bench_export.py --runtimes xnnpack,xnnpack-int8,litert,litert-int8 --split --threads 1

``--workdir DIR`` keeps the converted artifacts and reuses them on the next run of the same
``--model``/``--set`` (more rounds without converting again).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from converters import targets as T
from converters.target_modules import module_of
from converters.layernorm import decompose_layernorm
from converters.static_export import export_static
from converters.wrapper import prepare_for_export
from mobile_vmoe import create_model, dense_twin
from mobile_vmoe.models.flops import profile_flops
from mobile_vmoe.profile.timing import time_interleaved


# --runtimes name -> the export target and backend that make its artifact
RUNTIMES = {"xnnpack": ("executorch", "xnnpack"), "litert": ("tflite", None), "onnxruntime": ("onnx", None),
            "xnnpack-ln-decomposed": ("executorch", "xnnpack"), "xnnpack-int8": ("executorch", "xnnpack"),
            "litert-int8": ("tflite", None)}


def build(variants: dict, runtimes: list[str], workdir: Path, threads: int, fused: bool) -> dict:
    """-> {(variant, runtime): run(x ndarray)} plus the XNNPACK delegation audits. An artifact
    already in ``workdir`` (``--workdir``, same model and options) is loaded, not converted again."""
    runs, audits = {}, {}
    for vname, (model, dispatch) in variants.items():
        w = prepare_for_export(model, dispatch="gather" if dispatch == "split" else dispatch, fused_attention=fused)
        x = torch.randn(1, 3, model.cfg.img_size, model.cfg.img_size)
        ep = export_static(w, x)
        eager = w

        def run_eager(a, m=eager):
            with torch.inference_mode():
                return m(torch.from_numpy(a))

        if "eager" in runtimes:
            runs[(vname, "eager")] = run_eager
        for rt, (target, backend) in RUNTIMES.items():
            mod, kw = module_of(target), ({"backend": backend} if backend else {})
            if rt not in runtimes or (dispatch == "split" and rt not in ("xnnpack", "litert", "xnnpack-int8", "litert-int8")):
                continue
            if rt.endswith("-int8") and dispatch == "dense":
                continue  # the all-experts fallback's one-hot gate does not take int8 on LiteRT; not timed in int8
            path = workdir / f"{model.cfg.name}-{vname}_{rt}{T.find(target, backend).suffix}"
            t0 = time.perf_counter()
            if dispatch == "split":
                runs[(vname, rt)] = build_split(model, w, x, rt, workdir / f"{model.cfg.name}-{vname}_{rt}", threads, audits)
                print(f"  {vname} for {rt} ready in {time.perf_counter() - t0:.0f} s", flush=True)
                continue
            if path.exists():
                print(f"  reusing {path.name}", flush=True)
            elif rt.endswith("-int8"):
                audits[f"{vname} int8 ({rt})"] = mod.convert(w, ep, x, path, precision="int8",
                                                             calibration=random_calibration(model), **kw)
            elif rt == "xnnpack-ln-decomposed":
                w_ln = decompose_layernorm(copy.deepcopy(w))
                ops = mod.convert(w_ln, export_static(w_ln, x), x, path, precision="fp32", **kw)
                audits[f"{vname} (LayerNorm decomposed)"] = ops
            else:
                ops = mod.convert(w, ep, x, path, precision="fp32", **kw)
                if rt == "xnnpack":
                    audits[vname] = ops
            print(f"  {vname} for {rt} ready in {time.perf_counter() - t0:.0f} s", flush=True)
            runs[(vname, rt)], _ = mod.load_runner(path, threads=threads)
    return runs, audits


def random_calibration(model) -> torch.Tensor:
    """8 random images: int8 latency does not depend on what calibrated it."""
    return torch.randn(8, 3, model.cfg.img_size, model.cfg.img_size)


def build_split(model, w, x, rt: str, stem: Path, threads: int, audits: dict):
    """The MoE as split programs for ``rt`` (converted, or reused from ``stem``), every tail loaded:
    the timed runs are warm."""
    from converters import split
    from converters.target_modules import load_runner

    target = "executorch" if rt.startswith("xnnpack") else "tflite"
    path = stem.with_name(stem.name + T.find(target).split_suffix)
    precision = "int8" if rt.endswith("-int8") else "fp32"
    if path.exists():
        print(f"  reusing {path.name}", flush=True)
    else:
        calib = random_calibration(model) if precision == "int8" else None
        ops = split.convert(target, w, x, path, precision=precision, backend="xnnpack" if target == "executorch" else None,
                               calibration=calib)
        if precision == "int8":
            audits[f"moe-split int8 ({rt})"] = ops
    run, _ = load_runner(T.find(target), path, threads, split=True)
    for e in range(model.cfg.num_experts):
        run.native.tail(e)
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="vmoe-12x192-p32")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--inner", type=int, default=5, help="calls per timing sample")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runtimes", default="eager,xnnpack,litert,onnxruntime")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="ModelConfig overrides, e.g. patch_size=8")
    ap.add_argument("--fused-attention", action="store_true", help="SDPA instead of matmul-softmax-matmul")
    ap.add_argument("--split", action="store_true", help="also the MoE as split expert programs (xnnpack, litert, fp32 and int8)")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="keep the converted artifacts here and reuse them on the next run with the same --model/--set "
                         "(time more rounds without converting again); default: a temporary folder")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    runtimes = args.runtimes.split(",")

    from mobile_vmoe.config import ModelConfig, parse_overrides

    moe = create_model(args.model, **{"img_size": args.img_size, **parse_overrides(args.set, ModelConfig)}).eval()
    dense = create_model(dense_twin(moe.cfg)).eval()
    variants = {"moe-gather": (moe, "gather"), "dense-twin": (dense, "gather"), "moe-all-experts": (moe, "dense")}
    if args.split:
        variants["moe-split"] = (moe, "split")
    for name, (m, d) in variants.items():
        print(f"{name}: {profile_flops(m, dispatch='gather' if d == 'split' else d).macs / 1e6:.1f}M MACs", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        runs, audits = build(variants, runtimes, workdir, args.threads, args.fused_attention)
        x = np.random.default_rng(0).standard_normal((1, 3, args.img_size, args.img_size)).astype(np.float32)
        # interleaved: every (variant, runtime) pair once per round, after 3 warm-up calls each
        times = time_interleaved({k: (lambda run=run: run(x)) for k, run in runs.items()}, args.rounds, warmup=3,
                                 inner=args.inner)

    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n{moe.cfg.name} {' '.join(args.set)} @ {args.img_size} px, batch 1, {args.threads} threads, median of {args.rounds} rounds x {args.inner}")
    def r(a, b):
        return f"{a / b:.2f}x" if a and b else "-"

    def f(v):
        return f"{v:.2f}" if v else "-"

    print("| runtime | MoE gather (ms) | dense twin (ms) | all experts (ms) | MoE split (ms) | MoE / dense | split / dense | "
          "all-experts / dense | MoE / eager MoE |")
    print("|---|---|---|---|---|---|---|---|---|")
    for rt in runtimes:
        g, d, a, sp = (med.get((v, rt)) for v in ("moe-gather", "dense-twin", "moe-all-experts", "moe-split"))
        e = med.get(("moe-gather", "eager"))
        print(f"| {rt} | {f(g)} | {f(d)} | {f(a)} | {f(sp)} | {r(g, d)} | {r(sp, d)} | {r(a, d)} | {r(g, e)} |")
    for rt in (x for x in runtimes if x.endswith("-int8")):
        base = rt[: -len("-int8")]
        print(f"{rt} vs {base} fp32: MoE {r(med.get(('moe-gather', base)), med.get(('moe-gather', rt)))} faster, "
              f"dense twin {r(med.get(('dense-twin', base)), med.get(('dense-twin', rt)))} faster; "
              f"int8 MoE / int8 dense {r(med.get(('moe-gather', rt)), med.get(('dense-twin', rt)))}, "
              f"int8 split / int8 dense {r(med.get(('moe-split', rt)), med.get(('dense-twin', rt)))}")
    for v, ops in audits.items():
        if "delegated_subgraphs" not in ops:
            print(f"\n{v}: {ops.get('int8_scheme') or ops.get('kind')}")
            continue
        print(f"\nXNNPACK {v}: {ops['delegated_subgraphs']} subgraphs, {ops['delegated_nodes']} nodes delegated, "
              f"{ops['portable_nodes']} portable; "
              f"off the delegate: " + ", ".join(f"{k} x{o['portable']}" for k, o in ops["ops"].items() if o["portable"]))


if __name__ == "__main__":
    from mobile_vmoe.errors import run_script

    run_script(main)
