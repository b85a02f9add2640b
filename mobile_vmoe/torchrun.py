"""torchrun that ends a preempted run with the signal's exit code instead of a traceback.

    python -m mobile_vmoe.torchrun --nproc_per_node 8 --no-python mvmoe train ...   # same arguments as torchrun

When SIGTERM (a SLURM / Kubernetes preemption) or SIGINT reaches torchrun's agent, plain torchrun
forwards it to the ranks, waits up to ``--shutdown_timeout`` seconds (default 30) for them, and
then exits 1 with a Python traceback (torch's ``SignalException``), even when every rank stopped
at an agreed step, saved last.pt and exited 143. This wrapper runs the very same launcher and turns
that ending into one line on stderr and exit ``128 + signal`` (143 for SIGTERM, 130 for SIGINT),
which is also what each rank exits with after saving. A rank that failed for any other reason
keeps torchrun's own report and exit code 1.
"""

from __future__ import annotations

import os
import signal
import sys

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import parse_args, run

STOP_CODES = {128 + signal.SIGTERM: "SIGTERM", 128 + signal.SIGINT: "SIGINT"}  # 143, 130


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        run(args)
    except SignalException as e:  # the agent got the signal and has shut the ranks down
        sig = signal.Signals(e.sigval)
        print(f"torchrun: stopped by {sig.name}; the ranks were told to save last.pt and stop "
              f"(exit {128 + sig.value})", file=sys.stderr)
        return 128 + sig.value
    except ChildFailedError as e:  # the ranks got the signal directly and all stopped on it
        codes = {f.exitcode for f in e.failures.values()}
        if len(codes) == 1 and codes <= set(STOP_CODES):
            code = codes.pop()
            print(f"torchrun: every rank stopped on {STOP_CODES[code]} after saving last.pt (exit {code})",
                  file=sys.stderr)
            return code
        raise
    return 0


def exit_now(code: int) -> None:
    """Exit without the interpreter's exit-time finalizers: after a signal torch's rendezvous leaves a
    keep-alive thread whose finalizer prints 'RuntimeError: cannot join current thread' with a
    traceback. The ranks are already shut down (or failed) at this point."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    code = main()
    if code in STOP_CODES:
        exit_now(code)
    sys.exit(code)
