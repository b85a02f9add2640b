"""Checkpoint -> artifacts: prepare once, then for each (target, backend, precision) convert in a
temporary folder, run the artifact for parity, write the metadata .json, and only then move both
into place with os.replace. A failed conversion or parity check, or Ctrl-C, leaves nothing behind.

Every target module has the same small interface (converters.target_modules); its facts are its
record in converters.targets.
"""

from __future__ import annotations

import copy
import dataclasses
import errno
import json
import os
import shutil
import tempfile
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mobile_vmoe.artifact import tree_sha256
from mobile_vmoe.artifact_name import artifact_stem
from mobile_vmoe.checkpoint import load_checkpoint, model_from_checkpoint
from mobile_vmoe.errors import MvmoeError, did_you_mean
from mobile_vmoe.fileio import move_into_place, to_json, writable_dir
from mobile_vmoe.models.flops import profile_flops

from .images import EvalImages, eval_images, spread
from .layernorm import decompose_layernorm, layernorm_option_applies
from .metadata import build_metadata, checkpoint_identity
from .parity import check_parity, not_run, parity, reference_logits, run_all
from .static_export import export_static
from .wrapper import ExportWrapper, prepare_for_export
from . import split
from . import targets as T
from .app_metadata import app_metadata
from .interrupt import check, held, sigint_guard
from .quiet import loud, quiet, ticking
from .split import check_splittable, choose_layout, unsupported
from .target_modules import load_runner, module_of


def precisions_of(target: str, backend: str | None) -> tuple[str, ...]:
    return T.find(target, backend).precisions


@dataclass
class ExportJob:
    target: str
    backend: str | None
    precision: str
    experts: str = "fused"  # fused | split; "auto" until the model's config is known (resolve_layouts)


@dataclass
class ExportResult:
    job: ExportJob
    artifact: Path | None = None
    metadata: dict | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None


EXPERT_LAYOUTS = ("auto", "fused", "split")


def plan(target: str, backend: str | None, precision: str, experts: str = "auto") -> tuple[list[ExportJob], list[str]]:
    """Jobs for a --target/--backend/--precision/--experts choice, and notes on combinations skipped
    under ``all``. A single target with an unsupported backend or precision is a user error.
    ``auto`` jobs are planned as fused ones (auto never refuses) and resolved by resolve_layouts."""
    if experts not in EXPERT_LAYOUTS:
        raise MvmoeError(f"--experts {experts!r}: expected auto (split where it applies), fused (one program, every "
                         f"expert) or split (trunk + one program per expert){did_you_mean(experts, EXPERT_LAYOUTS)}")
    if target not in (*T.TARGET_NAMES, "all"):
        raise MvmoeError(f"--target {target!r}: expected one of {', '.join(T.TARGET_NAMES)}, all"
                         + did_you_mean(target, (*T.TARGET_NAMES, "all")))
    if precision not in T.PRECISIONS:
        raise MvmoeError(f"--precision {precision!r}: expected {T.choices(T.PRECISIONS)}"
                         + did_you_mean(precision, T.PRECISIONS))
    if backend is not None and backend not in T.BACKENDS:
        raise MvmoeError(f"--backend {backend!r}: expected {T.choices(T.BACKENDS)}" + did_you_mean(backend, T.BACKENDS))
    if backend is not None and target not in (*T.BACKEND_TARGETS, "all"):
        raise MvmoeError(f"--backend applies to --target {T.choices(T.BACKEND_TARGETS)} only (got --target {target})")
    jobs, skipped = [], []
    for t in T.TARGET_NAMES if target == "all" else (target,):
        b = (backend or T.DEFAULT_BACKEND[t]) if t in T.DEFAULT_BACKEND else None
        if experts == "split":
            why = unsupported(t, b, precision)
            if why is None:
                jobs.append(ExportJob(t, b, precision, "split"))
            elif target == "all":
                skipped.append(why)
            else:
                raise MvmoeError(why)
        elif precision in precisions_of(t, b):
            jobs.append(ExportJob(t, b, precision, experts))
        elif target == "all":
            skipped.append(f"{T.label(t, b)} has no {precision} export (it has {', '.join(precisions_of(t, b))})")
        else:
            raise MvmoeError(f"{T.label(t, b)} exports {', '.join(precisions_of(t, b))}, not {precision}")
    return jobs, skipped


