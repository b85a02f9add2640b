"""Checkpoint -> artifacts: prepare once, then for each (target, backend, precision) convert in a
temporary folder, run the artifact for parity, write the metadata .json, and only then move both
into place with os.replace. A failed conversion or parity check leaves nothing behind.

Every target module has the same small interface::

    TARGET, EXT, BACKENDS, PRECISIONS
    convert(wrapper, ep, example, path, *, precision, backend, calibration) -> op audit dict
    load_runner(path, threads=None) -> (run(ndarray) -> [outputs], None) or (None, why not)
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from mobile_vmoe.errors import MvmoeError

from . import prepare as P
from .app_metadata import app_metadata

TARGET_NAMES = ("coreml", "executorch", "tflite", "onnx")
APP_DIRS = {"android": Path("apps/android_demo/app/src/main/assets/mvmoe"),
            "ios": Path("apps/ios_demo/MobileVMoEDemo/Models")}


def target_module(name: str):
    import importlib

    mod = {"coreml": "coreml", "executorch": "executorch", "tflite": "tflite", "onnx": "onnx_export"}[name]
    return importlib.import_module(f"converters.{mod}")


def precisions_of(target: str, backend: str | None) -> tuple[str, ...]:
    p = target_module(target).PRECISIONS
    return p[backend or "xnnpack"] if isinstance(p, dict) else p


@dataclass
class ExportJob:
    target: str
    backend: str | None
    precision: str


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


def plan(target: str, backend: str | None, precision: str) -> tuple[list[ExportJob], list[str]]:
    """Jobs for a --target/--backend/--precision choice, and notes on combinations skipped under
    ``all``. A single target with an unsupported backend or precision is a user error."""
    if target not in (*TARGET_NAMES, "all"):
        raise MvmoeError(f"--target {target!r}: expected one of {', '.join(TARGET_NAMES)}, all")
    if precision not in ("fp32", "fp16", "int8"):
        raise MvmoeError(f"--precision {precision!r}: expected fp32, fp16 or int8")
    if backend is not None and backend not in ("xnnpack", "coreml", "portable"):
        raise MvmoeError(f"--backend {backend!r}: expected xnnpack, coreml or portable")
    if backend is not None and target not in ("executorch", "all"):
        raise MvmoeError(f"--backend applies to --target executorch only (got --target {target})")
    jobs, skipped = [], []
    for t in TARGET_NAMES if target == "all" else (target,):
        b = (backend or "xnnpack") if t == "executorch" else None
        if precision in precisions_of(t, b):
            jobs.append(ExportJob(t, b, precision))
        elif target == "all":
            skipped.append(f"{t}{'-' + b if b else ''} has no {precision} export (it has {', '.join(precisions_of(t, b))})")
        else:
            raise MvmoeError(f"{t}{'-' + b if b else ''} exports {', '.join(precisions_of(t, b))}, not {precision}")
    return jobs, skipped


def _install(src: Path, dst: Path) -> None:
    """Move ``src`` (file or .mlpackage folder) onto ``dst`` atomically; an old ``dst`` is replaced."""
    if src.is_dir() and dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


def copy_to_app(artifact: Path, app: str, root: Path = Path(".")) -> Path:
    """Copy an artifact and its .json into a demo app's model folder (contract C), atomically."""
    if app not in APP_DIRS:
        raise MvmoeError(f"--app {app!r}: expected ios or android")
    dest = root / APP_DIRS[app]
    dest.mkdir(parents=True, exist_ok=True)
    for src in (artifact, artifact.with_suffix(".json")):
        tmp = dest / f".{src.name}.tmp-{os.getpid()}"
        shutil.copytree(src, tmp) if src.is_dir() else shutil.copyfile(src, tmp)
        _install(tmp, dest / src.name)
    return dest


