"""A complete converter module for a runtime that runs saved torch.export programs: the functions a
target module has (converters.target_modules), and nothing else. tests/test_targets.py adds it as
``converters.fakert`` with one record; it is a file so that `profile memory`'s child process can
load it too."""

from __future__ import annotations

import torch

from converters.programs import export_each
from converters.runner import Runner, SplitChain, take

SHAPE = [1, 3, 16, 16]  # the tiny checkpoint's input


def convert(wrapper, ep, example, path, *, precision, backend=None, calibration=None, metadata=None):
    torch.export.save(ep, str(path))
    return {"kind": "fake", "nodes": len(ep.graph.nodes), "ops": {}}


def run_saved(path):
    module = torch.export.load(str(path)).module()

    def run(*xs):
        with torch.no_grad():
            out = module(*(torch.from_numpy(x) for x in xs))
        return [o.detach().numpy() for o in (out if isinstance(out, (tuple, list)) else (out,))]

    return run


def load_runner(path, threads=None, **options):
    take(options, "the fake runner", loader="mmap")
    return Runner(run_saved(path), "fakert", SHAPE, "float32", threads), None


def convert_split(progs, path, table, *, precision, backend=None, calibration=None, metadata=None):
    path.mkdir()
    for name, ep in export_each(progs).items():
        torch.export.save(ep, str(path / f"{name}.fake"))
    return {"kind": "fake", "nodes": 0, "ops": {}}


def load_split_runner(path, threads=None, **options):
    opt = take(options, "the fake split runner", max_tails=None, loader="mmap")
    trunk = run_saved(path / "trunk.fake")

    def load_tail(e):
        tail = run_saved(path / f"tail_{e}.fake")
        return lambda s, g: tail(s, g)[0]

    chain = SplitChain(trunk, load_tail, len(list(path.glob("tail_*.fake"))), opt["max_tails"])
    chain.input_shape = SHAPE
    return chain.runner("fakert", threads), None
