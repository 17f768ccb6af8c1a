"""Training recipes (``configs/train/*.yaml``) read into their model family's config class.

    from vidhash.training import load_train_config
    cfg = load_train_config("wan_mini", ["out_dir=/tmp/wan", "batch_size=4"])

``model_family`` (in the YAML or an override; default ``vidhash``) picks the family
(:mod:`vidhash.training.families`) and with it the config class: ``TrainConfig``
(:mod:`vidhash.training.config`) or the family's subclass. Here, above both, so that the config
module does not import the families that import it.
"""
from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

from vidhash.config import apply_overrides
from vidhash.presets import structured

from .config import TrainConfig, check_train_config, resolve_config_path
from .families import get_family


def load_train_config(path: str | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """YAML ``path`` (or the defaults) + ``key=value`` overrides, checked; ValueError naming a bad key.
    The config class is the model family's (``model_family``: ``TrainConfig`` for ``vidhash``, a
    subclass with the family's own ``model`` / ``data`` / … sections for another,
    :attr:`~vidhash.training.families.ModelFamily.config_class`)."""
    data: Any = {}
    what = "train config"
    if path is not None:
        p = resolve_config_path(path)
        what = str(p)
        data = OmegaConf.load(str(p))
    family = get_family(family_name(data, overrides or []))
    cfg = structured(family.config_class, data, what)
    cfg = apply_overrides(cfg, overrides or [])
    check_train_config(cfg, family)
    return cfg


def family_name(data: Any, overrides: list[str]) -> str:
    """``model_family`` of a YAML's ``data`` and the overrides (the last ``model_family=`` wins)."""
    name = data.get("model_family", "vidhash") if data else "vidhash"
    for item in overrides:
        key, _, value = item.partition("=")
        if key.strip() == "model_family":
            name = value.strip()
    return str(name)
