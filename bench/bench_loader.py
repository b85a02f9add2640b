"""Training data loaders side by side, and file indexing at ImageNet scale.

Loaders (one process, no workers, one torch thread, the same generated ImageNet-format folder of
500x375 JPEGs, the DeiT training augmentation at 224 px, batch 32), run interleaved round by round
(A B C ..., A B C ...) so machine load hits them alike:

    mvmoe torch        this project's path: PIL-side crop (JPEG draft) + bicubic resize, flip,
                       RandAugment(2, 9) on the crop, uint8 batches (host work only: on a GPU the
                       normalise + erasing run there)
    mvmoe torch+norm   the same plus normalise + pixel random erasing on the CPU (a CPU-only run)
    mvmoe dali (cpu)   the DALI pipeline in CPU mode (decoders.image_random_crop on the CPU), if installed
    torchvision        ImageFolder + RandomResizedCrop(224) / flip / RandAugment(2, 9) / ToTensor /
                       Normalize, the standard ImageNet example
    timm               timm.data.create_loader (rand-m9-mstd0.5-inc1, bicubic, re_prob 0.25), if installed
    decode only        PIL decode of the same files (a floor for any PIL pipeline)

images per CPU-second (process time, all threads) is what a core buys; wall images/s is what one
process delivers. Ratios are to torchvision's. Indexing: a tree of ``--index-n`` hard links to a
the generated JPEGs in 1000 class folders; torchvision's ImageFolder scan against this project's scan
(os.scandir, no file opened) and against reading its cached index.

    uv run python bench/bench_loader.py                          # ~2-3 min on a busy 2-core box
    uv run python bench/bench_loader.py --index-n 1281167 --rounds 0   # indexing only, at full ImageNet size
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def make_folder(root: Path, classes: int, per_class: int, size=(500, 375)) -> Path:
    """ImageNet-format tree root/{train,val}/<class>/*.JPEG of photo-like JPEGs (smooth + texture)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", 2)):
        for c in range(classes):
            d = root / split / f"n{c:08d}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                low = rng.integers(0, 255, (size[1] // 25, size[0] // 25, 3), dtype=np.uint8)
                img = np.asarray(Image.fromarray(low).resize(size, Image.Resampling.BICUBIC), dtype=np.int16)
                img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f"n{c:08d}_{i}.JPEG", quality=90)
    return root


def loaders(root: Path, batch: int, size: int) -> dict:
    """name -> a function returning an iterator of batches."""
    from torchvision import datasets, transforms

    from mobile_vmoe.data import build_data
    from mobile_vmoe.data.device_batch import DeviceNormalize
    from mobile_vmoe.data.loader import TorchTrainLoader, dali_available

    out = {}
    bundle = build_data(str(root), size, augment="deit")
    mv = TorchTrainLoader(bundle.train, global_batch=batch, seed=0)
    norm = DeviceNormalize(torch.device("cpu"), bundle.mean, bundle.std, bundle.train_erasing)
    epochs = iter(range(10**6))
    out["mvmoe torch"] = lambda: mv.epoch(next(epochs))
    out["mvmoe torch+norm"] = lambda: ((norm(x), y) for x, y in mv.epoch(next(epochs)))
    if dali_available():
        from mobile_vmoe.config import TrainConfig
        from mobile_vmoe.data.dali import DaliTrainLoader
        from mobile_vmoe.train.distributed import DistInfo

        dali = DaliTrainLoader(bundle, TrainConfig(batch_size=batch, workers=1), DistInfo(), global_batch=batch)
        out["mvmoe dali (cpu)"] = lambda: dali.epoch(next(epochs))
    tv_tf = transforms.Compose([transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(),
                                transforms.RandAugment(2, 9), transforms.ToTensor(),
                                transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    tv = torch.utils.data.DataLoader(datasets.ImageFolder(str(root / "train"), tv_tf), batch_size=batch,
                                     shuffle=True, drop_last=True)
    out["torchvision"] = lambda: iter(tv)
    try:
        import timm.data
    except ImportError:
        print("timm not installed: its row is skipped")
    else:
        clamp_timm_posterize()
        ds = timm.data.ImageDataset(str(root / "train"))
        tl = timm.data.create_loader(ds, input_size=(3, size, size), batch_size=batch, is_training=True,
                                     use_prefetcher=False, auto_augment="rand-m9-mstd0.5-inc1",
                                     interpolation="bicubic", re_prob=0.25, re_mode="pixel", num_workers=0)
        out["timm"] = lambda: iter(tl)
    files = [str(p) for p in sorted((root / "train").rglob("*.JPEG"))]

    def decode_only():
        for k in range(0, len(files) - batch + 1, batch):
            yield [Image.open(f).convert("RGB") for f in files[k:k + batch]]

    out["decode only"] = decode_only
    return out


def clamp_timm_posterize() -> None:
    """timm 1.0.31's RandAugment can posterize to 0 bits, which Pillow 13 (installed here) refuses:
    keep at least 1 bit, as older Pillow did in effect."""
    import timm.data.auto_augment as aa

    original = aa.posterize
    for name, fn in list(aa.NAME_TO_OP.items()):
        if fn is original:
            aa.NAME_TO_OP[name] = lambda img, bits, **kw: original(img, max(1, bits), **kw)


def measure(make_iter, batches: int, batch: int) -> tuple[float, float]:
    """-> (images per CPU-second, images per wall-second) over ``batches`` batches (after one warm-up)."""
    it = make_iter()
    next(it)  # warm-up: worker/pipeline start, first file opens
    c0, w0 = time.process_time(), time.perf_counter()
    n = 0
    for _ in range(batches):
        try:
            next(it)
        except StopIteration:
            break
        n += batch
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    return n / max(cpu, 1e-9), n / max(wall, 1e-9)


def bench_loaders(root: Path, rounds: int, batches: int, batch: int, size: int) -> None:
    pipes = loaders(root, batch, size)
    cpu = {k: [] for k in pipes}
    wall = {k: [] for k in pipes}
    for r in range(rounds):
        for name, make in pipes.items():
            c, w = measure(make, batches, batch)
            cpu[name].append(c)
            wall[name].append(w)
    ref_c, ref_w = statistics.median(cpu["torchvision"]), statistics.median(wall["torchvision"])
    print(f"\n| loader ({batch} x {size} px, {rounds} interleaved rounds of {batches} batches, medians) "
          "| images per CPU-second | x torchvision | wall images/s | x torchvision |")
    print("|---|---|---|---|---|")
    for name in pipes:
        c, w = statistics.median(cpu[name]), statistics.median(wall[name])
        print(f"| {name} | {c:.0f} | {c / ref_c:.2f} | {w:.0f} | {w / ref_w:.2f} |")


def make_links(root: Path, n: int, sources: list[Path], classes: int = 1000) -> None:
    """root/<class>/<i>.JPEG: ``n`` hard links to ``sources`` spread over ``classes`` folders."""
    per = -(-n // classes)
    made = 0
    for c in range(classes):
        d = root / f"n{c:08d}"
        d.mkdir(parents=True)
        for i in range(min(per, n - made)):
            os.link(sources[(made + i) % len(sources)], d / f"n{c:08d}_{i}.JPEG")
        made += min(per, n - made)


def bench_index(n: int, sources: list[Path], rounds: int = 2) -> None:
    from torchvision import datasets

    from mobile_vmoe.data.index import list_folder, load_indexes, save_indexes, scan_classes

    tmp = Path(tempfile.mkdtemp(prefix="mvmoe-index-"))
    try:
        t0 = time.perf_counter()
        classes = min(1000, n)  # every class folder gets at least one file (an empty one is refused)
        make_links(tmp / "train", n, sources, classes)
        print(f"\nindexing: {n} hard links in {classes} class folders made in {time.perf_counter() - t0:.0f} s")
        times = {"torchvision ImageFolder": [], "mvmoe scan": [], "mvmoe cached index": []}
        cache = tmp / "index.npz"
        folder = tmp / "train"

        def mv_scan():
            dirs, _ = list_folder(folder)
            return scan_classes(folder, dirs, {d: i for i, d in enumerate(dirs)})

        save_indexes(cache, {"train": mv_scan()})
        for _ in range(rounds):
            for name, fn in (("torchvision ImageFolder", lambda: datasets.ImageFolder(str(folder))),
                             ("mvmoe scan", mv_scan), ("mvmoe cached index", lambda: load_indexes(cache))):
                t0 = time.perf_counter()
                got = fn()
                times[name].append(time.perf_counter() - t0)
                assert len(got.samples if hasattr(got, "samples") else got["train"] if isinstance(got, dict) else got) == n
        ref = min(times["torchvision ImageFolder"])
        print(f"| indexing {n} files (best of {rounds}) | seconds | x torchvision |")
        print("|---|---|---|")
        for name, ts in times.items():
            print(f"| {name} | {min(ts):.2f} | {min(ts) / ref:.2f} |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--classes", type=int, default=8)
    ap.add_argument("--per-class", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (0: indexing only)")
    ap.add_argument("--batches", type=int, default=4, help="batches per loader per round")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--index-n", type=int, default=200_000, help="entries of the indexing benchmark (0: skip)")
    ap.add_argument("--folder", type=Path, default=None, help="reuse (or create) the generated folder here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    root = args.folder or Path(tempfile.mkdtemp(prefix="mvmoe-loader-")) / "data"
    if not (root / "train").is_dir():
        make_folder(root, args.classes, args.per_class)
    print(f"folder {root}: {args.classes} classes x {args.per_class} JPEGs of 500x375; torch threads 1, no workers")
    if args.rounds:
        bench_loaders(root, args.rounds, args.batches, args.batch, args.size)
    if args.index_n:
        bench_index(args.index_n, sorted((root / "train").rglob("*.JPEG")))  # ext4 allows 65,000 links per file


if __name__ == "__main__":
    main()
