"""Demo apps: golden vectors, the Kotlin logic under JUnit, and a syntax check of every Swift file.

The Kotlin toolchain is provisioned on first use (kotlinc of the Kotlin version the app declares in
gradle/libs.versions.toml, from npm into .cache/kotlin/<version>; JUnit 4 from
apt) and the Kotlin sources are compiled once per session. Nothing here is skipped: a machine that
cannot provision the toolchain fails with a message that says what to install.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
APPS = ROOT / "apps"
GOLDEN = APPS / "golden" / "golden.json"
KOTLIN_MAIN = APPS / "android_demo/app/src/main/java/ai/mvmoe/demo/core"
KOTLIN_TEST = APPS / "android_demo/app/src/test/java/ai/mvmoe/demo/core"
KOTLIN_CACHE = ROOT / ".cache" / "kotlin"
JUNIT = Path("/usr/share/java/junit4.jar")
HAMCREST = Path("/usr/share/java/hamcrest-core.jar")


def _load_make_golden():
    spec = importlib.util.spec_from_file_location("make_golden", APPS / "golden" / "make_golden.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


mg = _load_make_golden()


# ----------------------------------------------------------------------------- golden vectors
def assert_json_close(got, want, path: str = "$", rel: float = 1e-6, abs_: float = 1e-9) -> None:
    """Same structure, keys, strings, ints and bools exactly; floats within rel/abs (numpy's SIMD exp
    differs from the scalar one in the last digit on some CPUs, so float text is not compared)."""
    if isinstance(want, float) or isinstance(got, float):
        assert isinstance(got, (int, float)) and not isinstance(got, bool), f"{path}: {got!r} is not a number"
        assert got == pytest.approx(want, rel=rel, abs=abs_), f"{path}: {got!r} != {want!r}"
    elif isinstance(want, dict):
        assert isinstance(got, dict) and list(got) == list(want), f"{path}: keys {list(got)[:8]} != {list(want)[:8]}"
        for k in want:
            assert_json_close(got[k], want[k], f"{path}.{k}", rel, abs_)
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{path}: length {len(got)} != {len(want)}"
        for i, (g, w) in enumerate(zip(got, want)):
            assert_json_close(g, w, f"{path}[{i}]", rel, abs_)
    else:
        assert type(got) is type(want) and got == want, f"{path}: {got!r} != {want!r}"


def test_assert_json_close_catches_what_matters():
    assert_json_close({"a": [1, 0.1 + 0.2, "x"]}, {"a": [1, 0.3, "x"]})
    for got, want in [({"a": 1}, {"b": 1}), ([1.0], [1.001]), ([1], [1, 2]), ({"a": "x"}, {"a": "y"}),
                      ([True], [1]), ({"a": 1, "b": 2}, {"b": 2, "a": 1})]:
        with pytest.raises(AssertionError):
            assert_json_close(got, want)


def test_make_golden_check_tolerates_last_digit_only():
    assert mg.same({"a": [1, 0.30000000000000004, "x", None]}, {"a": [1, 0.3, "x", None]})
    assert not mg.same([1.0], [1.001]) and not mg.same([True], [1]) and not mg.same({"a": 1, "b": 2}, {"b": 2, "a": 1})
    assert mg.main(["--check"]) == 0


def test_golden_file_is_what_make_golden_writes_now():
    got = json.loads(GOLDEN.read_text(encoding="utf-8"))
    assert_json_close(got, json.loads(mg.dumps(mg.build()))), "rerun: uv run python apps/golden/make_golden.py"
    assert GOLDEN.stat().st_size < 300_000


def _torch_preprocess(rgb: np.ndarray, meta: dict, invert: bool = False) -> np.ndarray:
    """The same app preprocessing steps written with torch ops, independent of the numpy reference."""
    inp = meta["input"]
    nchw = inp["layout"] == "NCHW"
    h, w = (inp["shape"][2], inp["shape"][3]) if nchw else (inp["shape"][1], inp["shape"][2])
    rgb = 255 - rgb if invert else rgb
    frac = (meta.get("preprocessing") or {}).get("crop_fraction", 1.0)
    side = max(1, min(min(rgb.shape[:2]), int(np.floor(min(rgb.shape[:2]) * frac + 0.5))))
    top, left = (rgb.shape[0] - side) // 2, (rgb.shape[1] - side) // 2
    x = torch.from_numpy(rgb[top:top + side, left:left + side].astype(np.float64)).permute(2, 0, 1)[None]
    x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)[0]  # (3, h, w)
    if not inp["preprocessing_baked_in"]:
        mean = torch.tensor(inp["mean"], dtype=torch.float64)[:, None, None]
        std = torch.tensor(inp["std"], dtype=torch.float64)[:, None, None]
        x = (x / inp["scale"] - mean) / std
    return (x if nchw else x.permute(1, 2, 0)).reshape(-1).numpy()


def test_golden_preprocessing_agrees_with_torch_interpolate():
    g = json.loads(GOLDEN.read_text(encoding="utf-8"))
    images = {im["name"]: np.asarray(im["rgb"], dtype=np.uint8).reshape(im["height"], im["width"], 3) for im in g["images"]}
    # every metadata x image, and the light-on-dark one once more with inverted colours
    assert len(g["preprocess"]) == (len(g["metadata"]) + 1) * len(images)
    assert sum(c["invert"] for c in g["preprocess"]) == len(images)
    for case in g["preprocess"]:
        want = _torch_preprocess(images[case["image"]], g["metadata"][case["metadata"]], case["invert"])
        np.testing.assert_allclose(case["expected"], want, atol=1e-5, rtol=0)


def test_golden_reference_by_hand():
    # 2x2 red channel [[0, 100], [200, 40]] resized to 4x4: output (1, 1) samples source (0.25, 0.25)
    # = (0*0.75 + 100*0.25) * 0.75 + (200*0.75 + 40*0.25) * 0.25 = 18.75 + 40 = 58.75.
    img = np.zeros((2, 2, 3), np.uint8)
    img[..., 0] = [[0, 100], [200, 40]]
    out = mg.resize_bilinear(img, 4, 4)
    assert out[1, 1, 0] == pytest.approx(58.75)
    assert out[0, :, 0].tolist() == pytest.approx([0, 25, 75, 100])
    # antialiased downscale, row [0, 100, 200, 40] -> 2 pixels: scale 2, support 2; output 0 has centre 1,
    # taps 0..2 with weights 1 - |j - 1 + 0.5| / 2 = (0.75, 0.75, 0.25) / 1.75 -> (75 + 50) / 1.75;
    # output 1 has centre 3, taps 1..3 with (0.25, 0.75, 0.75) / 1.75 -> (25 + 150 + 30) / 1.75.
    row = np.zeros((1, 4, 3), np.uint8)
    row[0, :, 0] = [0, 100, 200, 40]
    assert mg.resize_bilinear(row, 1, 2)[0, :, 0].tolist() == pytest.approx([125 / 1.75, 205 / 1.75])
    assert mg.center_crop_box(13, 20) == (0, 3, 13)
    assert mg.center_crop_box(21, 9) == (6, 0, 9)
    # crop_fraction 16/18 of a 13-pixel short side: 11.56 -> 12, left (20 - 12) // 2 = 4
    assert mg.center_crop_box(13, 20, 16 / 18) == (0, 4, 12)
    assert mg.center_crop_box(3, 3, 0.1) == (1, 1, 1)  # never below one pixel
    # inversion: 255 - v before the crop; one pixel (255, 0, 51) baked in -> (0, 255, 204)
    px = np.array([[[255, 0, 51]]], np.uint8)
    assert mg.preprocess(px, 1, 1, mg.MEAN, mg.STD, 255.0, "NHWC", True, invert=True).tolist() == [0, 255, 204]
    # parity verdict: logits [1, 2] vs [1.5, 1.75]: max diff 0.5, same top-1 (index 1)
    assert mg.parity_check([[1, 2]], [[1.5, 1.75]], 0.5) == {"max_abs_diff": 0.5, "top1_agree": 1, "total": 1, "ok": True}
    assert mg.parity_check([[1, 2]], [[1.5, 1.75]], 0.4)["ok"] is False
    assert mg.parity_check([[1, 2]], [[2, 1]], None) == {"max_abs_diff": 1.0, "top1_agree": 0, "total": 1, "ok": False}
    # numpy linear percentile on [1, 2, 3, 4]: p90 rank 2.7 -> 3.7; ties in top-k keep the lower index.
    assert mg.bench_stats([4.0, 1.0, 3.0, 2.0])["p90_ms"] == pytest.approx(3.7)
    assert mg.topk(np.array([0.1, 0.4, 0.0, 0.4]), 3) == [1, 3, 0]


def test_golden_stats_match_profile_latency_definitions():
    from mobile_vmoe.profile.timing import summarize

    for b in json.loads(GOLDEN.read_text(encoding="utf-8"))["bench"]:
        s = summarize(b["runs_ms"])
        for key in ("min_ms", "median_ms", "p90_ms", "mean_ms"):
            assert s[key] == pytest.approx(b[key], abs=1e-12), key


# ----------------------------------------------------------------------------- Kotlin toolchain
def _run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def declared_kotlin_version() -> str:
    """The Kotlin version the Android app builds with (gradle/libs.versions.toml, [versions] kotlin)."""
    import tomllib

    toml = tomllib.loads((APPS / "android_demo" / "gradle" / "libs.versions.toml").read_text())
    return toml["versions"]["kotlin"]


def kotlinc_version(kotlinc: Path) -> str:
    """'2.2.21' from `kotlinc -version` ("info: kotlinc-jvm 2.2.21 (JRE 17...)")."""
    r = _run([str(kotlinc), "-version"], timeout=300)
    m = re.search(r"kotlinc-jvm (\S+)", r.stdout + r.stderr)
    assert m, f"cannot read the version from `{kotlinc} -version`: {(r.stdout + r.stderr)[-500:]}"
    return m.group(1)


def _find_kotlinc(version: str) -> Path | None:
    """KOTLINC if set, else the npm install of exactly ``version`` under .cache/kotlin/<version>."""
    for cand in (os.environ.get("KOTLINC"), KOTLIN_CACHE / version / "node_modules/kotlin-compiler/bin/kotlinc"):
        if cand and Path(cand).is_file():
            return Path(cand).resolve()
    return None


def _provision_kotlinc() -> Path:
    """kotlinc of the version the app declares (npm `kotlin-compiler@<version>`), so the tests compile
    the shared Kotlin with the compiler the app uses."""
    version = declared_kotlin_version()
    kotlinc = _find_kotlinc(version)
    if kotlinc is None:
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail(f"kotlinc {version} not found and npm is missing: install Node.js, or set KOTLINC=/path/to/kotlinc")
        prefix = KOTLIN_CACHE / version
        r = _run([npm, "install", "--prefix", str(prefix), f"kotlin-compiler@{version}"], timeout=600)
        kotlinc = _find_kotlinc(version)
        if kotlinc is None:
            pytest.fail(f"`npm install --prefix {prefix} kotlin-compiler@{version}` failed:\n{r.stderr[-2000:]}")
    return kotlinc


def _provision_junit() -> None:
    if JUNIT.is_file() and HAMCREST.is_file():
        return
    apt = shutil.which("apt-get")
    if apt is None:
        pytest.fail(f"{JUNIT} missing and no apt-get: install JUnit 4 + hamcrest-core (Debian package junit4)")
    r = _run([apt, "install", "-y", "junit4"], timeout=600)
    if r.returncode != 0:
        _run([apt, "update"], timeout=600)
        r = _run([apt, "install", "-y", "junit4"], timeout=600)
    if not JUNIT.is_file():
        pytest.fail(f"`apt-get install -y junit4` failed (run as root?):\n{r.stderr[-2000:]}")


@pytest.fixture(scope="session")
def kotlin_build(tmp_path_factory) -> dict:
    """Compile the app's core logic and its JUnit tests once; return the classpath to run them."""
    kotlinc = _provision_kotlinc()
    _provision_junit()
    if shutil.which("java") is None:
        pytest.fail("java not found: install a JDK 17 (kotlinc and JUnit need it)")
    stdlib = kotlinc.parent.parent / "lib" / "kotlin-stdlib.jar"
    assert stdlib.is_file(), f"kotlin-stdlib.jar not beside {kotlinc}"
    out = tmp_path_factory.mktemp("kotlin") / "apps.jar"
    sources = sorted(map(str, [*KOTLIN_MAIN.glob("*.kt"), *KOTLIN_TEST.glob("*.kt")]))
    r = _run([str(kotlinc), *sources, "-cp", str(JUNIT), "-d", str(out)], timeout=900)
    errors = [ln for ln in (r.stdout + r.stderr).splitlines() if "error:" in ln]
    assert r.returncode == 0 and out.is_file(), "kotlinc failed:\n" + "\n".join(errors or [r.stderr[-3000:]])
    return {"cp": os.pathsep.join(map(str, [out, JUNIT, HAMCREST, stdlib])), "kotlinc": kotlinc}


