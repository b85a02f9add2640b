"""XNNPACK delegation of one model under ModelConfig options: delegated subgraphs, delegated and
portable nodes, and which ops stay off the delegate, with LayerNorm native and decomposed.

Random weights (delegation does not depend on them); no timing, so it is cheap to re-run.

    uv run python bench/bench_delegation.py --model vmoe-12x192-p32 \\
        --variants "-" qk_norm=true parallel_block=true bias=false "qk_norm=true,parallel_block=true,bias=false"

A variant is "-" (the preset as is) or comma-separated KEY=VALUE overrides.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

import torch

from converters import executorch as et
from converters.layernorm import decompose_layernorm
from converters.static_export import export_static
from converters.wrapper import prepare_for_export
from mobile_vmoe import create_model
from mobile_vmoe.config import parse_overrides


def delegation(model, layer_norm: str, workdir: Path) -> dict:
    """ExecuTorch XNNPACK fp32 audit of ``model`` exported with the gather dispatch."""
    w = prepare_for_export(model, dispatch="gather")
    if layer_norm == "decomposed":
        w = decompose_layernorm(copy.deepcopy(w))
    x = torch.randn(1, 3, model.cfg.img_size, model.cfg.img_size)
    return et.convert(w, export_static(w, x), x, workdir / "m.pte", precision="fp32", backend="xnnpack")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="vmoe-12x192-p32")
    ap.add_argument("--variants", nargs="+", default=["-"])
    ap.add_argument("--layer-norms", default="native,decomposed")
    args = ap.parse_args()
    torch.manual_seed(0)
    print(f"{args.model}, ExecuTorch XNNPACK fp32, gather dispatch")
    print("| options | LayerNorm | delegated subgraphs | delegated nodes | portable nodes "
          "| off the delegate (portable nodes) |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for variant in args.variants:
            overrides = {} if variant == "-" else parse_overrides(variant.split(","))
            model = create_model(args.model, **overrides).eval()
            for ln in args.layer_norms.split(","):
                ops = delegation(model, ln, Path(tmp))
                off = ", ".join(f"{k.removeprefix('aten_').removesuffix('_default')} {o['portable']}"
                                for k, o in ops["ops"].items() if o["portable"])
                print(f"| {variant if variant != '-' else 'none'} | {ln} | {ops['delegated_subgraphs']} | "
                      f"{ops['delegated_nodes']} | {ops['portable_nodes']} | {off} |", flush=True)


if __name__ == "__main__":
    from mobile_vmoe.errors import run_script

    run_script(main)