def resolve_layouts(jobs: list[ExportJob], cfg, macs: int, dispatch: str, layer_norm: str) -> list[ExportJob]:
    """Each ``auto`` job as fused or split for this model of ``macs`` active MACs per image
    (converters.split.choose_layout)."""
    return [dataclasses.replace(j, experts=choose_layout(
        j.experts, cfg, j.target, j.backend, j.precision, macs=macs, dispatch=dispatch,
        decomposed_layernorm=layer_norm == "decomposed" and layernorm_option_applies(j.target, j.backend, j.precision)))
        for j in jobs]


@dataclass
class Source:
    """What every job of one export shares: the checkpoint, its model ready for export, the images."""

    ckpt: dict
    model: object
    wrapper: ExportWrapper
    ep: object  # the static ExportedProgram of ``wrapper``
    images: EvalImages
    inputs: object  # (N, C, H, W) what the artifact is fed for parity
    calibration: object  # (n, C, H, W) int8 calibration images, spread over the split
    reference: object  # (N, classes) PyTorch logits
    macs: int
    identity: dict  # checkpoint path and sha256


def check_options(parity_images: int, calibration_images: int, fp32_tol: float, max_top1_drop: float | None,
                  layer_norm: str) -> None:
    """Bad numbers fail before anything is read or converted."""
    if layer_norm not in ("native", "decomposed"):
        raise MvmoeError(f"--layer-norm {layer_norm!r}: expected native or decomposed")
    if parity_images < 1:
        raise MvmoeError(f"--parity-images {parity_images}: must be at least 1")
    if calibration_images < 1:
        raise MvmoeError(f"calibration_images {calibration_images}: must be at least 1")
    if not fp32_tol >= 0:  # also catches nan
        raise MvmoeError(f"--fp32-tol {fp32_tol}: must be >= 0")
    if max_top1_drop is not None and not 0 <= max_top1_drop <= 1:
        raise MvmoeError(f"--max-top1-drop {max_top1_drop}: must be between 0 and 1")


def check_out_dir(out_dir: Path) -> None:
    """--out must be a folder we can write. Nothing is created yet (a refusal leaves no empty
    folder): a file is written and removed in --out, or in its nearest existing parent."""
    writable_dir(out_dir, "--out", create=False)


def make_out_dir(out_dir: Path) -> None:
    """Create --out, after every check has passed (and probe it)."""
    writable_dir(out_dir, "--out")


def require_real_images(images: EvalImages, jobs: list[ExportJob]) -> None:
    """fp16/int8 are judged (and int8 calibrated) on real images only; random pixels would pass
    any quantization."""
    lossy = sorted({j.precision for j in jobs if j.precision != "fp32"})
    if lossy and images.is_random:
        raise MvmoeError(f"{'/'.join(lossy)} export needs real images for calibration and the agreement check, "
                         f"but this uses {images.source}; give --parity-data PATH|digits|synthetic")


def artifact_path(out_dir: Path, model_name: str, job: ExportJob, dispatch: str) -> Path:
    """``dispatch="split"``: the split programs, with the record's split suffix ("": a folder)."""
    record = T.find(job.target, job.backend)
    ext = record.split_suffix if dispatch == "split" else record.suffix
    return out_dir / (artifact_stem(model_name, job.target, job.backend, job.precision, dispatch) + ext)


def name_dispatch(job: ExportJob, dispatch: str, per_image_moe: bool) -> str:
    """The dispatch an artifact's name carries: split programs say so; a model without a
    per-image MoE is named as gather whatever --dispatch was."""
    if not per_image_moe:
        return "gather"
    return "split" if job.experts == "split" else dispatch


def check_overwrite(paths: list[Path], identity: dict, force: bool) -> None:
    """Refuse to replace an artifact made from another checkpoint (or of unknown origin)."""
    if force:
        return
    for path in paths:
        if not path.exists() and not path.with_suffix(".json").exists():
            continue
        meta_path = path.with_suffix(".json")
        old = None
        if meta_path.is_file():
            try:
                old = json.loads(meta_path.read_text()).get("checkpoint_sha256")
            except (ValueError, AttributeError, UnicodeDecodeError):
                old = None
        if old is None or old != identity.get("checkpoint_sha256"):
            origin = "another checkpoint" if old else "an unknown checkpoint"
            raise MvmoeError(f"{path} exists and was exported from {origin}; use --force to replace it, "
                             "or --out another folder")


def early_checks(cfg, images: EvalImages, jobs: list[ExportJob], parity_data: str | None, say) -> None:
    """What can refuse the export from the model's config and the images alone, before any
    export or conversion work: split layouts, real images for fp16/int8, calibration classes."""
    for j in jobs:
        if j.experts == "split":
            check_splittable(cfg, j.target, j.backend, j.precision)
    require_real_images(images, jobs)
    if parity_data is not None and images.labels is None and any(j.precision == "int8" for j in jobs):
        say(f"warning: --parity-data {parity_data} has other classes than the checkpoint's: int8 is calibrated on "
            "them and the accuracy change cannot be measured")


