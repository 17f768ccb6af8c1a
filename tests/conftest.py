"""Shared test set-up.

Without a CUDA device the Triton kernels run under the interpreter (``TRITON_INTERPRET=1``).
Triton reads that variable when it is first imported, and diffusers/torch import triton as a
side effect, so it must be set here, before any test module is collected."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def one_thread():
    """One intra-op thread for the test: tiny models run many times faster than on two threads of a
    shared 2-core machine (no spinning), and results do not depend on the thread count. Folders of
    tiny-model tests (integrations, training, wan) use it for every test."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
