"""Human names of an ImageFolder dataset's classes: the ``labels`` of checkpoints and exported .json.

The class ids are the class folder names, sorted (ImageNet: WNIDs such as ``n01440764``). Their
names come from, first found:

1. ``mvmoe train --class-names FILE`` (any ImageFolder): one name per line, line i naming the i-th
   class folder in sorted order (``ls train/`` order); as many lines as class folders.
2. ImageNet's ``LOC_synset_mapping.txt`` (lines ``n01440764 tench, Tinca tinca``) in the dataset
   folder or up to three folders above it (the Kaggle copy keeps it three levels above
   ``ILSVRC/Data/CLS-LOC``).
3. The devkit's ``meta.mat`` (the ``words`` of each leaf synset) in the dataset folder, its
   ``ILSVRC2012_devkit_t12/data/``, or the same two places in the folder above.

A mapping found by itself (2, 3) that does not name every class folder, or cannot be read, is taken
as not this dataset's: one warning, and the folder names stay the labels. A ``--class-names`` file
that does not fit is an error. Generated datasets (digits, synthetic, shapes) keep their own labels.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from ..errors import MvmoeError
from .imagenet_val import META_NAME, read_devkit_synsets

SYNSET_MAPPING = "LOC_synset_mapping.txt"
LEVELS_UP = 3  # how far above the dataset folder LOC_synset_mapping.txt is looked for
DEVKIT_DATA = Path("ILSVRC2012_devkit_t12") / "data"


def read_names_file(path: str | os.PathLike, classes: list[str]) -> list[str]:
    """``--class-names FILE``: one name per line for the sorted ``classes`` -> the names, in order."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise MvmoeError(f"cannot read --class-names {path}: {e}") from None
    names = [line.strip() for line in lines]
    while names and not names[-1]:  # trailing blank lines
        names.pop()
    if len(names) != len(classes):
        raise MvmoeError(f"--class-names {path} has {len(names)} names for {len(classes)} class folders: give one "
                         f"name per line, in the sorted order of the folders ({classes[0]} first)")
    empty = next((i for i, n in enumerate(names) if not n), None)
    if empty is not None:
        raise MvmoeError(f"--class-names {path} line {empty + 1} is empty (it names class folder {classes[empty]})")
    return names


def read_synset_mapping(path: str | os.PathLike) -> dict[str, str]:
    """LOC_synset_mapping.txt -> {WNID: name}: ``n01440764 tench, Tinca tinca`` -> "tench, Tinca tinca"."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise MvmoeError(f"cannot read {path}: {e}") from None
    out: dict[str, str] = {}
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        wnid, _, name = line.strip().partition(" ")
        if not name.strip():
            raise MvmoeError(f"{path} line {n}: expected '<folder id> <name>', got {line[:60]!r}")
        out[wnid] = name.strip()
    return out


def read_devkit_names(path: str | os.PathLike) -> dict[str, str]:
    """meta.mat -> {WNID: words} of the leaf synsets."""
    return {wnid: words for _, wnid, words in read_devkit_synsets(path)}


def mapping_files(root: Path):
    """(file, reader) for each place a name mapping may sit, in the order they are tried."""
    root = Path(root)
    for place in [root, *root.resolve().parents][: LEVELS_UP + 1]:
        yield place / SYNSET_MAPPING, read_synset_mapping
    for place in (root, root / DEVKIT_DATA, root.parent, root.parent / DEVKIT_DATA):
        yield place / META_NAME, read_devkit_names


def find_class_names(root: str | os.PathLike, classes: list[str]) -> tuple[list[str], str] | None:
    """(names of ``classes``, the file they came from) from the first mapping file found near
    ``root``, or None (none found, or the first found does not fit: a warning)."""
    for path, read in mapping_files(Path(root)):
        if not path.is_file():
            continue
        try:
            mapping = read(path)
        except MvmoeError as e:
            warnings.warn(f"class names not read ({e}); the labels stay the folder names", stacklevel=2)
            return None
        missing = [c for c in classes if c not in mapping]
        if missing:
            warnings.warn(f"{path} names {len(classes) - len(missing)} of the {len(classes)} class folders (not "
                          f"{missing[0]}): not this dataset's, the labels stay the folder names", stacklevel=2)
            return None
        return [mapping[c] for c in classes], str(path)
    return None


def class_names_of(root: str | os.PathLike, classes: list[str],
                   names_file: str | os.PathLike | None = None) -> tuple[list[str], str] | None:
    """The human names of an ImageFolder's ``classes`` and their source file: ``names_file``
    (``--class-names``) when given, else a mapping found near ``root``; None when there are none."""
    if names_file:
        return read_names_file(names_file, classes), str(Path(names_file).resolve())
    return find_class_names(root, classes)
