"""Labels of the official flat ImageNet ``val/`` folder (50,000 loose ILSVRC2012_val_*.JPEG files).

Two label sources, both as distributed:

- ``LOC_val_solution.csv`` (shipped by most mirrors): ``ImageId,PredictionString`` rows such as
  ``ILSVRC2012_val_00008726,n02119789 255 142 454 329 ...``; the first word is the class (WNID).
- the devkit: ``ILSVRC2012_validation_ground_truth.txt`` (line i = the ILSVRC2012_ID, 1..1000, of
  ILSVRC2012_val_<i>.JPEG) plus ``meta.mat`` (its ``synsets`` map ILSVRC2012_ID -> WNID; read with
  scipy.io.loadmat).

``val_labels`` returns {file stem: WNID}; ``sort_val`` moves, links or copies the files into
``val/<WNID>/`` so the folder becomes the usual ImageFolder layout (``mvmoe data sort-val``).
``find_label_files`` looks for these files in a dataset folder so ``--data PATH`` reads a flat
val/ directly when they sit next to it.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
from pathlib import Path

from ..errors import MvmoeError
from .index import list_folder

CSV_NAME = "LOC_val_solution.csv"
GT_NAME = "ILSVRC2012_validation_ground_truth.txt"
META_NAME = "meta.mat"
WNID = re.compile(r"n\d{8}")


def read_solution_csv(path: str | os.PathLike) -> dict[str, str]:
    """LOC_val_solution.csv -> {ImageId: WNID}."""
    out: dict[str, str] = {}
    try:
        with open(path, newline="") as f:
            rows = csv.reader(f)
            header = next(rows, None)
            if header is None or [h.strip() for h in header[:2]] != ["ImageId", "PredictionString"]:
                raise MvmoeError(f"{path} is not a LOC_val_solution.csv: its first line must be "
                                 f"'ImageId,PredictionString', got {','.join(header or [])[:60]!r}")
            for n, row in enumerate(rows, start=2):
                words = row[1].split() if len(row) >= 2 else []
                if not words or not WNID.fullmatch(words[0]):
                    raise MvmoeError(f"{path} line {n}: expected 'ImageId,n######## ...', got {','.join(row)[:60]!r}")
                out[row[0].strip()] = words[0]
    except (OSError, UnicodeDecodeError) as e:
        raise MvmoeError(f"cannot read {path}: {e}") from None
    return out


def read_devkit_synsets(path: str | os.PathLike) -> list[tuple[int, str, str]]:
    """meta.mat -> (ILSVRC2012_ID, WNID, words) of the 1000 leaf synsets (num_children == 0);
    words is the class name, e.g. "tench, Tinca tinca"."""
    try:
        from scipy.io import loadmat
        from scipy.io.matlab import MatReadError
    except ImportError:
        raise MvmoeError("reading the devkit's meta.mat needs scipy (pip install scipy), or use "
                         f"{CSV_NAME} instead") from None
    try:
        synsets = loadmat(str(path), squeeze_me=True)["synsets"]
        out = [(int(s["ILSVRC2012_ID"]), str(s["WNID"]), str(s["words"])) for s in synsets
               if int(s["num_children"]) == 0]
    except (OSError, ValueError, KeyError, TypeError, IndexError, MatReadError) as e:
        raise MvmoeError(f"{path} is not the ImageNet devkit's meta.mat (a 'synsets' struct with "
                         f"ILSVRC2012_ID, WNID, words, num_children): {e}") from None
    if not out:
        raise MvmoeError(f"{path} has no leaf synsets (num_children == 0)")
    return out


def read_devkit_meta(path: str | os.PathLike) -> dict[int, str]:
    """meta.mat -> {ILSVRC2012_ID: WNID} of the 1000 leaf synsets (num_children == 0)."""
    return {i: wnid for i, wnid, _ in read_devkit_synsets(path)}


def read_ground_truth(path: str | os.PathLike, meta: str | os.PathLike) -> dict[str, str]:
    """ILSVRC2012_validation_ground_truth.txt + meta.mat -> {ILSVRC2012_val_<i>: WNID}."""
    id_to_wnid = read_devkit_meta(meta)
    out: dict[str, str] = {}
    try:
        lines = Path(path).read_text().split()
    except (OSError, UnicodeDecodeError) as e:
        raise MvmoeError(f"cannot read {path}: {e}") from None
    for i, word in enumerate(lines, start=1):
        if not word.isdigit() or int(word) not in id_to_wnid:
            raise MvmoeError(f"{path} line {i}: {word[:20]!r} is not an ILSVRC2012_ID of {meta} "
                             f"(the file must hold one id, 1..{len(id_to_wnid)}, per line)")
        out[f"ILSVRC2012_val_{i:08d}"] = id_to_wnid[int(word)]
    return out


def val_labels(labels: str | os.PathLike, meta: str | os.PathLike | None = None) -> dict[str, str]:
    """{file stem: WNID} from a LOC_val_solution.csv, or a devkit ground-truth file with ``meta``."""
    labels = Path(labels)
    if not labels.is_file():
        raise MvmoeError(f"label file not found: {labels}")
    if labels.suffix.lower() == ".csv":
        return read_solution_csv(labels)
    if meta is None:
        meta = next((p for p in (labels.parent / META_NAME, labels.parent.parent / "data" / META_NAME) if p.is_file()),
                    None)
        if meta is None:
            raise MvmoeError(f"{labels} gives ILSVRC2012_IDs: pass the devkit's {META_NAME} too (--meta)")
    return read_ground_truth(labels, meta)


def find_label_files(root: Path) -> tuple[Path, Path | None] | None:
    """(labels, meta) found in the dataset folder ``root`` (or its devkit subfolder), or None."""
    for place in (root, root.parent):
        if (place / CSV_NAME).is_file():
            return place / CSV_NAME, None
    for gt in (root / GT_NAME, root / "ILSVRC2012_devkit_t12" / "data" / GT_NAME):
        meta = gt.parent / META_NAME
        if gt.is_file() and meta.is_file():
            return gt, meta
    return None


def label_flat_files(files: list[str], labels: dict[str, str], where: str) -> list[str]:
    """The WNID of each file name in ``files`` (every file must have one)."""
    out = []
    for f in files:
        wnid = labels.get(os.path.splitext(f)[0])
        if wnid is None:
            raise MvmoeError(f"{where}/{f} has no label in the label file (is it the file for this val/ folder?)")
        out.append(wnid)
    return out


def sort_val(val_dir: str | os.PathLike, labels: str | os.PathLike, meta: str | os.PathLike | None = None, *,
             out: str | os.PathLike | None = None, mode: str = "move") -> dict:
    """Put every loose image of ``val_dir`` into ``out/<WNID>/`` (``out`` defaults to ``val_dir``).

    mode: move | link (hard links: the flat originals stay, no extra space; needs another ``out``)
    | copy. -> {"images", "classes", "mode", "out"}.
    """
    if mode not in ("move", "link", "copy"):
        raise MvmoeError(f"mode {mode!r}: use move, link or copy")
    val = Path(val_dir)
    dest = Path(out) if out is not None else val
    if not val.is_dir():
        raise MvmoeError(f"val folder not found: {val}")
    if mode != "move" and dest.resolve() == val.resolve():
        raise MvmoeError(f"--mode {mode} keeps the flat files: give another --out folder than {val}")
    _, files = list_folder(val)
    if not files:
        raise MvmoeError(f"{val} has no loose image files to sort")
    wnids = label_flat_files(files, val_labels(labels, meta), str(val))
    act = {"move": os.replace, "link": os.link, "copy": shutil.copy2}[mode]
    for wnid in sorted(set(wnids)):
        (dest / wnid).mkdir(parents=True, exist_ok=True)
    for f, wnid in zip(files, wnids):
        act(val / f, dest / wnid / f)
    return {"images": len(files), "classes": len(set(wnids)), "mode": mode, "out": str(dest)}
