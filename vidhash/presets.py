"""Named presets, and settings read from dicts and YAML with errors that name the key.

    python -c "from vidhash.presets import model_preset, generation_preset; print(model_preset('world')); print(generation_preset('world'))"

* **Model presets** (``configs/models.yaml``): keyword sets of ``VidHashTransformer3DModel``'s
  constructor — the model's constructor is its config. :func:`model_arguments` is a dataclass
  made from the constructor's signature (its names, annotations and defaults), so a preset or a
  training config's ``model:`` section with an unknown key or a value of the wrong type is a
  ValueError naming the key, and every default is read from the constructor.
* **Generation presets** (``configs/generation.yaml``): one :class:`~vidhash.generation_config.GenerationConfig`
  per model preset. A saved pipeline carries its own (``VidHashPipeline.generation_config``); a
  pipeline without one gets the preset of its model (:func:`preset_of`).
* :func:`structured` (OmegaConf on a dataclass) and :func:`config_diff`, for every config.
"""
from __future__ import annotations

import functools
import inspect
import json
from dataclasses import asdict, make_dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .generation_config import GenerationConfig

# What a generation preset depends on: a model of another width or depth but these keys (frame
# size, patch, world period, rope) generates with the same settings.
GEOMETRY_KEYS = ("in_channels", "patch_size", "sample_size", "pos_period", "rope")


# ------------------------------------------------------------------------------- loading


def config_error(err: Exception, what: str) -> ValueError:
    """An OmegaConf error as a ValueError naming the key."""
    key = getattr(err, "full_key", None) or getattr(err, "key", None)
    msg = str(err).splitlines()[0]
    return ValueError(f"{what}: bad key {key!r}: {msg}" if key else f"{what}: {msg}")


def structured(cls: type, data: Any, what: str) -> Any:
    """``data`` (a dict, DictConfig or instance) merged onto dataclass ``cls`` → an instance of
    ``cls``; unknown keys and wrong types raise ValueError naming the key (a class's own checks,
    ``__post_init__``, raise theirs)."""
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(cls), data)
        return OmegaConf.to_object(cfg)
    except OmegaConfBaseException as err:
        raise config_error(err, what) from None


def read_presets(name: str) -> dict:
    """A preset file of ``configs/`` (shipped as ``vidhash.configs``) as a dict of named entries."""
    text = files("vidhash.configs").joinpath(name).read_text()
    return OmegaConf.to_container(OmegaConf.create(text), resolve=True)


def _entry(name: str, preset: str, kind: str) -> dict:
    presets = read_presets(name)
    if preset not in presets:
        raise ValueError(f"unknown {kind} preset {preset!r}; known: {', '.join(presets)} ({name})")
    return presets[preset]


def config_diff(have: dict, want: dict, have_label: str = "saved", prefix: str = "") -> str:
    """``"key: <have_label> a, here b; ..."`` for every key whose value differs (nested dicts as
    ``outer.inner``); "" when equal. For errors about a state or checkpoint of another config."""
    diffs = []
    for key in sorted(set(have) | set(want)):
        a, b = have.get(key), want.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            inner = config_diff(a, b, have_label, f"{prefix}{key}.")
            if inner:
                diffs.append(inner)
        elif a != b:
            diffs.append(f"{prefix}{key}: {have_label} {a!r}, here {b!r}")
    return "; ".join(diffs)


# ------------------------------------------------------------------------------- models


@functools.cache
def model_arguments() -> type:
    """A dataclass of ``VidHashTransformer3DModel.__init__``'s arguments: the same names,
    annotations and defaults (read from the signature, nothing repeated)."""
    from .models.transformer_vidhash import VidHashTransformer3DModel

    params = list(inspect.signature(VidHashTransformer3DModel.__init__, eval_str=True).parameters.values())[1:]
    return make_dataclass("VidHashModelArguments", [(p.name, p.annotation, p.default) for p in params])


