"""The drop-in's tests run tiny models: one intra-op thread is many times faster than two on a
shared 2-core machine (no spinning threads), and results do not depend on the thread count."""
import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