def export_checkpoint(checkpoint, target: str = "all", backend: str | None = None, precision: str = "fp32",
                      out_dir: str | os.PathLike = "exports", *, dispatch: str = "gather",
                      fused_attention: bool = False, bake_preprocessing: bool = False, parity_images: int = 256,
                      calibration_images: int = 32, fp32_tol: float = 1e-4, max_top1_drop: float | None = None,
                      layer_norm: str = "native", progress=None) -> list[ExportResult]:
    """Export one checkpoint to the chosen targets. Keeps going after a target fails; each
    result carries its error. ``progress(str)`` is called with one line per step if given.
    ``layer_norm="decomposed"`` rewrites LayerNorm for ExecuTorch XNNPACK fp32 jobs (see
    converters.prepare.decompose_layernorm); other jobs keep the native op."""
    import torch

    from mobile_vmoe.checkpoint import load_checkpoint, model_from_checkpoint
    from mobile_vmoe.profile.flops import profile_flops

    say = progress or (lambda s: None)
    if layer_norm not in ("native", "decomposed"):
        raise MvmoeError(f"--layer-norm {layer_norm!r}: expected native or decomposed")
    jobs, skipped = plan(target, backend, precision)
    ckpt = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
    model, ckpt = model_from_checkpoint(ckpt)
    data = ckpt.get("data") or {}
    wrapper = P.prepare_for_export(model, dispatch=dispatch, fused_attention=fused_attention,
                                   bake_preprocessing=bake_preprocessing, mean=data.get("mean"), std=data.get("std"))
    images = P.eval_images(ckpt, count=max(parity_images, calibration_images))
    inputs = images.inputs(bake_preprocessing)  # (N, C, H, W)
    example = inputs[:1].clone()
    calibration = inputs[P.spread(len(inputs), calibration_images)]  # spread over the split
    say(f"eval images: {images.source}")
    ep = P.export_static(wrapper, example)  # raises MvmoeError if anything is dynamic
    reference = P.reference_logits(wrapper, inputs[:parity_images])
    macs = profile_flops(model, dispatch=dispatch).macs
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    results = []
    for job in jobs:
        mod = target_module(job.target)
        stem = P.artifact_stem(model.cfg.name, job.target, job.backend, job.precision)
        res = ExportResult(job, notes=[f"eval images: {images.source}"])
        say(f"{stem}: converting")
        tmp = Path(tempfile.mkdtemp(prefix=f".{stem}.", dir=out_dir))
        try:
            path = tmp / f"{stem}{mod.EXT}"
            meta = P.build_metadata(ckpt, wrapper, target=job.target, backend=job.backend, precision=job.precision,
                                    artifact=path.name, dispatch=dispatch, macs=macs,
                                    parity_result=P.not_run("not run yet"), ops={})
            kw = {"metadata": meta} if job.target == "coreml" else {}
            job_wrapper, job_ep = wrapper, ep
            if layer_norm == "decomposed" and P.layernorm_option_applies(job.target, job.backend, job.precision):
                # parity below is still against the native-LayerNorm reference
                job_wrapper = P.decompose_layernorm(copy.deepcopy(wrapper))
                job_ep = P.export_static(job_wrapper, example)
            meta["layer_norm"] = "decomposed" if job_wrapper is not wrapper else "native"
            with torch.no_grad():
                ops = mod.convert(job_wrapper, job_ep, example, path, precision=job.precision, backend=job.backend,
                                  calibration=calibration, **kw)
            run, why = mod.load_runner(path)
            if run is None:
                par = P.not_run(why, images=0)
            else:
                say(f"{stem}: parity on {len(reference)} images")
                par = P.parity(reference, P.run_all(run, inputs[:parity_images]), images.labels[:parity_images]
                               if images.labels is not None else None)
            par["images_source"] = images.source
            meta.update(parity=par, ops=ops)
            meta.update(app_metadata(ckpt, wrapper, images, meta, path))  # parity set, preprocessing, runtime
            failure = P.check_parity(par, job.precision, fp32_tol, max_top1_drop)
            if failure:
                raise MvmoeError(f"parity failed: {failure}")
            (tmp / f"{stem}.json").write_text(json.dumps(meta, indent=1))
            _install(path, out_dir / path.name)
            _install(tmp / f"{stem}.json", out_dir / f"{stem}.json")
            res.artifact, res.metadata = out_dir / path.name, meta
        except MvmoeError as e:
            res.error = str(e)
        except Exception as e:  # noqa: BLE001 - one target's converter failure must not stop the others
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
            res.error = f"{type(e).__name__}: {first}"
            res.notes.append(traceback.format_exc(limit=3))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        results.append(res)
    for s in skipped:
        say(f"skipped: {s}")
    return results
