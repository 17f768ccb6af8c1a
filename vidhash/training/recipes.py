"""Training recipes (``configs/train/*.yaml``) read into their model family's config class.

    from vidhash.training import load_train_config
    cfg = load_train_config("wan_mini", ["out_dir=/tmp/wan", "batch_size=4"])

A recipe may start from another: ``base: wan_mini`` (a name in the same folder or configs/train/,
or a YAML path relative to the recipe) is read first and the recipe's keys are merged onto it
(sections key by key; lists replaced), so ``configs/train/wan_mini_sparse8.yaml`` states only
what differs from ``wan_mini.yaml``. The saved ``config.yaml`` of a run is the merged whole.

``model_family`` (in the YAML or an override; default ``vidhash``) picks the family
(:mod:`vidhash.training.families`) and with it the config class: ``TrainConfig``
(:mod:`vidhash.training.config`) or the family's subclass. Here, above both, so that the config
module does not import the families that import it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

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
        data = read_recipe(p)
    family = get_family(family_name(data, overrides or []))
    cfg = structured(family.config_class, data, what)
    cfg = apply_overrides(cfg, overrides or [])
    check_train_config(cfg, family)
    return cfg


BASE_KEY = "base"


def read_recipe(path: Path, _seen: tuple[Path, ...] = ()) -> DictConfig:
    """A recipe YAML with its ``base`` chain merged under it (the recipe's keys win); ValueError
    naming the file for a ``base`` that is not a string or that loops, FileNotFoundError for one
    that does not exist."""
    data = OmegaConf.load(str(path))
    if not isinstance(data, DictConfig):
        raise ValueError(f"{path}: a training recipe must be a YAML mapping")
    if BASE_KEY not in data:
        return data
    base = data.pop(BASE_KEY)
    if not isinstance(base, str) or not base:
        raise ValueError(f"{path}: {BASE_KEY} must be a recipe name or a YAML path, got {base!r}")
    here = (*_seen, path.resolve())
    candidates = [path.parent / base, path.parent / f"{base}.yaml"]
    base_path = next((c for c in candidates if c.is_file()), None) or resolve_config_path(base)
    if base_path.resolve() in here:
        raise ValueError(f"{path}: {BASE_KEY} {base!r} loops back to {base_path}")
    return OmegaConf.merge(read_recipe(base_path, here), data)


def family_name(data: Any, overrides: list[str]) -> str:
    """``model_family`` of a YAML's ``data`` and the overrides (the last ``model_family=`` wins)."""
    name = data.get("model_family", "vidhash") if data else "vidhash"
    for item in overrides:
        key, _, value = item.partition("=")
        if key.strip() == "model_family":
            name = value.strip()
    return str(name)
