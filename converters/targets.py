"""The export targets: one record per --target / --backend pair, every per-target fact in one place.

The table is ``TARGETS`` below; each field's comment says what it decides, and the modules that act
per target read it (the CLI's choices and help, the planner, the split matrix, the runners'
options, the profilers, the apps' runtime requirement, the recorded package versions). Each record
names its converter module (``module``, in this package), which converts the target and opens its
artifacts; converters.target_modules imports it by that name. Adding a target is one record here
and one converter module (docs/architecture.md). This module imports nothing of the project.
"""

from __future__ import annotations

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
    auto_split_from: tuple[tuple[str, int], ...] = ()  # --experts auto: (precision, active MACs per image
    #   from which split programs were measured faster than the fused gather); a precision not listed stays fused
    platforms: tuple[str, ...] = ()  # phone OSes whose runtime loads the artifact
    runtime_package: str | None = None  # the Python package whose release is the app's minimum runtime
    min_ios: str | None = None  # the iOS deployment target a Core ML conversion asks for
    split_min_ios: str | None = None  # the same for split programs (multifunction packages: 18)
    decomposed_layernorm: tuple[str, ...] = ()  # precisions where --layer-norm decomposed applies
    packages: tuple[str, ...] = ()  # the Python packages that convert and run it (their versions are recorded)
    runtime_module: str | None = None  # the runtime's Python module (imported first: profile memory's baseline)
    runner_options: tuple[str, ...] = ()  # the keyword options its module's load_runner takes (loader:
    #   profile memory's --loader; per_op: `profile latency --per-op` times from the runner's per_op())
    split_runner_options: tuple[str, ...] = ()  # the same for load_split_runner
    latency_options: tuple[tuple[str, object], ...] = ()  # runner options `profile latency` adds (as an app runs it)
    android_tool: str | None = None  # the Android benchmark binary that runs it (profile.android); None: not on Android
    is_folder: bool = False  # the artifact is a folder (a package), not a file
    runs_on: str | None = None  # the platform.system() its runner needs here (OS_NAMES); None: any

    @property
    def label(self) -> str:
        """``executorch-xnnpack``, ``tflite``: how messages name it."""
        return label(self.name, self.backend)


# what the ExecuTorch records share: the runtime, its loaders and runner options, its Android tool
_EXECUTORCH = dict(loaders=("mmap", "file"), runtime_package="executorch", packages=("executorch",),
                   runtime_module="executorch.runtime", runner_options=("loader", "per_op"),
                   split_runner_options=("max_tails", "loader"), android_tool="executor_runner")
# Core ML predicts on macOS only; `profile latency` times it on every compute unit, as an app runs it
_COREML = dict(packages=("coremltools",), runtime_module="coremltools", runner_options=("compute_units",),
               split_runner_options=("max_tails",), latency_options=(("compute_units", "all"),), is_folder=True,
               runs_on="Darwin")
# Where --experts auto splits (docs/export.md, the table under `--experts auto`, from bench/bench_export.py
# --split: one thread, batch 1, MoE latency over its dense twin's, 2 to 4 runs per cell): split unless the
# fused gather was faster on the mean of the runs at that size by more than 2 % (split keeps one expert
# resident: a tie goes to split). Fused faster by: vmoe-6x96-p32 (50.6M MACs) XNNPACK fp32 3.1 %, int8
# -1.0 %, LiteRT fp32 -5.2 %, int8 -6.4 %; vmoe-12x192-p32 (306M MACs) XNNPACK -2.7 % / -6.0 %, LiteRT
# -5.1 % / -17.3 %. So XNNPACK fp32 splits from 100M MACs (a choice between the two sizes measured), the
# rest at every size (LiteRT fp16 as fp32: its CPU kernels compute fp16 weights in fp32).
AUTO_SPLIT_FROM = {"executorch-xnnpack": (("fp32", 100_000_000), ("int8", 0)),
                   "tflite": (("fp32", 0), ("fp16", 0), ("int8", 0))}
OS_NAMES = {"Darwin": "macOS", "Linux": "Linux", "Windows": "Windows"}  # platform.system() -> what messages say

