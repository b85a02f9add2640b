"""The file index of an ImageFolder split: os.scandir listings, and a cheap check of each file's ends.

``FolderIndex``: the class names, the files as one numpy byte-string array relative to the split
folder (``b"n01440764/n01440764_10026.JPEG"``) and their labels. numpy arrays, not lists of str:
DataLoader workers read them without touching Python refcounts, so forked workers share the
pages instead of copying them.

Each file also gets a cheap check (``broken_reason``: a few reads, never decoded): an empty file,
a .jpg without the JPEG start (FF D8) or end (FF D9) marker or whose header segments do not chain
up to the image data, a .png without the PNG signature. Those are marked in ``FolderIndex.bad`` and both training loaders skip and count them
like the files that fail to decode later (see imagefolder.py).

A cache (``load_or_build``) lets the ranks of one run share one scan: rank 0 scans and writes the
cache atomically, the others wait for it. The cache records every folder's mtime; a file added to
or removed from a class folder (or a subfolder of it: images there belong to the class, as in
torchvision's ImageFolder) changes that folder's mtime, and a stale cache is rebuilt.
Whether a file that passes the check can be decoded is learnt when it is loaded (imagefolder.py).
"""

from __future__ import annotations

import io
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import MvmoeError
from ..fileio import atomic_write_bytes

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
INDEX_VERSION = 3  # 2: images in subfolders of a class folder are indexed; 3: the cheap check's ``bad`` flags
JPEG_EXTENSIONS = (".jpg", ".jpeg")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TAIL_BYTES = 1024  # where the JPEG end marker is looked for (cameras may pad after it)


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS) and not name.startswith(".")


def list_folder(folder: str | os.PathLike) -> tuple[list[str], list[str]]:
    """-> (sorted subfolder names, sorted image file names) of ``folder``; hidden entries skipped."""
    dirs, images = [], []
    with os.scandir(folder) as it:
        for e in it:
            if e.name.startswith("."):
                continue
            if e.is_dir():  # d_type from the directory listing: no stat for plain entries
                dirs.append(e.name)
            elif is_image_file(e.name):
                images.append(e.name)
    dirs.sort()
    images.sort()
    return dirs, images


def jpeg_header_reason(f, size: int) -> str | None:
    """Walk a JPEG's marker segments from after SOI to the start of scan (SOS), reading 4 bytes per
    segment and seeking over the rest: None when they chain up (a frame header, SOF, included);
    else what is wrong. Random bytes between a start and an end marker fail here (DALI's CPU decoder
    was seen to crash on such a file rather than raise)."""
    pos, frame = 2, False
    while pos + 4 <= size:
        f.seek(pos)
        marker, length = f.read(2), int.from_bytes(f.read(2), "big")
        if marker[0] != 0xFF:
            return "bad JPEG header (no marker where one must be)"
        kind = marker[1]
        if kind == 0xFF:  # fill byte
            pos += 1
            continue
        if kind in (0xD8, 0xD9) or 0xD0 <= kind <= 0xD7 or kind == 0x01 or length < 2:
            return "bad JPEG header (unexpected marker before the image data)"
        if kind == 0xDA:
            return None if frame else "bad JPEG header (no frame header)"
        frame |= kind in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF)
        pos += 2 + length
    return "bad JPEG header (it ends before the image data)"


def broken_reason(path: str | os.PathLike) -> str | None:
    """Why the file at ``path`` cannot be an image, without decoding it; None when it looks whole.
    JPEG: the start marker, the header segments up to the image data (``jpeg_header_reason``) and
    the end marker FF D9, searched in the last TAIL_BYTES (entropy data never holds FF D9: FF is
    stuffed as FF 00), so padding after it is allowed. PNG: the signature. Any file: not empty."""
    name = str(path).lower()
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if not head:
                return "empty file"
            if name.endswith(JPEG_EXTENSIONS):
                if head[:2] != b"\xff\xd8":
                    return "no JPEG start marker"
                size = os.fstat(f.fileno()).st_size
                f.seek(max(0, size - TAIL_BYTES))
                if b"\xff\xd9" not in f.read(TAIL_BYTES):
                    return "no JPEG end marker (truncated?)"
                return jpeg_header_reason(f, size)
            elif name.endswith(".png") and head != PNG_SIGNATURE:
                return "no PNG signature"
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    return None


def check_files(folder: str | os.PathLike, files: list[bytes], threads: int = 16) -> np.ndarray:
    """(N,) bool: ``broken_reason`` is not None for folder/files[i] (threads overlap the reads)."""
    paths = [os.path.join(folder, f.decode()) for f in files]
    if not paths:
        return np.zeros(0, dtype=bool)
    with ThreadPoolExecutor(min(threads, len(paths))) as pool:
        return np.fromiter((r is not None for r in pool.map(broken_reason, paths, chunksize=256)), bool, len(paths))


@dataclass
class FolderIndex:
    """One split: ``files`` (N,) bytes relative to ``folder``, ``labels`` (N,) int32 into ``classes``."""

    folder: str
    classes: list[str]
    files: np.ndarray
    labels: np.ndarray
    mtimes: dict  # folder (relative, "" = the split folder) -> st_mtime_ns, for the cache check
    bad: np.ndarray = field(default=None)  # (N,) bool: failed the cheap check (broken_reason)

    def __post_init__(self) -> None:
        if self.bad is None:
            self.bad = check_files(self.folder, list(self.files))

    def __len__(self) -> int:
        return len(self.files)

    def path(self, i: int) -> str:
        return os.path.join(self.folder, self.files[i].decode())