def test_declared_kotlin_version_is_read_from_the_version_catalog(tmp_path):
    assert re.fullmatch(r"\d+\.\d+\.\d+", declared_kotlin_version())
    # the parser reads `kotlinc -version` output, and refuses output without a version
    fake = tmp_path / "kotlinc"
    fake.write_text("#!/bin/sh\necho 'info: kotlinc-jvm 2.2.21 (JRE 17.0.12+7)' >&2\n")
    fake.chmod(0o755)
    assert kotlinc_version(fake) == "2.2.21"
    fake.write_text("#!/bin/sh\necho hello\n")
    with pytest.raises(AssertionError):
        kotlinc_version(fake)


@pytest.mark.slow
def test_kotlin_compiler_is_the_version_the_app_declares(kotlin_build):
    """The JUnit run below compiles with kotlinc of the app's own Kotlin version (libs.versions.toml)."""
    assert kotlinc_version(kotlin_build["kotlinc"]) == declared_kotlin_version()


def test_kotlin_core_has_no_platform_imports():
    for f in KOTLIN_MAIN.glob("*.kt"):
        imports = re.findall(r"^import\s+([\w.]+)", f.read_text(), flags=re.M)
        bad = [i for i in imports if i.startswith(("android.", "androidx.", "org.json", "com.google", "org.pytorch"))]
        assert not bad, f"{f.name} imports platform code: {bad}"


