"""What every target's split conversion shares: the programs of a wrapper, their int8 calibration
sets, exporting them one by one, the .json's program table (its format is in mobile_vmoe.artifact)
and one audit for all programs.

The programs themselves (trunk and per-expert tails) are built by the model package
(mobile_vmoe.models.programs); each target module converts them (``convert_split``) and runs them
(``load_split_runner``); converters.split chooses the layout and dispatches.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from mobile_vmoe.artifact import TAIL_INPUTS, TRUNK_OUTPUTS, make_program_table
from mobile_vmoe.errors import MvmoeError
from mobile_vmoe.models.programs import trunk_and_tails

from . import targets as T
from .static_export import audit_static

Programs = dict[str, tuple[nn.Module, tuple]]  # name -> (module, example args)


def programs(wrapper, example: torch.Tensor) -> Programs:
    """The export wrapper's model as ``trunk`` (behind the wrapper's preprocessing) and ``tail_<e>``."""
    return trunk_and_tails(wrapper.model, example, wrapper.preprocess)


def input_names(name: str) -> list[str]:
    return ["image"] if name == "trunk" else TAIL_INPUTS


def output_names(name: str) -> list[str]:
    return TRUNK_OUTPUTS if name == "trunk" else ["logits"]


def calibration_sets(progs: Programs, calibration: torch.Tensor | None) -> dict[str, object]:
    """What each program is calibrated on for int8: the trunk on the calibration images, every tail on
    the fp32 trunk's (stream, gate) of all of them. A tail sees all images, not only those routed to
    its expert, so that an expert rarely chosen on the calibration images still gets activation
    ranges from real streams."""
    if calibration is None:
        raise MvmoeError("int8 needs calibration images")
    trunk = progs["trunk"][0]
    with torch.no_grad():
        streams = [trunk(calibration[i : i + 1]) for i in range(len(calibration))]
    tail_args = [(stream, gate) for stream, _, gate, _ in streams]
    return {name: (calibration if name == "trunk" else tail_args) for name in progs}


def export_each(progs: Programs, quantize: Callable | None = None, calibration: torch.Tensor | None = None
                ) -> dict[str, torch.export.ExportedProgram]:
    """torch.export each program with its fixed example shapes (the static audit of every export);
    with ``quantize(module, args, calibration set) -> ExportedProgram`` each program is quantized on
    its ``calibration_sets`` entry instead."""
    sets = calibration_sets(progs, calibration) if quantize else {}
    eps = {}
    with torch.no_grad():
        for name, (module, args) in progs.items():
            eps[name] = quantize(module, args, sets[name]) if quantize else torch.export.export(module, args, strict=False)
            audit_static(eps[name])
    return eps


def program_table(progs: Programs, target: str, artifact: str) -> dict:
    """The .json's "programs" (mobile_vmoe.artifact.make_program_table) with the shapes of ``progs``.
    Where the target's split artifact is a folder (split suffix ""), each program is its own file."""
    record = T.find(target)
    folder = record is not None and record.split_suffix == ""
    file_of = (lambda n: f"{n}{record.suffix}") if folder else (lambda n: artifact)
    trunk, (image,) = progs["trunk"]
    with torch.no_grad():
        outs = trunk(image)
        tail, (stream, gate) = progs["tail_0"]
        logits = tail(stream, gate)
    experts = [int(name.split("_")[1]) for name in progs if name.startswith("tail_")]
    return make_program_table(file_of, experts, list(image.shape), [list(t.shape) for t in outs],
                              [list(stream.shape), list(gate.shape)], list(logits.shape))


def merge_audits(audits: dict[str, dict]) -> dict:
    """One audit for all programs: the trunk's and the first tail's in full, totals over all."""
    first = next(iter(audits.values()))
    out = {"kind": first["kind"], "programs": {n: a for n, a in audits.items() if n in ("trunk", "tail_0")}}
    for key in ("nodes", "delegated_subgraphs", "delegated_nodes", "portable_nodes"):
        if key in first:
            out[key] = sum(a[key] for a in audits.values())
    ops: dict = {}
    for a in audits.values():
        for op, v in a.get("ops", {}).items():
            if isinstance(v, dict):
                acc = ops.setdefault(op, {k: 0 for k in v})
                for k in v:
                    acc[k] += v[k]
            else:
                ops[op] = ops.get(op, 0) + v
    out["ops"] = dict(sorted(ops.items()))
    for key in ("delegate", "not_delegated", "flex_ops", "compute_precision"):
        if key in first:
            out[key] = sorted({x for a in audits.values() for x in a[key]}) if isinstance(first[key], list) else first[key]
    return out
