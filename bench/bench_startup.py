"""Start-up times of the command line, side by side with ``import torch``.

Each case is a fresh process (wall time from spawn to exit, the median of ``--runs``), run
interleaved round by round (A B C ..., A B C ...) so the machine's load hits them alike:

    python -c pass          the interpreter alone (a floor)
    mvmoe --help            the console script (the virtual environment's ``mvmoe``)
    mvmoe train --help      a command's help
    mvmoe export --help
    import training path    ``mobile_vmoe.cli`` + ``mobile_vmoe.train`` + ``mobile_vmoe.data``: what a
                            training rank loads before its first step
    import torch            the baseline: anything that trains pays at least this
    import torch+torchvision the floor of a training rank: the data transforms need torchvision, whose
                            package import loads torchvision.models and ops, and with them torch._dynamo

For each it prints the median and min seconds, the ratio to ``import torch`` and how many modules
the process had loaded (and whether torch was among them).

    uv run python bench/bench_startup.py              # ~1 min on a quiet machine, more on a busy one
    uv run python bench/bench_startup.py --runs 9
    uv run python bench/bench_startup.py --before ../other-checkout   # adds that checkout's `mvmoe --help`
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MVMOE = Path(sys.executable).with_name("mvmoe")  # the console script beside this interpreter
# prints "<modules loaded> <torch loaded>" when the process ends (the module count of the case itself)
COUNT = ("import atexit, sys; atexit.register(lambda: print('MODULES', len(sys.modules), 'torch' in sys.modules, "
         "file=sys.stderr))")


def cli(*args: str) -> list[str]:
    """``mvmoe ARGS`` through the console entry point (mobile_vmoe.cli:main), via -c so that the
    module count can be printed; the installed script itself is timed apart (console_script_time)."""
    code = f"{COUNT}; sys.argv = ['mvmoe', *{list(args)!r}]; from mobile_vmoe.cli import main; main()"
    return [sys.executable, "-c", code]


CASES = {
    "python -c pass": [sys.executable, "-c", f"{COUNT}"],
    "mvmoe --help": cli("--help"),
    "mvmoe train --help": cli("train", "--help"),
    "mvmoe export --help": cli("export", "--help"),
    "import training path": [sys.executable, "-c", f"{COUNT}; import mobile_vmoe.cli, mobile_vmoe.train, mobile_vmoe.data"],
    "import torch": [sys.executable, "-c", f"{COUNT}; import torch"],
    "import torch+torchvision": [sys.executable, "-c", f"{COUNT}; import torch, torchvision"],
}


def run_once(cmd: list[str], pythonpath: str | None = None) -> tuple[float, int, bool]:
    env = {**os.environ, "COLUMNS": "100"}
    if pythonpath:  # another checkout's mobile_vmoe ahead of this environment's (editable) install
        env["PYTHONPATH"] = pythonpath
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=pythonpath or ROOT, capture_output=True, text=True, env=env)
    dt = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} failed ({res.returncode}): {res.stderr[-500:]}")
    line = next(ln for ln in res.stderr.splitlines() if ln.startswith("MODULES "))
    _, n, torch_loaded = line.split()
    return dt, int(n), torch_loaded == "True"


def console_script_time(runs: int) -> float | None:
    """Median wall time of the installed ``mvmoe --help`` (no module count: it is the real script)."""
    if not MVMOE.is_file():
        return None
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([str(MVMOE), "--help"], cwd=ROOT, capture_output=True, check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5, help="processes per case (the median is reported)")
    ap.add_argument("--before", type=Path, help="another checkout (e.g. before a change): its `mvmoe --help` is "
                    "timed too, with this environment's packages")
    args = ap.parse_args()
    cases = {name: (cmd, None) for name, cmd in CASES.items()}
    if args.before:
        cases[f"mvmoe --help ({args.before.name})"] = (cli("--help"), str(args.before.resolve()))
    times: dict[str, list[float]] = {name: [] for name in cases}
    info: dict[str, tuple[int, bool]] = {}
    run_once(CASES["import torch"])  # warm the file cache once, untimed
    for _ in range(args.runs):
        for name, (cmd, pythonpath) in cases.items():
            dt, n, torch_loaded = run_once(cmd, pythonpath)
            times[name].append(dt)
            info[name] = (n, torch_loaded)
    script = console_script_time(args.runs)
    base = statistics.median(times["import torch"])
    print(f"start-up, median of {args.runs} fresh processes each, interleaved (python {sys.version.split()[0]}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f})")
    print(f"{'case':28s} {'median s':>9s} {'min s':>7s} {'/ import torch':>15s} {'modules':>8s} {'torch':>6s}")
    for name, ts in times.items():
        n, torch_loaded = info[name]
        print(f"{name:28s} {statistics.median(ts):9.3f} {min(ts):7.3f} {statistics.median(ts) / base:15.2f} "
              f"{n:8d} {'yes' if torch_loaded else 'no':>6s}")
    if script is not None:
        print(f"{'mvmoe --help (script)':28s} {script:9.3f} {'':7s} {script / base:15.2f}")


if __name__ == "__main__":
    main()
