"""Split expert programs: a per-image MoE as one trunk and one tail per expert, so that an app keeps
the trunk and the tails it has used in memory and leaves the other experts' weights on disk.

    trunk(image (1, C, H, W))         -> stream (1, T, D), expert_index (1, 1) int32, gate (1, 1),
                                         expert_probs (1, E)
    tail_<e>(stream (1, T, D), gate (1, 1)) -> logits (1, N)

The trunk is everything up to the router: (baked preprocessing,) patch embedding, the dense blocks
and the router, run once per image. Tail ``e`` is every block from the first MoE block on, with
expert ``e`` as a plain two-layer MLP whose output is scaled by the gate, then the final norm and
the head. Per-image routing picks one choice for all MoE blocks, so with k = 1 the chain
``trunk -> tail_<expert_index>`` computes what the single program computes; k > 1 would need
several tails per image and a combine, and is refused.

Where the programs go, per target:
    executorch  one .pte with the methods ``trunk`` and ``tail_0`` ... ``tail_<E-1>``; XNNPACK
                stores weights by content hash, so the blocks every tail shares are stored once
    tflite      a folder ``<stem>/`` of ``trunk.tflite`` and ``tail_<e>.tflite`` (one interpreter
                per file: a multi-signature model would pack every signature's weights at load)
    coreml      one multifunction .mlpackage, functions ``trunk`` and ``tail_<e>`` (iOS 18 loads
                one with MLModelConfiguration.functionName); weights shared between functions
                are stored once
The metadata .json lists the programs and how to chain them (``program_table``, docs/formats.md).

Who does what: the programs are built by the model package (mobile_vmoe.models.programs), the
shared steps are in converters.programs, each target's module converts them (``convert_split``)
and runs them (``load_split_runner``, a SplitChain of converters.runner, opened through
converters.target_modules.load_runner with ``split=True``); this module holds the support matrix,
the layout choice and the conversion through the target table.

int8 (ExecuTorch XNNPACK, LiteRT): every program is pt2e-quantized on its own, the trunk on the
calibration images, every tail on the fp32 trunk's streams of them (``calibration_sets``); each
tail's expert is then an int8 Linear, which a stacked gather of expert weights cannot be.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mobile_vmoe.errors import MvmoeError

from . import targets as T
from .programs import program_table, programs
from .target_modules import module_of

def unsupported(target: str, backend: str | None, precision: str) -> str | None:
    """Why the split path does not export this target, backend and precision (None: it does);
    the split columns of converters.targets."""
    if target not in T.split_names():
        return f"--experts split exports to {', '.join(T.split_names())}, not {target}"
    rec = T.find(target, backend)
    if rec is None or not rec.split_precisions:
        ok = [t.backend for t in T.TARGETS if t.name == target and t.split_precisions]
        return f"--experts split: {T.label(target, backend)} is not supported ({' or '.join(ok)})"
    if precision not in rec.split_precisions:
        return f"--experts split on {rec.label} exports {', '.join(rec.split_precisions)}, not {precision}"
    return None


def choose_layout(experts: str, cfg, target: str, backend: str | None, precision: str, *, macs: int,
                  dispatch: str = "gather", decomposed_layernorm: bool = False) -> str:
    """--experts auto | fused | split for one export job -> "fused" or "split".

    ``auto`` picks split where this job can be split (a per-image MoE with k = 1, the gather
    dispatch, a precision the split path exports, no decomposed LayerNorm: the split programs keep
    the native op) and the target's record says split was measured faster at this precision and
    size (``auto_split_from``: the active MACs per image from which it splits; the figures behind
    it are beside the table). Everywhere else (dense and per-token models, k = 2, ONNX, ExecuTorch
    Core ML and portable, Core ML: its split package needs iOS 18 and was never timed) auto picks
    fused and never refuses. An explicit ``fused`` or ``split`` is returned as given (split is
    checked by check_splittable).
    """
    if experts != "auto":
        return experts
    record = T.find(target, backend)
    from_macs = dict(record.auto_split_from).get(precision) if record is not None else None
    splittable = (from_macs is not None and macs >= from_macs and cfg.is_per_image and cfg.top_k == 1
                  and dispatch == "gather" and not decomposed_layernorm and unsupported(target, backend, precision) is None)
    return "split" if splittable else "fused"


def check_splittable(cfg, target: str, backend: str | None, precision: str) -> None:
    """Split needs a per-image MoE with k = 1, and a target and precision the split path exports."""
    if not cfg.is_per_image:
        raise MvmoeError(f"--experts split: {cfg.name} is not a per-image MoE (routing={cfg.routing}, "
                         f"{cfg.num_experts} experts); only per-image routing has one expert choice per image")
    if cfg.top_k != 1:
        raise MvmoeError(f"--experts split needs top_k = 1 (this model has k = {cfg.top_k}: an image would need "
                         "several tails and a combine)")
    why = unsupported(target, backend, precision)
    if why:
        raise MvmoeError(why)


# ------------------------------------------------------------------------------ convert and run
def convert(target: str, wrapper, example: torch.Tensor, path: Path, *, precision: str, backend: str | None,
            metadata: dict | None = None, calibration: torch.Tensor | None = None) -> dict:
    """Write the split programs of ``wrapper`` to ``path`` with the target's ``convert_split``; -> the
    op audit. ``metadata`` (the .json's dict) gets the "programs" table before the conversion, so a
    target that stores the metadata in its artifact (Core ML) stores it too."""
    progs = programs(wrapper, example)
    table = program_table(progs, target, Path(path).name)
    if metadata is not None:
        metadata["programs"] = table
    return module_of(target).convert_split(progs, Path(path), table, precision=precision, backend=backend,
                                             calibration=calibration, metadata=metadata)

