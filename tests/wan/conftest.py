"""wan-mini tests run micro models on one intra-op thread (fast and thread-count independent on a
shared 2-core machine). ``tiny_cfg(*overrides)``: configs/train/wan_mini_cpu.yaml at 8 frames."""
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

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


@pytest.fixture
def tiny_model(tiny_cfg, tmp_path):
    """A tiny randomly initialised wan-mini saved as a ``WanMiniPipeline`` export (its folder)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from vidhash.pipelines.pipeline_wan_mini import WanMiniPipeline
    from vidhash.training.families import build_model

    cfg = tiny_cfg()
    model = build_model(cfg)
    torch.nn.init.normal_(model.proj_out.weight, std=0.2, generator=torch.Generator().manual_seed(1))
    pipe = WanMiniPipeline(model, FlowMatchEulerDiscreteScheduler(shift=3.0), channels=3, **asdict(cfg.condition))
    pipe.save_pretrained(str(tmp_path / "wan-mini"))
    return tmp_path / "wan-mini"
