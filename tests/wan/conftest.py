"""wan-mini tests run micro models on one intra-op thread (fast and thread-count independent on a
shared 2-core machine). ``tiny_cfg(*overrides)``: configs/train/wan_mini_cpu.yaml at 8 frames."""
from pathlib import Path

import pytest

from vidhash.training import load_train_config

CPU_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "train" / "wan_mini_cpu.yaml"
TINY = ["data.num_frames=8", "noise.max_context_frames=3", "batch_size=2"]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here on one intra-op thread (``one_thread`` in tests/conftest.py)."""


@pytest.fixture
def tiny_cfg():
    def make(*overrides: str):
        return load_train_config(str(CPU_CONFIG), [*TINY, *overrides])

    return make
