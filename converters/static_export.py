"""torch.export with fixed shapes, and the audit that the exported graph is static: no symbolic
shapes, no data-dependent control flow, no op whose output shape depends on values."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from mobile_vmoe.errors import MvmoeError

# Higher-order ops that mean data-dependent control flow, and ops whose output shape depends on
# values. The per-image router's topk is fine: its output shape is (B, k) whatever the values.
CONTROL_FLOW_OPS = ("cond", "while_loop", "map_impl", "scan")
DATA_DEPENDENT_OPS = ("nonzero", "masked_select", "unique", "_unique2", "item", "_local_scalar_dense",
                      "repeat_interleave")


def _is_symbolic(val: Any) -> bool:
    if isinstance(val, (torch.SymInt, torch.SymFloat, torch.SymBool)):
        return True
    if isinstance(val, torch.Tensor):
        return any(isinstance(s, torch.SymInt) for s in val.shape)
    if isinstance(val, (list, tuple)):
        return any(_is_symbolic(v) for v in val)
    return False


def audit_static(ep: torch.export.ExportedProgram) -> dict:
    """Check that an ExportedProgram has fixed shapes and no data-dependent control flow.

    Raises MvmoeError naming the offending nodes; returns {"nodes", "aten_ops": {op: count}}.
    """
    problems, ops = [], {}
    for node in ep.graph.nodes:
        if _is_symbolic(node.meta.get("val")):
            problems.append(f"{node.name} has a symbolic shape {node.meta['val'].shape if isinstance(node.meta['val'], torch.Tensor) else node.meta['val']}")
        if node.op != "call_function":
            continue
        name = getattr(node.target, "__name__", str(node.target))
        base = name.split(".")[0]
        if base in CONTROL_FLOW_OPS:
            problems.append(f"{node.name} is data-dependent control flow ({name})")
        elif base in DATA_DEPENDENT_OPS:
            problems.append(f"{node.name} has a value-dependent output shape ({name})")
        ops[name] = ops.get(name, 0) + 1
    if ep.range_constraints:
        problems.append(f"symbolic shape ranges {sorted(map(str, ep.range_constraints))}")
    if problems:
        raise MvmoeError("exported graph is not static: " + "; ".join(problems[:4])
                         + (f" (+{len(problems) - 4} more)" if len(problems) > 4 else ""))
    return {"nodes": sum(ops.values()), "aten_ops": dict(sorted(ops.items()))}


def export_static(wrapper: nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    """torch.export with a fixed input shape, then ``audit_static``."""
    with torch.no_grad():
        ep = torch.export.export(wrapper, (example,), strict=False)
    audit_static(ep)
    return ep