@pytest.mark.slow
def test_kotlin_junit_reproduces_golden(kotlin_build):
    classes = sorted(f"ai.mvmoe.demo.core.{p.stem}" for p in KOTLIN_TEST.glob("*Test.kt"))
    assert len(classes) >= 2
    r = _run(["java", f"-Dmvmoe.golden={GOLDEN}", "-cp", kotlin_build["cp"], "org.junit.runner.JUnitCore", *classes],
             timeout=300)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    m = re.search(r"OK \((\d+) tests\)", r.stdout)
    assert m and int(m.group(1)) >= 10, r.stdout[-2000:]


def _app_cli(kotlin_build, *args) -> None:
    r = _run(["java", "-cp", kotlin_build["cp"], "ai.mvmoe.demo.core.AppCliKt", *map(str, args)], timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]


@pytest.mark.slow
def test_kotlin_benchmark_json_is_read_by_profile_ingest(kotlin_build, tmp_path):
    from mobile_vmoe.profile.ingest import ingest_app_benchmark

    out = tmp_path / "bench.json"
    runs = [3.0, 1.5, 2.25, 10.0, 2.0]
    _app_cli(kotlin_build, "bench", out, *runs)
    raw = json.loads(out.read_text())
    assert raw["format"] == "mvmoe-app-benchmark" and raw["version"] == 1 and raw["runs_ms"] == runs
    assert raw["device"] == 'JVM test ("desktop")'
    got = ingest_app_benchmark(out)
    # sorted [1.5, 2, 2.25, 3, 10]: median 2.25; p90 rank 3.6 -> 3 + 0.6 * 7 = 7.2; mean 18.75 / 5 = 3.75.
    assert (got["runs"], got["min_ms"], got["median_ms"], got["mean_ms"]) == (5, 1.5, 2.25, 3.75)
    assert got["p90_ms"] == pytest.approx(7.2)
    assert (got["runtime"], got["compute_units"], got["threads"]) == ("litert", "cpu", 2)


