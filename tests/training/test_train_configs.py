"""Every training recipe in configs/train loads, and the world recipes fit the shipped-model limit
(a fp16 export of at most 20 MB: 10M parameters)."""
from pathlib import Path

import pytest

from vidhash.training import load_train_config
from vidhash.training.families import build_model

RECIPES = sorted(p.stem for p in (Path(__file__).resolve().parents[2] / "configs" / "train").glob("*.yaml"))


def test_recipes_found():
    assert {"cpu_test", "world_tiny", "world_wide"} <= set(RECIPES)


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_loads(name):
    cfg = load_train_config(name)  # the config class follows model_family (wan-mini: WanTrainConfig)
    assert cfg.batch_size > 0 and cfg.out_dir
    assert type(cfg).__name__ == ("WanTrainConfig" if cfg.model_family == "wan" else "TrainConfig")


@pytest.mark.parametrize("name, params", [("world_tiny", 4_942_656), ("world_wide", 8_735_936)])
def test_world_recipes_fit_the_shipping_limit(name, params):
    n = sum(p.numel() for p in build_model(load_train_config(name)).parameters())
    assert n == params and n * 2 <= 20e6  # fp16 bytes
