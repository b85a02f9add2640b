import pytest
import torch

# One intra-op thread: the test models are tiny, and on a shared 2-core machine a second OpenMP
# thread makes each small op wait for a preempted peer (steps 10x slower or worse under load).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def mvmoe(*args: str):
    """``mvmoe ARGS`` through typer's CliRunner -> (exit code, stdout, stderr); a bug (any exception
    but the CLI's own exit) is re-raised with its traceback."""
    from typer.testing import CliRunner

    from mobile_vmoe.cli import app

    res = CliRunner().invoke(app, [str(a) for a in args])
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.stdout, res.stderr
