"""The export targets: one record per --target / --backend pair, every per-target fact in one place.

    target      backend    module       suffix      runtime      precisions       split programs
    coreml      -          coreml       .mlpackage  coreml       fp32 fp16        fp32 fp16 (one multifunction package)
    executorch  xnnpack    executorch   .pte        executorch   fp32 int8        fp32 int8 (one .pte, a method each)
    executorch  coreml     executorch   .pte        executorch   fp32 fp16        -
    executorch  portable   executorch   .pte        executorch   fp32             fp32
    tflite      -          tflite       .tflite     litert       fp32 fp16 int8   fp32 fp16 int8 (a folder, a file each)
    onnx        -          onnx_export  .onnx       onnxruntime  fp32             -

``module`` (in this package) converts the target and loads its runner; ``loaders`` are the ways
`mvmoe profile memory` can load the artifact; ``apps`` the demo apps that run it. Adding a target is
one record here and one converter module.
"""

from __future__ import annotations

from dataclasses import dataclass


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

    @property
    def label(self) -> str:
        """``executorch-xnnpack``, ``tflite``: how messages name it."""
        return f"{self.name}-{self.backend}" if self.backend else self.name


TARGETS = (
    ExportTarget("coreml", None, "coreml", ".mlpackage", "coreml", ("fp32", "fp16"),
                 split_precisions=("fp32", "fp16"), split_suffix=".mlpackage", apps=("ios",)),
    ExportTarget("executorch", "xnnpack", "executorch", ".pte", "executorch", ("fp32", "int8"),
                 split_precisions=("fp32", "int8"), split_suffix=".pte", loaders=("mmap", "file"), apps=("android",),
                 auto_split=True),
    ExportTarget("executorch", "coreml", "executorch", ".pte", "executorch", ("fp32", "fp16"), loaders=("mmap", "file")),
    ExportTarget("executorch", "portable", "executorch", ".pte", "executorch", ("fp32",),
                 split_precisions=("fp32",), split_suffix=".pte", loaders=("mmap", "file"), apps=("android",)),
    ExportTarget("tflite", None, "tflite", ".tflite", "litert", ("fp32", "fp16", "int8"),
                 split_precisions=("fp32", "fp16", "int8"), split_suffix="", loaders=("mmap", "file"),
                 apps=("android",), auto_split=True),
    ExportTarget("onnx", None, "onnx_export", ".onnx", "onnxruntime", ("fp32",), loaders=("file",)),
)
DEFAULT_BACKEND = {"executorch": "xnnpack"}  # --backend when not given

TARGET_NAMES = tuple(dict.fromkeys(t.name for t in TARGETS))  # coreml, executorch, tflite, onnx
BACKENDS = tuple(t.backend for t in TARGETS if t.backend)
RUNTIME_OF_SUFFIX = {t.suffix: t.runtime for t in TARGETS}  # .pte -> executorch, ...
ARTIFACT_SUFFIXES = tuple(RUNTIME_OF_SUFFIX)
LOADERS = {t.runtime: t.loaders for t in TARGETS if t.loaders}  # runtime -> profile memory loaders
TARGET_OF_RUNTIME = {t.runtime: t.name for t in TARGETS}  # litert -> tflite, ...


def find(name: str, backend: str | None = None) -> ExportTarget | None:
    """The record of ``--target name [--backend backend]`` (the default backend when None), or None."""
    backend = backend or DEFAULT_BACKEND.get(name)
    return next((t for t in TARGETS if t.name == name and t.backend == backend), None)


def split_names() -> tuple[str, ...]:
    """Targets with split programs for some backend: executorch, tflite, coreml."""
    return tuple(dict.fromkeys(t.name for t in TARGETS if t.split_precisions))