def _walk_visible(top: str):
    """os.walk(top, followlinks=True) as torchvision's ImageFolder walks a class folder, hidden
    folders pruned: -> (folder, file names) pairs."""
    for root, dirs, names in os.walk(top, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        yield root, names


def class_images(folder: str, name: str) -> tuple[list[str], dict[str, int]]:
    """The images of class folder ``folder/name``, subfolders included, as paths relative to
    ``folder`` in torchvision ImageFolder's order (``sorted(os.walk(...))``: by folder path, then file
    name); hidden files and folders are skipped. -> (paths, {relative folder: st_mtime_ns})."""
    images: list[str] = []
    mtimes: dict[str, int] = {}
    start = len(folder.rstrip(os.sep)) + 1
    for root, names in sorted(_walk_visible(os.path.join(folder, name))):
        rel = root[start:].replace(os.sep, "/")
        mtimes[rel] = os.stat(root).st_mtime_ns
        images.extend(f"{rel}/{f}" for f in sorted(names) if is_image_file(f))
    return images, mtimes


def nested_images(ix: FolderIndex) -> int:
    """How many of an index's files sit in a subfolder of their class folder (``class/sub/x.png``)."""
    return int((np.char.count(ix.files, b"/") > 1).sum()) if len(ix.files) else 0


def scan_classes(folder: str | os.PathLike, dirs: list[str], index: dict[str, int]) -> FolderIndex:
    """Index ``folder/<class>/**/<image>`` for the class folders ``dirs`` (labels from ``index``):
    images in subfolders of a class folder belong to that class, as in torchvision's ImageFolder."""
    files: list[bytes] = []
    labels: list[int] = []
    mtimes = {"": os.stat(folder).st_mtime_ns}
    for name in dirs:
        images, folders = class_images(str(folder), name)
        if not images:
            raise MvmoeError(f"class folder {os.path.join(folder, name)} has no images ({', '.join(IMG_EXTENSIONS)}), "
                             "in it or its subfolders; remove it or add its images")
        mtimes.update(folders)
        files.extend(f.encode() for f in images)
        labels.extend([index[name]] * len(images))
    return FolderIndex(str(folder), list(index), np.array(files, dtype=np.bytes_),
                       np.array(labels, dtype=np.int32), mtimes)


def is_fresh(ix: FolderIndex) -> bool:
    """True when no folder of the index changed since it was built (one stat per folder)."""
    try:
        return all(os.stat(os.path.join(ix.folder, d)).st_mtime_ns == t for d, t in ix.mtimes.items())
    except OSError:
        return False


def save_indexes(path: str | os.PathLike, indexes: dict[str, FolderIndex]) -> None:
    """Write ``{split: FolderIndex}`` to one .npz (atomic)."""
    arrays = {"version": np.array(INDEX_VERSION)}
    for split, ix in indexes.items():
        meta = [ix.folder, "\n".join(ix.classes), "\n".join(f"{d}\t{t}" for d, t in ix.mtimes.items())]
        arrays.update({f"{split}.files": ix.files, f"{split}.labels": ix.labels, f"{split}.meta": np.array(meta),
                       f"{split}.bad": ix.bad})

    def write(f):
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        f.write(buf.getvalue())

    atomic_write_bytes(path, write)


def load_indexes(path: str | os.PathLike) -> dict[str, FolderIndex] | None:
    """The indexes of a cache file, or None when it is missing, unreadable, or of another version."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if int(z["version"]) != INDEX_VERSION:
                return None
            out = {}
            for key in z.files:
                if key.endswith(".meta"):
                    split = key[: -len(".meta")]
                    folder, classes, mt = (str(v) for v in z[key])
                    mtimes = {d: int(t) for d, t in (line.split("\t") for line in mt.split("\n"))}
                    out[split] = FolderIndex(folder, classes.split("\n"), z[f"{split}.files"],
                                             z[f"{split}.labels"], mtimes, z[f"{split}.bad"])
            return out
    except (OSError, ValueError, KeyError):
        return None


def load_or_build(cache: str | os.PathLike | None, build, *, rank: int | None = None,
                  wait_s: float = 1800.0, folders: dict[str, str] | None = None) -> dict[str, FolderIndex]:
    """The indexes from ``cache`` when fresh; else rank 0 calls ``build()`` and writes the cache
    while other ranks wait for it (``rank`` defaults to $RANK, as torchrun sets it). ``folders``:
    {split: folder} the cache must index (a cache of another dataset is rebuilt, never used)."""
    if cache is None:
        return build()
    rank = int(os.environ.get("RANK", "0")) if rank is None else rank

    def usable(cached) -> bool:
        same = folders is None or (set(cached) == set(folders) and all(
            os.path.realpath(cached[s].folder) == os.path.realpath(f) for s, f in folders.items()))
        return same and all(is_fresh(ix) for ix in cached.values())

    cached = load_indexes(cache)
    if cached is not None and usable(cached):
        return cached
    if rank == 0:
        built = build()
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        save_indexes(cache, built)
        return built
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:  # rank 0 is scanning: wait for its cache
        time.sleep(0.5)
        cached = load_indexes(cache)
        if cached is not None and usable(cached):
            return cached
    raise MvmoeError(f"rank {rank}: no fresh data index at {cache} after {wait_s:.0f} s (rank 0 writes it)")
