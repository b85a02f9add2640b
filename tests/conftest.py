import pytest
import torch

# One intra-op thread: the test models are tiny, and on a shared 2-core machine a second OpenMP
# thread makes each small op wait for a preempted peer (steps 10x slower or worse under load).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
