"""The README's command examples, as written: every `mvmoe` line parses against the CLI (command,
options, types), and the digits pipeline runs end to end in a fresh folder at tiny settings
(the training lines get a smaller model and fewer epochs appended; everything after them runs as
written, on what they made)."""

from __future__ import annotations

import glob
import os
import re
import shlex
from pathlib import Path

import pytest

from conftest import mvmoe

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def readme_commands(text: str | None = None) -> list[list[str]]:
    """The argument lists after `mvmoe` of every command line in the README's bash blocks: comments
    stripped, backslash continuations joined, `torchrun ... mvmoe` lines included."""
    text = README.read_text() if text is None else text
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    out = []
    for block in blocks:
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            words = shlex.split(line, comments=True)
            if "mvmoe" in words and words[:2] == ["uv", "run"]:
                out.append(words[words.index("mvmoe") + 1:])
    return out


def test_readme_commands_are_found():
    cmds = readme_commands()
    assert len(cmds) >= 25
    assert ["train", "--out", "runs/digits", "--resume"] in cmds
    assert any(c[:2] == ["profile", "memory"] for c in cmds)
    assert readme_commands("```bash\nuv run torchrun --x 8 --no-python mvmoe train \\\n    --recipe r  # c\n```") == \
        [["train", "--recipe", "r"]]


def _click_command(args: list[str]):
    import typer

    from mobile_vmoe.cli import app

    cmd = typer.main.get_command(app)
    while hasattr(cmd, "commands") and args and args[0] in cmd.commands:
        cmd, args = cmd.commands[args[0]], args[1:]
    return cmd, args


@pytest.mark.parametrize("args", readme_commands(), ids=lambda a: " ".join(a)[:60])
def test_every_readme_command_parses(args):
    """Options, their values' types and required arguments as the CLI reads them (the callback is not run)."""
    cmd, rest = _click_command(list(args))
    assert not hasattr(cmd, "commands"), f"`mvmoe {' '.join(args)}`: no such command"
    ctx = cmd.make_context("mvmoe " + " ".join(args[: len(args) - len(rest)]), rest)
    assert ctx.params is not None


TINY = ["--epochs", "1", "--set", "dense_epochs=1", "--set", "depth=3", "--set", "threads=2"]


@pytest.mark.slow
def test_readme_digits_pipeline_runs_as_written(tmp_path, monkeypatch):
    """Sections 1-3 of the README on digits: train (tiny), resume, superclasses, export (ONNX: the
    target that runs everywhere here), profile latency and memory, report — the commands as the
    README writes them, run in order in a fresh folder."""
    monkeypatch.chdir(tmp_path)
    cmds = readme_commands()
    wanted = [["train", "--out", "runs/digits"],
              ["train", "--out", "runs/digits", "--resume"],
              ["superclasses", "--checkpoint", "runs/digits/dense/model.pt", "--data", "digits", "--num", "5",
               "--out", "sc.json"]]
    for w in wanted:
        assert w in cmds, f"README no longer has `mvmoe {' '.join(w)}`"
    code, out, err = mvmoe(*wanted[0], *TINY)
    assert code == 0, err
    code, out, err = mvmoe(*wanted[1])
    assert code == 0 and "top-1" in out, err
    code, out, err = mvmoe(*wanted[2])
    assert code == 0 and '"num_superclasses": 5' in out, err

    export = next(c for c in cmds if c[:2] == ["export", "runs/digits/model.pt"] and "--target" in c)
    code, out, err = mvmoe(*export[: export.index("--target") + 1], "onnx")
    assert code == 0, err
    onnx = sorted(glob.glob("exports/*_onnx_fp32.onnx"))
    assert len(onnx) == 1

    # the profiling loop's body for the ONNX file, then `profile memory` and `report` as written
    loop = next(c for c in cmds if c[:2] == ["profile", "latency"] and c[2] == "$a")
    os.makedirs("lat", exist_ok=True)
    body = [onnx[0] if w == "$a" else w for w in loop]
    body = [f"lat/{Path(onnx[0]).name}.json" if w.startswith("lat/$(basename") else w for w in body]
    code, out, err = mvmoe(*body)
    assert code == 0, err
    memory = next(c for c in cmds if c[:2] == ["profile", "memory"])
    code, out, err = mvmoe("profile", "memory", onnx[0], *memory[3:])  # the default loader suits .onnx
    assert code == 0 and Path("mem.json").is_file(), err
    report = next(c for c in cmds if c and c[0] == "report")
    args = [a for w in report for a in (sorted(glob.glob(w)) if "*" in w else [w])]
    code, out, err = mvmoe(*args)
    assert code == 0, err
    assert {"table.md", "table.csv", "flops_vs_accuracy.png", "routing.png"} <= set(os.listdir("report"))
