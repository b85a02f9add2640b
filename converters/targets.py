"""The export targets: one record per --target / --backend pair, every per-target fact in one place.

    target      backend    module       suffix      runtime      precisions       split programs
    coreml      -          coreml       .mlpackage  coreml       fp32 fp16        fp32 fp16 (one multifunction package)
    executorch  xnnpack    executorch   .pte        executorch   fp32 int8        fp32 int8 (one .pte, a method each)
    executorch  coreml     executorch   .pte        executorch   fp32 fp16        -
    executorch  portable   executorch   .pte        executorch   fp32             fp32
    tflite      -          tflite       .tflite     litert       fp32 fp16 int8   fp32 fp16 int8 (a folder, a file each)
    onnx        -          onnx_export  .onnx       onnxruntime  fp32             -

``module`` (in this package) converts the target and loads its runner (``convert``,
``load_runner``, and where it has split programs ``convert_split``, ``load_split_runner``);
``loaders`` are the ways `mvmoe profile memory` can load the artifact; ``apps`` the demo apps that
run it; ``platforms``, ``runtime_package`` and ``min_ios`` what the .json tells an app it needs.
Adding a target is one record here and one converter module.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ExportTarget:
    name: str  # --target
    backend: str | None  # --backend (ExecuTorch only)
    module: str  # the converter module in this package
    suffix: str  # artifact suffix
    runtime: str  # what runs the artifact (latency and memory JSON "runtime")
    precisions: tuple[str, ...]
    split_precisions: tuple[str, ...] = ()  # --experts split exports these; () = no split programs
    split_suffix: str | None = None  # the split artifact's suffix ("" = a folder)
    loaders: tuple[str, ...] = ()  # `profile memory --loader` choices; () = not measured
    apps: tuple[str, ...] = ()  # demo apps that run the artifact
    auto_split: bool = False  # --experts auto picks split programs here (where they were measured faster)
    platforms: tuple[str, ...] = ()  # phone OSes whose runtime loads the artifact
    runtime_package: str | None = None  # the Python package whose release is the app's minimum runtime
    min_ios: str | None = None  # the iOS deployment target a Core ML conversion asks for
    split_min_ios: str | None = None  # the same for split programs (multifunction packages: 18)
    decomposed_layernorm: tuple[str, ...] = ()  # precisions where --layer-norm decomposed applies

    @property
    def label(self) -> str:
        """``executorch-xnnpack``, ``tflite``: how messages name it."""
        return f"{self.name}-{self.backend}" if self.backend else self.name


TARGETS = (
    ExportTarget("coreml", None, "coreml", ".mlpackage", "coreml", ("fp32", "fp16"),
                 split_precisions=("fp32", "fp16"), split_suffix=".mlpackage", apps=("ios",), platforms=("ios",),
                 min_ios="17.0", split_min_ios="18.0"),
    ExportTarget("executorch", "xnnpack", "executorch", ".pte", "executorch", ("fp32", "int8"),
                 split_precisions=("fp32", "int8"), split_suffix=".pte", loaders=("mmap", "file"), apps=("android",),
                 auto_split=True, platforms=("android", "ios"), runtime_package="executorch",
                 decomposed_layernorm=("fp32",)),
    ExportTarget("executorch", "coreml", "executorch", ".pte", "executorch", ("fp32", "fp16"), loaders=("mmap", "file"),
                 platforms=("ios",), runtime_package="executorch", min_ios="17.0"),
    ExportTarget("executorch", "portable", "executorch", ".pte", "executorch", ("fp32",),
                 split_precisions=("fp32",), split_suffix=".pte", loaders=("mmap", "file"), apps=("android",),
                 platforms=("android", "ios"), runtime_package="executorch"),
    ExportTarget("tflite", None, "tflite", ".tflite", "litert", ("fp32", "fp16", "int8"),
                 split_precisions=("fp32", "fp16", "int8"), split_suffix="", loaders=("mmap", "file"),
                 apps=("android",), auto_split=True, platforms=("android",), runtime_package="ai-edge-litert"),
    ExportTarget("onnx", None, "onnx_export", ".onnx", "onnxruntime", ("fp32",), loaders=("file",),
                 runtime_package="onnxruntime"),
)
# The demo apps: where each looks for models (copy_to_app); which artifacts it runs is each record's ``apps``.
APP_DIRS = {"android": Path("apps/android_demo/app/src/main/assets/mvmoe"),
            "ios": Path("apps/ios_demo/MobileVMoEDemo/Models")}
APP_NAMES = {"android": "Android", "ios": "iOS"}
DEFAULT_BACKEND = {"executorch": "xnnpack"}  # --backend when not given



def derived(targets: tuple[ExportTarget, ...]) -> dict:
    """The lookup tables other modules read, computed from the records (this module's constants)."""
    return {
        "TARGET_NAMES": tuple(dict.fromkeys(t.name for t in targets)),  # coreml, executorch, tflite, onnx
        "BACKENDS": tuple(t.backend for t in targets if t.backend),
        "RUNTIME_OF_SUFFIX": {t.suffix: t.runtime for t in targets},  # .pte -> executorch, ...
        "ARTIFACT_SUFFIXES": tuple(dict.fromkeys(t.suffix for t in targets)),
        "LOADERS": {t.runtime: t.loaders for t in targets if t.loaders},  # runtime -> profile memory loaders
        "TARGET_OF_RUNTIME": {t.runtime: t.name for t in targets},  # litert -> tflite, ...
    }


_TABLES = derived(TARGETS)
TARGET_NAMES, BACKENDS = _TABLES["TARGET_NAMES"], _TABLES["BACKENDS"]
RUNTIME_OF_SUFFIX, ARTIFACT_SUFFIXES = _TABLES["RUNTIME_OF_SUFFIX"], _TABLES["ARTIFACT_SUFFIXES"]
LOADERS, TARGET_OF_RUNTIME = _TABLES["LOADERS"], _TABLES["TARGET_OF_RUNTIME"]


def find(name: str, backend: str | None = None) -> ExportTarget | None:
    """The record of ``--target name [--backend backend]`` (the default backend when None), or None."""
    backend = backend or DEFAULT_BACKEND.get(name)
    return next((t for t in TARGETS if t.name == name and t.backend == backend), None)


def split_names() -> tuple[str, ...]:
    """Targets with split programs for some backend: executorch, tflite, coreml."""
    return tuple(dict.fromkeys(t.name for t in TARGETS if t.split_precisions))


def module_of(name: str):
    """The converter module of ``--target name`` (its record's ``module``, in this package)."""
    record = find(name)
    if record is None:
        raise KeyError(name)
    return importlib.import_module(f"{__package__}.{record.module}")


def ios_target(ct, version: str):
    """"17.0" -> ``ct.target.iOS17``: coremltools' member for a deployment target (``ct``: the
    imported coremltools module, which this table does not import)."""
    return getattr(ct.target, f"iOS{version.split('.')[0]}")
