"""Regenerate the default run's numbers in README.md and docs/ from one run of `mvmoe train`.

The default training (`uv run mvmoe train`: digits, dense stage -> superclasses -> Mobile V-MoE,
seed 0) is deterministic on CPU, so its accuracy, superclass groups and expert use are facts a
script can write. Each such span in the docs sits between markers

    <!-- numbers:NAME -->...<!-- /numbers -->

and is rewritten whole from TEMPLATES[NAME]. Numbers that no run here reproduces (timings, exports
of older checkpoints) stay outside the markers, with the date and command that produced them.

    uv run python bench/readme_numbers.py                 # train the default into a temp folder (~5-8 min on 2 cores), rewrite
    uv run python bench/readme_numbers.py --run runs/digits   # reuse a finished default run
    uv run python bench/readme_numbers.py --run runs/digits --check   # exit 1 if the docs are stale
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from mobile_vmoe.errors import MvmoeError, run_script
from mobile_vmoe.fileio import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", "docs/training.md", "docs/export.md"]
SPAN = re.compile(r"<!-- numbers:([a-z0-9-]+) -->(.*?)<!-- /numbers -->", re.S)

TEMPLATES = {
    # README, section 1: what the default run prints
    "default-run": "**{top1:.2f} %** top-1, top-5 {top5:.2f} %, router superclass accuracy {router:.2f} %, expert use "
                   "{usage} val images per expert. The dense stage's {dense_top1:.2f} % is not a baseline",
    # docs/training.md, the current default
    "default-run-training": "dense stage {dense_model} {dense_top1:.2f} % (its only job is the confusion matrix), MoE "
                            "{model} **{top1:.2f} %** top-1, top-5 {top5:.2f} %, router superclass top-1 {router:.2f} %, "
                            "superclasses {groups} ({sizes}), val images per expert {usage} (entropy "
                            "{entropy:.3f} of ln {experts} = {entropy_max:.3f})",
    # docs/export.md: the default run today, beside the dated export tables
    "default-top1": "{top1:.2f} %",
}


def values(run: Path) -> dict:
    """The figures of a finished default run folder (summary.json, dense/summary.json)."""
    try:
        s = json.loads((run / "summary.json").read_text())
        dense = json.loads((run / "dense" / "summary.json").read_text())
    except (OSError, ValueError) as e:
        raise MvmoeError(f"{run}: not a finished default run ({e})") from None
    groups = [n.split(": ", 1)[-1] for n in s.get("superclass_names") or []]
    sizes = sorted(set(s.get("superclass_sizes") or []))
    return {"model": s["model"], "top1": s["top1"], "top5": s["top5"], "router": s["router_superclass_top1"],
            "dense_model": dense["model"], "dense_top1": dense["top1"],
            "usage": "/".join(str(c) for c in s["expert_counts"]),
            "groups": ", ".join(f"`{g}`" for g in groups),
            "sizes": f"{sizes[0]} classes each" if len(sizes) == 1 else "sizes " + "/".join(map(str, sizes)),
            "entropy": s["expert_entropy"], "entropy_max": s["expert_entropy_max"], "experts": s["num_experts"]}


def rewrite(text: str, vals: dict, where: str = "") -> str:
    """Every marked span of `text` rewritten from its template; an unknown name is an error."""
    def one(m: re.Match) -> str:
        if m.group(1) not in TEMPLATES:
            raise MvmoeError(f"{where}: unknown numbers span {m.group(1)!r}; known: {', '.join(TEMPLATES)}")
        return f"<!-- numbers:{m.group(1)} -->{TEMPLATES[m.group(1)].format(**vals)}<!-- /numbers -->"

    return SPAN.sub(one, text)


def train_default(workdir: Path) -> Path:
    """`mvmoe train --out DIR` with nothing else: the default run."""
    out = workdir / "default-run"
    mvmoe = Path(sys.executable).parent / "mvmoe"
    subprocess.run([str(mvmoe), "train", "--out", str(out), "-q"], check=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, help="a finished default run folder (default: train one now)")
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if a doc is stale")
    ap.add_argument("--root", type=Path, default=ROOT, help="the folder holding the docs to rewrite (default: this "
                    "checkout; another one is for a smoke check on copies)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        vals = values(args.run or train_default(Path(tmp)))
    used, stale = set(), []
    for name in DOCS:
        path = args.root / name
        text = path.read_text()
        used |= {m.group(1) for m in SPAN.finditer(text)}
        new = rewrite(text, vals, name)
        if new != text:
            stale.append(name)
            if not args.check:
                atomic_write_text(path, new)
    missing = set(TEMPLATES) - used
    if missing:
        raise MvmoeError(f"no span in {', '.join(DOCS)} for {', '.join(sorted(missing))}")
    print(("stale: " if args.check else "rewrote: ") + (", ".join(stale) or "nothing"))
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    run_script(main)