def load_source(checkpoint, dispatch: str, fused_attention: bool, bake_preprocessing: bool, count: int,
                parity_images: int, calibration_images: int, parity_data: str | None, early=None) -> Source:
    """The checkpoint's model ready for export, its images and reference logits; ``early(cfg,
    images)`` runs once both are known, before the (slow) export."""
    ckpt = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
    model, ckpt = model_from_checkpoint(ckpt)
    data = ckpt.get("data") or {}
    wrapper = prepare_for_export(model, dispatch=dispatch, fused_attention=fused_attention,
                                 bake_preprocessing=bake_preprocessing, mean=data.get("mean"), std=data.get("std"))
    images = eval_images(ckpt, count=count, spec=parity_data)
    if early is not None:
        early(model.cfg, images)
    check()
    inputs = images.inputs(bake_preprocessing)  # (N, C, H, W)
    ep = export_static(wrapper, inputs[:1].clone())  # raises MvmoeError if anything is dynamic
    check()
    reference = reference_logits(wrapper, inputs[:parity_images])
    check()
    return Source(ckpt, model, wrapper, ep, images, inputs[:parity_images], inputs[spread(len(inputs), calibration_images)],
                  reference, profile_flops(model, dispatch=dispatch).macs, checkpoint_identity(checkpoint))


def convert_and_check(src: Source, job: ExportJob, path: Path, *, dispatch: str, layer_norm: str, fp32_tol: float,
                      max_top1_drop: float | None, say) -> dict:
    """Convert one job into ``path`` (inside a temporary folder), run parity; -> the metadata."""
    experts = job.experts
    meta = build_metadata(src.ckpt, src.wrapper, target=job.target, backend=job.backend, precision=job.precision,
                          artifact=path.name, dispatch="split" if experts == "split" else dispatch, macs=src.macs,
                          parity_result=not_run("not run yet"), ops={}, source=src.identity)
    meta["expert_layout"] = experts if src.wrapper.per_image_moe else None
    ops, (run, why) = convert_one(src, job, path, meta, layer_norm)
    check()  # a library that swallowed Ctrl-C has returned: stop now
    if run is None:
        par = not_run(why, images=0)
    else:
        say(f"{path.stem}: parity on {len(src.reference)} images")
        labels = src.images.labels[: len(src.reference)] if src.images.labels is not None else None
        par = parity(src.reference, run_all(run, src.inputs), labels)
        if experts == "split":
            par["tails_used"] = run.native.tail_loads  # distinct experts the parity images chose
    par.update(images_source=src.images.source, data=src.images.data)
    size, digest = tree_sha256(path)
    meta.update(parity=par, ops=ops, artifact_size=size, artifact_sha256=digest)
    meta.update(app_metadata(src.ckpt, src.wrapper, src.images, meta))  # parity set, preprocessing, runtime
    failure = check_parity(par, job.precision, fp32_tol, max_top1_drop)
    if failure:
        raise MvmoeError(f"parity failed: {failure}")
    return meta


def convert_one(src: Source, job: ExportJob, path: Path, meta: dict, layer_norm: str):
    """Write the artifact; -> (op audit, the target's load_runner result). Split programs also
    put their "programs" table into ``meta``."""
    example = src.inputs[:1].clone()
    if job.experts == "split":
        meta["layer_norm"] = "native"
        with torch.no_grad():
            ops = split.convert(job.target, src.wrapper, example, path, precision=job.precision, backend=job.backend,
                                metadata=meta, calibration=src.calibration)
        return ops, load_runner(T.find(job.target, job.backend), path, split=True)
    mod = module_of(job.target)
    wrapper, ep = src.wrapper, src.ep
    if layer_norm == "decomposed" and layernorm_option_applies(job.target, job.backend, job.precision):
        # parity is still against the native-LayerNorm reference
        wrapper = decompose_layernorm(copy.deepcopy(src.wrapper))
        ep = export_static(wrapper, example)
    meta["layer_norm"] = "decomposed" if wrapper is not src.wrapper else "native"
    with torch.no_grad():
        ops = mod.convert(wrapper, ep, example, path, precision=job.precision, backend=job.backend,
                          calibration=src.calibration, metadata=meta)
    return ops, load_runner(T.find(job.target, job.backend), path)