def model_defaults() -> dict:
    """Every constructor argument at its default."""
    return asdict(model_arguments()())


def check_model_arguments(kwargs: dict, what: str = "model arguments") -> dict:
    """``kwargs`` checked against the constructor's signature (ValueError naming an unknown key
    or a value of the wrong type), with the missing arguments at their defaults."""
    return asdict(structured(model_arguments(), kwargs, what))


def with_model_defaults(saved: dict) -> dict:
    """A saved transformer config with the constructor arguments it lacks at their defaults: a
    folder saved before an argument existed (``prediction`` in ``world-tiny-v1``) had the default
    behaviour."""
    return {**model_defaults(), **saved}


def model_presets() -> tuple[str, ...]:
    """The names in ``configs/models.yaml``."""
    return tuple(read_presets("models.yaml"))


def model_preset(name: str = "tiny") -> dict:
    """Model size ``name`` of ``configs/models.yaml``: every constructor argument (checked)."""
    return check_model_arguments(_entry("models.yaml", name, "model"), f"models.yaml:{name}")


def preset_of(config: dict) -> str | None:
    """The preset of a transformer config: the one it equals, else the only one of its geometry
    (``GEOMETRY_KEYS``: generation settings depend on frames and world, not on width or depth),
    else None."""
    saved = with_model_defaults(dict(config))
    presets = {name: model_preset(name) for name in model_presets()}
    for name, args in presets.items():
        if all(saved.get(k) == v for k, v in args.items()):
            return name
    same = [name for name, args in presets.items() if all(saved.get(k) == args[k] for k in GEOMETRY_KEYS)]
    return same[0] if len(same) == 1 else None


def random_model(preset: str = "tiny", seed: int = 0, **overrides):
    """An untrained ``VidHashTransformer3DModel`` of size ``preset`` with seeded random weights everywhere."""
    import torch

    from .models.transformer_vidhash import VidHashTransformer3DModel

    kwargs = {**model_preset(preset), **overrides}
    torch_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = VidHashTransformer3DModel(**kwargs)
    finally:
        torch.random.set_rng_state(torch_state)
    return model.randomize_(seed).eval()


# ------------------------------------------------------------------------------- generation


def generation_preset(name: str = "tiny") -> GenerationConfig:
    """Generation preset ``name`` of ``configs/generation.yaml`` (one per model preset)."""
    return structured(GenerationConfig, _entry("generation.yaml", name, "generation"), f"generation.yaml:{name}")


def generation_from_dict(data: dict, what: str = "generation config") -> GenerationConfig:
    """A :class:`GenerationConfig` from its dict form (``to_dict``; missing keys at their defaults)."""
    return structured(GenerationConfig, data, what)


def generation_for_model(config: dict) -> GenerationConfig:
    """The generation settings of a model that has none saved: the preset of its size
    (:func:`preset_of`), else ``tiny``."""
    return generation_preset(preset_of(config) or "tiny")


def saved_pipeline_class(folder) -> str | None:
    """The ``_class_name`` a saved pipeline folder's ``model_index.json`` names, or None (no such
    file, or one that does not parse)."""
    try:
        kind = json.loads((Path(folder) / "model_index.json").read_text()).get("_class_name")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return None
    return kind if isinstance(kind, str) else None


def check_not_wan_mini(model: str) -> None:
    """A saved folder whose ``model_index.json`` names a ``WanMiniPipeline`` (``vidhash train
    wan_mini``'s export, e.g. models/wan-mini) is a diffusers Wan model, not a ``VidHashPipeline``:
    ValueError saying so and naming the commands that run it (an unreadable index: its loader says why)."""
    if saved_pipeline_class(model) == "WanMiniPipeline":
        raise ValueError(f"{model}: a wan-mini (WanMiniPipeline) export, not a VidHashPipeline model; "
                         "wan-mini models run with vidhash bench dropin, vidhash bench wan-quality and vidhash calibrate --inputs")