TARGETS = (
    ExportTarget("coreml", None, "coreml", ".mlpackage", "coreml", ("fp32", "fp16"),
                 split_precisions=("fp32", "fp16"), split_suffix=".mlpackage", apps=("ios",), platforms=("ios",),
                 min_ios="17.0", split_min_ios="18.0", **_COREML),
    ExportTarget("executorch", "xnnpack", "executorch", ".pte", "executorch", ("fp32", "int8"),
                 split_precisions=("fp32", "int8"), split_suffix=".pte", apps=("android",),
                 auto_split_from=AUTO_SPLIT_FROM["executorch-xnnpack"], platforms=("android", "ios"),
                 decomposed_layernorm=("fp32",), **_EXECUTORCH),
    ExportTarget("executorch", "coreml", "executorch", ".pte", "executorch", ("fp32", "fp16"),
                 platforms=("ios",), min_ios="17.0", **{**_EXECUTORCH, "packages": ("executorch", "coremltools"),
                                                         "android_tool": None}),
    ExportTarget("executorch", "portable", "executorch", ".pte", "executorch", ("fp32",),
                 split_precisions=("fp32",), split_suffix=".pte", apps=("android",),
                 platforms=("android", "ios"), **_EXECUTORCH),
    ExportTarget("tflite", None, "tflite", ".tflite", "litert", ("fp32", "fp16", "int8"),
                 split_precisions=("fp32", "fp16", "int8"), split_suffix="", loaders=("mmap", "file"),
                 apps=("android",), auto_split_from=AUTO_SPLIT_FROM["tflite"], platforms=("android",),
                 runtime_package="ai-edge-litert",
                 packages=("litert-torch", "ai-edge-litert"), runtime_module="ai_edge_litert.interpreter",
                 runner_options=("loader",), split_runner_options=("max_tails", "loader"),
                 android_tool="benchmark_model"),
    ExportTarget("onnx", None, "onnx_export", ".onnx", "onnxruntime", ("fp32",), loaders=("file",),
                 runtime_package="onnxruntime", packages=("onnx", "onnxscript", "onnxruntime"),
                 runtime_module="onnxruntime"),
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
        "ARTIFACT_SUFFIXES": tuple(dict.fromkeys(t.suffix for t in targets)),
        "BACKEND_TARGETS": tuple(dict.fromkeys(t.name for t in targets if t.backend)),  # where --backend applies
        "PRECISIONS": tuple(dict.fromkeys(p for t in targets for p in t.precisions)),  # fp32, fp16, int8
        "PACKAGES": tuple(dict.fromkeys(p for t in targets for p in t.packages)),  # recorded versions
    }


_TABLES = derived(TARGETS)
TARGET_NAMES, BACKENDS = _TABLES["TARGET_NAMES"], _TABLES["BACKENDS"]
ARTIFACT_SUFFIXES = _TABLES["ARTIFACT_SUFFIXES"]
BACKEND_TARGETS, PRECISIONS, PACKAGES = _TABLES["BACKEND_TARGETS"], _TABLES["PRECISIONS"], _TABLES["PACKAGES"]


def find(name: str, backend: str | None = None) -> ExportTarget | None:
    """The record of ``--target name [--backend backend]`` (the default backend when None), or None."""
    backend = backend or DEFAULT_BACKEND.get(name)
    return next((t for t in TARGETS if t.name == name and t.backend == backend), None)


def split_names() -> tuple[str, ...]:
    """Targets with split programs for some backend: executorch, tflite, coreml."""
    return tuple(dict.fromkeys(t.name for t in TARGETS if t.split_precisions))


def of_artifact(suffix: str, target: str | None = None, backend: str | None = None) -> ExportTarget | None:
    """The record of an artifact: by the target and backend its .json names, else the first record
    with its suffix (the records of one suffix share module and runtime); None when neither is known."""
    if target is not None:
        return find(target, backend)
    return next((t for t in TARGETS if t.suffix == suffix), None)


def from_dict(d: dict) -> ExportTarget:
    """A record from its JSON form (dataclasses.asdict, lists back to tuples): how a child process
    gets the record its parent resolved."""
    def tup(v):
        return tuple(tup(x) for x in v) if isinstance(v, list) else v

    return ExportTarget(**{k: tup(v) for k, v in d.items()})


def label(target: str, backend: str | None) -> str:
    """``executorch-xnnpack``, ``tflite``: ExportTarget.label of a pair that may have no record."""
    return f"{target}-{backend}" if backend else target


def choices(names, last: str = "or") -> str:
    """("a", "b", "c") -> "a, b or c": the table's names in a message or a help text."""
    names = list(names)
    return f"{', '.join(names[:-1])} {last} {names[-1]}" if len(names) > 1 else "".join(names)


def ios_target(ct, version: str):
    """"17.0" -> ``ct.target.iOS17``: coremltools' member for a deployment target (``ct``: the
    imported coremltools module, which this table does not import)."""
    return getattr(ct.target, f"iOS{version.split('.')[0]}")