def export_job(src: Source, job: ExportJob, out_dir: Path, path: Path, *, say, verbose: bool, **kw) -> ExportResult:
    """One target: convert in a temporary folder, check, install; any failure is in the result."""
    res = ExportResult(job, notes=[f"eval images: {src.images.source}"])
    say(f"{path.stem}: converting")
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.stem}.", dir=out_dir))
    log = tmp / "library-output.log"
    try:
        with quiet(verbose, log), ticking(say, path.stem):
            meta = convert_and_check(src, job, tmp / path.name, say=say, **kw)
        with held():  # both files or neither
            (tmp / f"{path.stem}.json").write_text(to_json(meta, indent=1, what=f"{path.stem}.json"))
            move_into_place(tmp / path.name, path)
            move_into_place(tmp / f"{path.stem}.json", path.with_suffix(".json"))
        res.artifact, res.metadata = path, meta
    except MvmoeError as e:
        res.error = str(e)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM):
            raise MvmoeError(f"cannot write to {out_dir}: {e.strerror or e}") from None
        res.error, res.notes = _failure(e, log, res.notes)
    except Exception as e:  # noqa: BLE001 - one target's converter failure must not stop the others
        res.error, res.notes = _failure(e, log, res.notes)
    finally:
        with held():
            shutil.rmtree(tmp, ignore_errors=True)
    check()
    return res


def _failure(e: Exception, log: Path, notes: list[str]) -> tuple[str, list[str]]:
    first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
    notes = [*notes, traceback.format_exc(limit=3)]
    if log.is_file() and log.stat().st_size:
        notes.append("library output (last lines):\n" + "\n".join(log.read_text(errors="replace").splitlines()[-20:]))
    return f"{type(e).__name__}: {first}", notes


def export_checkpoint(checkpoint, target: str = "all", backend: str | None = None, precision: str = "fp32",
                      out_dir: str | os.PathLike = "exports", *, dispatch: str = "gather",
                      fused_attention: bool = False, bake_preprocessing: bool = False, parity_images: int = 256,
                      calibration_images: int = 32, fp32_tol: float = 1e-4, max_top1_drop: float | None = None,
                      layer_norm: str = "native", parity_data: str | None = None, force: bool = False,
                      verbose: bool = False, progress=None, experts: str = "auto") -> list[ExportResult]:
    """Export one checkpoint to the chosen targets. Keeps going after a target fails; each
    result carries its error. ``progress(str)`` is called with one line per step if given.
    ``layer_norm="decomposed"`` rewrites LayerNorm for ExecuTorch XNNPACK fp32 jobs (see
    converters.layernorm.decompose_layernorm); other jobs keep the native op. ``parity_data``: a
    dataset for parity and calibration (build_data spec) instead of the checkpoint's own.
    An existing artifact from another checkpoint is replaced only with ``force``. Libraries'
    own output is hidden unless ``verbose``. Ctrl-C raises KeyboardInterrupt and leaves no files.
    ``experts="split"``: a per-image MoE (k = 1) as a trunk and one program per expert
    (converters.split), checked by running the chain; ``"fused"``: one program with every expert;
    ``"auto"``: split for each job where it applies, fused elsewhere (split.choose_layout)."""
    def say(line: str) -> None:
        if progress:
            with loud():
                progress(line)

    check_options(parity_images, calibration_images, fp32_tol, max_top1_drop, layer_norm)
    jobs, skipped = plan(target, backend, precision, experts)
    if experts == "split" and dispatch != "gather":
        raise MvmoeError(f"--experts split runs one expert program per image; --dispatch {dispatch} does not apply")
    out_dir = Path(out_dir)
    check_out_dir(out_dir)
    with sigint_guard(), quiet(verbose):
        src = load_source(checkpoint, dispatch, fused_attention, bake_preprocessing, max(parity_images, calibration_images),
                          parity_images, calibration_images, parity_data,
                          early=lambda cfg, images: early_checks(cfg, images, jobs, parity_data, say))
        say(f"eval images: {src.images.source}")
        if src.images.is_random:
            say("warning: parity runs on random pixels, not real images (give --parity-data to use a dataset)")
        jobs = resolve_layouts(jobs, src.model.cfg, src.macs, dispatch, layer_norm)
        make_out_dir(out_dir)
        paths = [artifact_path(out_dir, src.model.cfg.name, j, name_dispatch(j, dispatch, src.wrapper.per_image_moe))
                 for j in jobs]
        check_overwrite(paths, src.identity, force)
        results = [export_job(src, job, out_dir, path, say=say, verbose=verbose, dispatch=dispatch, layer_norm=layer_norm,
                              fp32_tol=fp32_tol, max_top1_drop=max_top1_drop)
                   for job, path in zip(jobs, paths)]
    for s in skipped:
        say(f"skipped: {s}")
    return results
