"""wan-mini tests run micro models on one intra-op thread (fast and thread-count independent on a
shared 2-core machine). ``tiny_cfg(*overrides)``: configs/train/wan_mini_cpu.yaml at 8 frames."""
from pathlib import Path

import pytest
import torch

CPU_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "train" / "wan_mini_cpu.yaml"


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def tiny_cfg():
    from vidhash.training.wan_family import load_wan_config

    def make(*overrides: str):
        return load_wan_config(str(CPU_CONFIG), ["data.num_frames=8", "noise.max_context_frames=3", "batch_size=2",
                                                 *overrides])

    return make
