"""The drop-in's tests run tiny models: one intra-op thread is many times faster than two on a
shared 2-core machine (no spinning threads), and results do not depend on the thread count."""
import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here on one intra-op thread (``one_thread`` in tests/conftest.py)."""