@pytest.mark.slow
def test_kotlin_pipeline_on_a_real_model_and_export_metadata(kotlin_build, tmp_path):
    """Metadata from the converter's build_metadata -> Kotlin preprocessing -> the exported interface
    (ExportWrapper, in torch) -> Kotlin decoding: what the app shows is what the model says."""
    from helpers import tiny_moe

    from converters.metadata import build_metadata
    from converters.parity import not_run
    from converters.wrapper import prepare_for_export

    model = tiny_moe(10, 3, img_size=32).eval()
    labels = [f"digit {i}, the number" for i in range(10)]  # human names (data.labels) beside the folder ids
    sc = {"names": ["sc0: 0/1/2", "sc1: 3/4/5", "sc2: 6/7/8/9"], "class_to_superclass": [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]}
    ckpt = {"model_config": model.cfg.to_dict(), "class_names": [f"n0000000{i}" for i in range(10)], "superclasses": sc,
            "data": {"name": "digits", "img_size": 32, "in_chans": 3, "mean": mg.MEAN, "std": mg.STD, "labels": labels}}
    rgb = np.random.default_rng(7).integers(0, 256, size=(37, 50, 3), dtype=np.uint8)
    (tmp_path / "image.json").write_text(json.dumps({"width": 50, "height": 37, "rgb": rgb.reshape(-1).tolist()}))

    logits_by_mode = {}
    for baked in (False, True):
        wrapper = prepare_for_export(model, bake_preprocessing=baked, mean=mg.MEAN, std=mg.STD)
        meta = build_metadata(ckpt, wrapper, target="tflite", backend=None, precision="fp32", artifact="m.tflite",
                              dispatch="gather", macs=0, parity_result=not_run("test"), ops={})
        meta_path = tmp_path / f"meta_{baked}.json"
        meta_path.write_text(json.dumps(meta))
        _app_cli(kotlin_build, "preprocess", meta_path, tmp_path / "image.json", tmp_path / "input.json")
        x = np.asarray(json.loads((tmp_path / "input.json").read_text())["input"], dtype=np.float32)
        np.testing.assert_allclose(x, _torch_preprocess(rgb, meta), atol=1e-5, rtol=0)

        with torch.no_grad():
            logits, probs = wrapper(torch.from_numpy(x).view(meta["input"]["shape"]))  # (1, 10), (1, 3)
        logits_by_mode[baked] = logits
        (tmp_path / "out.json").write_text(json.dumps({"logits": logits[0].tolist(), "expert_probs": probs[0].tolist()}))
        _app_cli(kotlin_build, "decode", meta_path, tmp_path / "out.json", tmp_path / "pred.json")
        pred = json.loads((tmp_path / "pred.json").read_text())
        want = torch.topk(logits[0].softmax(-1), 5)
        assert pred["top"] == want.indices.tolist()
        assert pred["labels"] == [labels[i] for i in want.indices.tolist()]
        np.testing.assert_allclose(pred["probs"], want.values.numpy(), atol=1e-6)
        expert = int(probs[0].argmax())
        assert (pred["expert"], pred["superclass"]) == (expert, sc["names"][expert])
    # raw pixels into the baked-in model == normalised pixels into the plain one
    torch.testing.assert_close(logits_by_mode[True], logits_by_mode[False], atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------- Swift
SWIFT_FILES = sorted((APPS / "ios_demo").rglob("*.swift"))


def _swift_errors(path: Path) -> list[str]:
    import tree_sitter_swift
    from tree_sitter import Language, Parser

    parser = Parser(Language(tree_sitter_swift.language()))
    tree = parser.parse(path.read_bytes())
    bad, stack = [], [tree.root_node]
    while stack:
        n = stack.pop()
        if n.is_error or n.is_missing:
            bad.append(f"{path.name}:{n.start_point[0] + 1}:{n.start_point[1] + 1} {'MISSING' if n.is_missing else 'ERROR'} {n.type}")
        stack.extend(n.children)
    return bad


def test_swift_sources_parse():
    assert len(SWIFT_FILES) >= 8, SWIFT_FILES
    errors = [e for f in SWIFT_FILES for e in _swift_errors(f)]
    assert not errors, "\n".join(errors[:20])


def test_swift_syntax_check_catches_errors(tmp_path):
    bad = tmp_path / "Bad.swift"
    bad.write_text("func f( -> Int { return 1 }\nlet x = [1, 2\n")
    assert _swift_errors(bad)


def test_swift_core_has_no_platform_imports():
    for f in (APPS / "ios_demo" / "MobileVMoEDemo" / "Core").glob("*.swift"):
        imports = set(re.findall(r"^import\s+(\w+)", f.read_text(), flags=re.M))
        assert imports <= {"Foundation"}, f"{f.name} imports {imports}"


def test_xcode_project_wires_sources_tests_and_golden():
    pbx = (APPS / "ios_demo" / "MobileVMoEDemo.xcodeproj" / "project.pbxproj").read_text()
    assert pbx.count("{") == pbx.count("}") and pbx.count("(") == pbx.count(")")
    ids = re.findall(r"\b([0-9A-F]{24})\b", pbx)
    defined = set(re.findall(r"^\t\t([0-9A-F]{24}) (?:/\*.*?\*/ )?= \{", pbx, flags=re.M))
    assert set(ids) <= defined, f"undefined object ids: {sorted(set(ids) - defined)[:5]}"
    for needle in ("IPHONEOS_DEPLOYMENT_TARGET = 17.0", "com.apple.product-type.application",
                   "com.apple.product-type.bundle.unit-test", "golden.json", "path = MobileVMoEDemo;",
                   "path = MobileVMoEDemoTests;"):
        assert needle in pbx, needle
    assert (APPS / "ios_demo" / "MobileVMoEDemo" / "Models" / ".gitkeep").is_file()
    assert (APPS / "android_demo" / "app" / "src" / "main" / "assets" / "mvmoe" / ".gitkeep").is_file()


def test_gradle_wrapper_jar_and_distribution_are_pinned():
    """The committed wrapper jar is the one the README names, and the wrapper checks the
    distribution's sha256 (gradle-8.11.1-bin.zip) before unpacking it."""
    import hashlib

    wrapper = APPS / "android_demo" / "gradle" / "wrapper"
    assert hashlib.sha256((wrapper / "gradle-wrapper.jar").read_bytes()).hexdigest() == \
        "55243ef57851f12b070ad14f7f5bb8302daceeebc5bce5ece5fa6edb23e1145c"
    props = dict(line.split("=", 1) for line in (wrapper / "gradle-wrapper.properties").read_text().splitlines() if "=" in line)
    assert props["distributionUrl"].endswith("gradle-8.11.1-bin.zip")
    assert props["distributionSha256Sum"] == "f397b287023acdba1e9f6fc5ea72d22dd63669d59ed4a289a29b1a76eee151c6"


# ----------------------------------------------------------------------------- Swift availability
# APIs the Swift sources use that are newer than the deployment target (17.0), with the first iOS
# that has them, from Apple's documentation pages (developer.apple.com/documentation/coreml/...):
# MLModelConfiguration.functionName 18.0; MLComputePlan and its load(contentsOf:configuration:),
# modelStructure and deviceUsage(for:) 17.4. computePlanSummary is the app's own @available(iOS 17.4).
DEPLOYMENT_IOS = (17, 0)
API_MIN_IOS = {"functionName": (18, 0), "MLComputePlan": (17, 4), "modelStructure": (17, 4),
               "deviceUsage": (17, 4), "computePlanSummary": (17, 4)}


def _ios_version(text: str) -> tuple[int, int]:
    m = re.search(r"iOS\s+(\d+)(?:\.(\d+))?", text)
    return (int(m.group(1)), int(m.group(2) or 0)) if m else DEPLOYMENT_IOS


def _available_at(node, src: bytes) -> tuple[int, int]:
    """The newest iOS the code at ``node`` may assume: the deployment target, raised by every enclosing
    `@available(iOS X, *)` declaration, `if #available(iOS X, *)` then-branch (or later condition
    clause) and `guard #available(iOS X, *)` earlier in the same block."""
    text = lambda n: src[n.start_byte:n.end_byte].decode()  # noqa: E731
    best, child, parent = DEPLOYMENT_IOS, node, node.parent
    while parent is not None:
        if parent.type == "if_statement":
            else_at = next((c.start_byte for c in parent.children if c.type == "else"), parent.end_byte)
            for c in parent.children:
                if c.type == "availability_condition" and c.end_byte <= child.start_byte < else_at:
                    best = max(best, _ios_version(text(c)))
        if parent.type == "statements":
            for sib in parent.children:
                if sib.start_byte >= child.start_byte:
                    break
                if sib.type == "guard_statement":
                    for c in sib.children:
                        if c.type == "availability_condition":
                            best = max(best, _ios_version(text(c)))
        for mods in (c for c in parent.children if c.type == "modifiers"):
            for a in mods.children:
                if a.type == "attribute" and text(a).startswith("@available"):
                    best = max(best, _ios_version(text(a)))
        child, parent = parent, parent.parent
    return best


def _unguarded_uses(src: bytes, name: str = "Source.swift") -> tuple[list[str], set[str]]:
    """(uses of an API of API_MIN_IOS where the enclosing guards allow an older iOS, the APIs seen)."""
    import tree_sitter_swift
    from tree_sitter import Language, Parser

    tree = Parser(Language(tree_sitter_swift.language())).parse(src)
    bad, seen, stack = [], set(), [tree.root_node]
    while stack:
        n = stack.pop()
        stack.extend(n.children)
        word = src[n.start_byte:n.end_byte].decode()
        if n.type in ("simple_identifier", "type_identifier") and word in API_MIN_IOS:
            seen.add(word)
            have, need = _available_at(n, src), API_MIN_IOS[word]
            if have < need:
                bad.append(f"{name}:{n.start_point[0] + 1} {word} needs iOS {need[0]}.{need[1]}, "
                           f"guarded for iOS {have[0]}.{have[1]}")
    return bad, seen


def test_swift_availability_guards_cover_the_apis_they_protect():
    bad, seen = [], set()
    for f in SWIFT_FILES:
        b, s = _unguarded_uses(f.read_bytes(), f.name)
        bad += b
        seen |= s
    assert not bad, "\n".join(bad)
    assert {"functionName", "MLComputePlan", "deviceUsage"} <= seen  # the table is exercised, not vacuous


def test_swift_availability_check_catches_a_missing_or_short_guard():
    code = b"""
@available(iOS 17.4, *)
func plan() async { _ = try? await MLComputePlan.load(contentsOf: u, configuration: c) }
func a() { c.functionName = "x" }
func b() { if #available(iOS 17.4, *) { c.functionName = "x" } }
func d() { if #available(iOS 18.0, *) { } else { c.functionName = "x" } }
func e() { guard #available(iOS 18.0, *) else { return }; c.functionName = "x" }
func g() { if #available(iOS 17.4, *), let p = await computePlanSummary() { print(p) } }
"""
    bad, _ = _unguarded_uses(code)
    assert sorted(b.split()[0] for b in bad) == ["Source.swift:4", "Source.swift:5", "Source.swift:6"], bad


# ----------------------------------------------------------------------------- the sample check
SAMPLE_ANDROID = APPS / "android_demo/app/src/main/assets/sample/digit.png"
SAMPLE_IOS = APPS / "ios_demo/MobileVMoEDemo/Sample/digit.png"


def test_both_apps_bundle_the_sample_the_exporter_reads():
    from converters import app_metadata as A

    assert SAMPLE_ANDROID.read_bytes() == SAMPLE_IOS.read_bytes()
    assert A.SAMPLE_IMAGE.resolve() == SAMPLE_ANDROID.resolve()


@pytest.mark.parametrize("baked", [False, True])
def test_sample_check_is_the_wrapper_on_the_app_preprocessing(baked):
    """The exporter's sample check: the 64x64 sample through the app preprocessing (the numpy reference
    the Kotlin and Swift code reproduce) into the model, and nothing else."""
    import hashlib

    from helpers import tiny_moe
    from PIL import Image

    from converters import app_metadata as A
    from converters.wrapper import prepare_for_export

    model = tiny_moe(7, 3, seed=0).eval()
    wrapper = prepare_for_export(model, bake_preprocessing=baked, mean=mg.MEAN, std=mg.STD)
    inp = {"shape": [1, 3, 16, 16], "layout": "NCHW", "mean": mg.MEAN, "std": mg.STD, "preprocessing_baked_in": baked}
    policy = {"crop_fraction": 14 / 16}
    got = json.loads(json.dumps(A.sample_check(wrapper, inp, policy, "fp32")))
    rgb = np.asarray(Image.open(SAMPLE_ANDROID).convert("RGB"))  # (64, 64, 3), decoded by PIL this time
    assert (got["width"], got["height"], got["image"]) == (64, 64, "digit.png")
    assert got["rgb_sha256"] == hashlib.sha256(rgb.tobytes()).hexdigest()
    x = mg.preprocess(rgb, 16, 16, mg.MEAN, mg.STD, 255.0, "NCHW", baked, crop_fraction=14 / 16)
    np.testing.assert_allclose(A.app_preprocess(rgb, inp, 14 / 16).reshape(-1).numpy(), x, atol=1e-4, rtol=0)
    with torch.no_grad():
        want = wrapper(torch.from_numpy(x).view(1, 3, 16, 16))[0][0]
    np.testing.assert_allclose(got["logits"], want.numpy(), atol=1e-4, rtol=0)
    assert got["top5"] == torch.topk(want, 5).indices.tolist() and got["max_abs_diff_tol"] == 1e-3
    assert A.sample_check(wrapper, inp, policy, "fp32", image=Path("/nonexistent.png")) is None


def test_split_core_ml_packages_say_they_need_ios_18():
    """A split package is multifunction (converted for iOS 18, loaded with functionName): its .json says
    so, and the iOS app refuses it on an older iOS (Parity.runtimeProblem) instead of failing to load."""
    from converters import app_metadata as A

    assert A.runtime_requirement("coreml", None)["min_version"] == "17.0"
    assert A.runtime_requirement("coreml", None, split=True)["min_version"] == "18.0"
    assert A.runtime_requirement("executorch", "xnnpack", split=True)["min_version"] == A._version("executorch")
