"""Run by tests/test_preempt.py, alone or under ``torchrun``: ``mvmoe train ARGS...`` with two test
hooks around the training loader of each rank.

- every batch handed to the loop is appended to ``$MVMOE_TEST_RECORD.rank<R>.jsonl`` as
  {"stage", "epoch", "step", "labels"} (each test image has its own class, so labels name samples);
- ``$MVMOE_TEST_BATCH_SLEEP`` seconds of sleep per batch, so that a signal lands mid-epoch.

``write_dataset(root)`` writes the test's ImageFolder: one JPEG per class and broken files.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

N_CLASSES = 320  # one image each: a label names its sample; 3 broken files stay under 1 %
BROKEN = {  # class folder -> (file, what is wrong with it)
    "c003": ("z_zero.jpg", "empty"),  # the index's cheap check flags it
    "c007": ("z_cut.jpg", "truncated"),  # the same (no JPEG end marker)
    "c011": ("z_noise.png", "a PNG signature before noise"),  # passes the check, fails to decode
}


def write_dataset(root: Path, decode_failure: bool = True) -> Path:
    """root/train/c<kkk>/0.jpg (one 24x24 image per class), the BROKEN files, root/val/c<kkk>/0.jpg;
    ``decode_failure=False`` leaves out the file that fails only when decoded (see test_preempt.py)."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in range(N_CLASSES):
            d = root / split / f"c{c:03d}"
            d.mkdir(parents=True, exist_ok=True)
            img = rng.integers(0, 128, (24, 24, 3), dtype=np.uint8) + (c % 128)
            Image.fromarray(img.astype(np.uint8)).save(d / "0.jpg", quality=90)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(buf, "JPEG")
    jpeg = buf.getvalue()
    data = {"empty": b"", "truncated": jpeg[: len(jpeg) // 2],
            "a PNG signature before noise": b"\x89PNG\r\n\x1a\n" + rng.bytes(300)}
    for folder, (name, kind) in BROKEN.items():
        if decode_failure or kind in ("empty", "truncated"):
            (root / "train" / folder / name).write_bytes(data[kind])
    return root


def install_hooks() -> None:
    from mobile_vmoe.train import loop

    record = os.environ.get("MVMOE_TEST_RECORD")
    pause = float(os.environ.get("MVMOE_TEST_BATCH_SLEEP", "0"))
    rank = int(os.environ.get("RANK", "0"))
    train_loader = loop.Stage.train_loader

    def recorded(self, epoch: int, skip: int):
        for k, (images, labels) in enumerate(train_loader(self, epoch, skip)):
            if record:
                with open(f"{record}.rank{rank}.jsonl", "a") as f:
                    f.write(json.dumps({"stage": self.name, "epoch": epoch, "step": skip + k,
                                        "labels": labels.tolist()}) + "\n")
            if pause:
                time.sleep(pause)
            yield images, labels

    loop.Stage.train_loader = recorded


if __name__ == "__main__":
    install_hooks()
    from mobile_vmoe.cli import main

    sys.argv = ["mvmoe", *sys.argv[1:]]
    main()
