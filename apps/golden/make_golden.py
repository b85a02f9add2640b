"""Write the golden vectors the demo apps' platform-free logic is tested against.

    uv run python apps/golden/make_golden.py          # rewrites apps/golden/golden.json
    uv run python apps/golden/make_golden.py --check  # exit 1 if the committed file is stale

The numpy code below is the reference of the app preprocessing (docs/apps.md, "The app
preprocessing"): optionally invert the colours (255 - v, for a light-on-dark model fed a photo of
dark ink), center-crop a square of ``crop_fraction`` of the short side, antialiased bilinear
resize with half-pixel centres (what torch's F.interpolate(mode="bilinear", align_corners=False,
antialias=True) computes, the resampling of the eval transform's Resize), RGB / scale,
(x - mean) / std, then the declared layout; with ``preprocessing_baked_in`` the app stops after
the resize and hands raw [0, 255] floats to the model. It also holds the parity-set check the apps run at load. tests/test_apps.py checks this reference
against torch, and the Kotlin JUnit tests (apps/android_demo) and the XCTest target
(apps/ios_demo) reproduce every vector in golden.json within 1e-5.

Images are small synthetic RGB arrays (row-major H x W x 3 bytes) so the app tests need no image
decoder. Benchmark statistics use numpy's default linear percentile, the definition
`mvmoe profile latency` and `mvmoe profile ingest` use.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "golden.json"

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


# ----------------------------------------------------------------------------- reference logic
def center_crop_box(h: int, w: int, crop_fraction: float = 1.0) -> tuple[int, int, int]:
    """(top, left, side) of the centred square of side round(min(h, w) * crop_fraction) (halves up,
    at least 1); odd remainders drop the extra row/column at the end."""
    short = min(h, w)
    side = short if crop_fraction == 1.0 else max(1, min(short, int(np.floor(short * crop_fraction + 0.5))))
    return (h - side) // 2, (w - side) // 2, side


def aa_weights(n_out: int, n_in: int) -> list[tuple[int, np.ndarray]]:
    """Per output index: (first source index, normalised weights) of the antialiased bilinear
    (triangle) filter, as torch's _upsample_bilinear2d_aa computes them: scale = n_in / n_out,
    support = max(scale, 1), centre = scale * (o + 0.5), taps int(centre -/+ support + 0.5) clipped
    to the image, weight max(0, 1 - |(j - centre + 0.5) / max(scale, 1)|), divided by their sum.
    Downscaling averages every source pixel under the output pixel (no aliasing); upscaling is
    plain half-pixel bilinear."""
    scale = n_in / n_out
    support = max(scale, 1.0)
    out = []
    for o in range(n_out):
        centre = scale * (o + 0.5)
        lo = max(int(centre - support + 0.5), 0)  # int() truncates toward zero, like C's cast
        hi = min(int(centre + support + 0.5), n_in)
        w = np.maximum(0.0, 1.0 - np.abs((np.arange(lo, hi) - centre + 0.5) / support))
        out.append((lo, w / w.sum() if w.sum() else w))
    return out


def resize_bilinear(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """(H, W, C) -> (out_h, out_w, C) float64: antialiased bilinear, half-pixel centres, what torch's
    F.interpolate(mode="bilinear", align_corners=False, antialias=True) computes."""
    def matrix(n_out: int, n_in: int) -> np.ndarray:  # (n_out, n_in)
        m = np.zeros((n_out, n_in))
        for o, (lo, w) in enumerate(aa_weights(n_out, n_in)):
            m[o, lo:lo + len(w)] = w
        return m

    img = img.astype(np.float64)
    return np.einsum("yi,ijc,xj->yxc", matrix(out_h, img.shape[0]), img, matrix(out_w, img.shape[1]))


def preprocess(rgb: np.ndarray, out_h: int, out_w: int, mean, std, scale: float, layout: str,
               baked: bool, crop_fraction: float = 1.0, invert: bool = False) -> np.ndarray:
    """(H, W, 3) uint8 -> flat float32 model input (1, 3, H, W) or (1, H, W, 3) per `layout`."""
    if invert:
        rgb = 255 - rgb
    top, left, side = center_crop_box(*rgb.shape[:2], crop_fraction)
    x = resize_bilinear(rgb[top:top + side, left:left + side], out_h, out_w)  # (h, w, 3) in [0, 255]
    if not baked:
        x = (x / scale - np.asarray(mean)) / np.asarray(std)
    if layout == "NCHW":
        x = x.transpose(2, 0, 1)
    return x.astype(np.float32).reshape(-1)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(z - z.max())
    return e / e.sum()


def topk(probs: np.ndarray, k: int) -> list[int]:
    """Indices of the k largest, ties broken by the lower index (a stable sort on -p)."""
    return [int(i) for i in np.argsort(-np.asarray(probs), kind="stable")[:k]]


def parity_check(expected: list[list[float]], got: list[list[float]], tol) -> dict:
    """The apps' parity-set verdict: max |logit diff| over all images, top-1 agreement, and ok when
    every top-1 agrees and (tol is None or the max diff <= tol)."""
    diff = max(float(np.abs(np.asarray(e, np.float64) - np.asarray(g, np.float64)).max()) for e, g in zip(expected, got))
    agree = sum(topk(np.asarray(e), 1) == topk(np.asarray(g), 1) for e, g in zip(expected, got))
    return {"max_abs_diff": diff, "top1_agree": int(agree), "total": len(expected),
            "ok": bool(agree == len(expected) and (tol is None or diff <= tol))}


def bench_stats(runs: list[float]) -> dict:
    a = np.asarray(runs, dtype=np.float64)
    return {"min_ms": float(a.min()), "median_ms": float(np.percentile(a, 50)),
            "p90_ms": float(np.percentile(a, 90)), "mean_ms": float(a.mean())}


# ----------------------------------------------------------------------------- fixtures
def metadata(model: str, target: str, backend, precision: str, ext: str, *, size: int, layout: str,
             baked: bool, labels: list[str], experts: int, superclasses, crop_fraction: float = 1.0,
             polarity=None, runtime=None) -> dict:
    """A metadata dict as `mvmoe export` writes it (docs/apps.md; the apps parse exactly these keys)."""
    stem = f"{model}_{target}{'-' + backend if backend else ''}_{precision}"
    shape = [1, 3, size, size] if layout == "NCHW" else [1, size, size, 3]
    outputs = [{"name": "logits", "shape": [1, len(labels)]}]
    if experts:
        outputs.append({"name": "expert_probs", "shape": [1, experts]})
    return {
        "model": model, "target": target, "backend": backend, "precision": precision, "artifact": f"{stem}.{ext}",
        "input": {"name": "image", "shape": shape, "layout": layout, "dtype": "float32", "mean": MEAN, "std": STD,
                  "scale": 255.0, "preprocessing_baked_in": baked, "resize": "center-crop-then-bilinear"},
        "outputs": outputs, "labels": labels, "superclasses": superclasses, "experts": experts, "k": 1 if experts else 0,
        "dispatch": "gather", "macs": 1234567,
        "parity": {"ran": True, "max_abs_diff": 3.1e-06, "top1_agreement": 1.0, "images": 64, "reason": None},
        "ops": {"total": 10, "delegated": 9}, "versions": {"mvmoe": "0.1.0", "torch": "2.14.0"},
        "preprocessing": {"resize": "center-crop-then-bilinear", "crop": "center-square", "crop_fraction": crop_fraction,
                          "interpolation": "bilinear", "align_corners": False, "antialias": True, "scale": 255.0,
                          "mean": MEAN, "std": STD, "layout": layout, "baked_in": baked, "polarity": polarity,
                          "eval_transform": "golden fixture"},
        "runtime": runtime or {"name": {"tflite": "litert", "coreml": "coreml"}.get(target, target),
                               "min_version": "17.0" if target == "coreml" else "2.3.0", "backend": backend,
                               "platforms": ["ios"] if target == "coreml" else ["android"]},
        "artifact_file": {"bytes": 4, "sha256": "88d4266fd4e6338d13b845fcf289579d209c897823b9217da3e161936f031589"},
    }


def build() -> dict:
    rng = np.random.default_rng(20231104)
    labels = [f"class_{i}" for i in range(10)]
    labels[3] = "quote \"three\" \\ \u00e9"  # the JSON parsers must handle escapes and non-ASCII
    sc = {"names": ["sc0: 0/1/3", "sc1: 2/5/7", "sc2: 4/6/8/9"], "class_to_superclass": [0, 0, 1, 0, 2, 1, 2, 1, 2, 2]}
    metas = [
        metadata("vmoe-6x64-p4", "tflite", None, "fp32", "tflite", size=8, layout="NHWC", baked=False,
                 labels=labels, experts=3, superclasses=sc, crop_fraction=16 / 18),
        metadata("vmoe-6x64-p4", "coreml", None, "fp16", "mlpackage", size=8, layout="NCHW", baked=True,
                 labels=labels, experts=3, superclasses=sc),
        metadata("vit-6x64-p4", "executorch", "xnnpack", "fp32", "pte", size=8, layout="NCHW", baked=False,
                 labels=labels, experts=0, superclasses=None, polarity="light-on-dark",
                 runtime={"name": "executorch", "min_version": "1.5.1", "backend": "xnnpack", "platforms": ["android", "ios"]}),
    ]
    # A parity set on the first metadata: model-size RGB bytes (base64) with reference logits.
    ps_rgb = [rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8) for _ in range(2)]
    ps_logits = [[float(v) for v in rng.normal(0, 2, 10)] for _ in ps_rgb]
    metas[0]["parity_set"] = {
        "encoding": "rgb8-base64", "height": 8, "width": 8, "source": "golden fixture", "max_abs_diff_tol": 1e-3,
        "images": [{"rgb": base64.b64encode(r.tobytes()).decode("ascii"), "label": i, "logits": lg}
                   for i, (r, lg) in enumerate(zip(ps_rgb, ps_logits))]}
    m0 = metas[0]["input"]
    parity_inputs = [[float(v) for v in preprocess(r, 8, 8, m0["mean"], m0["std"], m0["scale"], m0["layout"], False)]
                     for r in ps_rgb]  # model-size images: no crop (crop_fraction 1), identity resize

    images = []
    for name, (h, w) in [("wide_13x20", (13, 20)), ("tall_21x9", (21, 9)), ("upsample_5x6", (5, 6)),
                         ("square_16", (16, 16))]:
        images.append({"name": name, "height": h, "width": w,
                       "rgb": rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8).reshape(-1).tolist()})

    cases = []
    for m_i, m in enumerate(metas):
        inp = m["input"]
        layout = inp["layout"]
        out_h, out_w = (inp["shape"][2], inp["shape"][3]) if layout == "NCHW" else (inp["shape"][1], inp["shape"][2])
        frac = m["preprocessing"]["crop_fraction"]
        for img in images:
            rgb = np.asarray(img["rgb"], dtype=np.uint8).reshape(img["height"], img["width"], 3)
            for invert in (False, True) if m["preprocessing"]["polarity"] else (False,):
                x = preprocess(rgb, out_h, out_w, inp["mean"], inp["std"], inp["scale"], layout,
                               inp["preprocessing_baked_in"], frac, invert)
                cases.append({"metadata": m_i, "image": img["name"], "invert": invert,
                              "crop": list(center_crop_box(img["height"], img["width"], frac)),
                              "expected": [float(v) for v in x]})

    outputs = []
    for logits, experts in [
        (rng.normal(0, 3, 10), rng.dirichlet(np.ones(3))),
        ([1000.0, 1001.0, 999.0, 0, 0, 0, 0, 0, 0, 0], [0.2, 0.2, 0.6]),   # large logits: softmax must subtract the max
        ([0.5, 2.0, 2.0, -1.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0], [0.4, 0.4, 0.2]),  # ties: lower index first
    ]:
        p = softmax(logits)
        top = topk(p, 5)
        top_e = topk(np.asarray(experts), 1)[0]
        outputs.append({"logits": [float(v) for v in logits], "probs": [float(v) for v in p], "top5": top,
                        "top5_probs": [float(p[i]) for i in top], "expert_probs": [float(v) for v in experts],
                        "top_expert": top_e, "superclass": sc["names"][top_e]})

    bench = []
    for runs in [[5.0], [3.0, 1.0, 2.0, 4.0], [float(v) for v in np.round(rng.gamma(4, 2, 37), 4)],
                 [2.5, 2.5, 2.5, 9.0, 1.25, 3.75, 2.0, 2.0, 2.0, 2.0]]:
        bench.append({"runs_ms": runs, **bench_stats(runs)})

    parity = []
    for got, tol in [(ps_logits, 1e-3),  # identical: diff 0, 2/2
                     ([[v + 5e-4 for v in ps_logits[0]], ps_logits[1]], 1e-3),  # within tolerance
                     ([[v + 2e-3 for v in ps_logits[0]], ps_logits[1]], 1e-3),  # diff over tolerance
                     ([ps_logits[0], [-v for v in ps_logits[1]]], None)]:  # top-1 flips, top-1-only check
        parity.append({"got": got, "tol": tol, **parity_check(ps_logits, got, tol)})

    return {"format": "mvmoe-app-golden", "version": 2, "tolerance": 1e-5, "metadata": metas, "images": images,
            "preprocess": cases, "outputs": outputs, "bench": bench, "parity_inputs": parity_inputs,
            "parity": parity}


def same(a, b, rel: float = 1e-6, abs_: float = 1e-9) -> bool:
    """Equal JSON values, floats within rel/abs (numpy's SIMD exp differs in the last digit between CPUs)."""
    if isinstance(a, float) or isinstance(b, float):
        num = (int, float)
        return (isinstance(a, num) and isinstance(b, num) and not isinstance(a, bool) and not isinstance(b, bool)
                and abs(a - b) <= max(abs_, rel * abs(b)))
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(same(a[k], b[k], rel, abs_) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y, rel, abs_) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def dumps(golden: dict) -> str:
    return json.dumps(golden, indent=1, ensure_ascii=False, allow_nan=False) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with the committed file instead of writing")
    ap.add_argument("--out", type=Path, default=GOLDEN)
    args = ap.parse_args(argv)
    text = dumps(build())
    if args.check:
        ok = args.out.is_file() and same(json.loads(args.out.read_text(encoding="utf-8")), json.loads(text))
        print(f"{args.out}: {'up to date' if ok else 'STALE, rerun make_golden.py'}")
        return 0 if ok else 1
    fd, tmp = tempfile.mkstemp(dir=args.out.parent, prefix=".golden.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, args.out)
    print(f"wrote {args.out} ({len(text.encode()) // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
