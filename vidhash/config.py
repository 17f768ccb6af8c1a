"""The ``vidhash generate`` run config, and key=value overrides for every structured config.

    python -c "from vidhash.config import generate_config; print(generate_config(['chunk_frames=2']))"

OmegaConf builds every config from its dataclass, so an unknown key or a value of the wrong type
is an error that names the key. Where each setting lives (one shape each):

* the model's settings are ``VidHashTransformer3DModel``'s constructor arguments; named sizes
  are keyword sets of it (``configs/models.yaml``, :mod:`vidhash.presets`);
* the memory's: :class:`~vidhash.memory.MemorySize` (saved with a state) and
  :class:`~vidhash.memory.MemoryRead` (per call), in :mod:`vidhash.memory`;
* generation's: :class:`~vidhash.generation_config.GenerationConfig` (its ``memory`` section is a
  :class:`~vidhash.generation_config.MemorySettings`: mode + size + read), saved with a
  pipeline; named presets in ``configs/generation.yaml``;
* ``GenerateConfig`` (here) — one ``vidhash generate`` run: model, length, output, seed, files,
  and its ``generation`` settings, which start from the model's own (:func:`generation_for`).
  ``key=value`` overrides may name generation keys without the ``generation.`` prefix
  (``chunk_frames=2``, ``memory.top_k=16``).
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .files import umask
from .generation_config import MEMORY_MODES, GenerationConfig, MemorySettings, check_guidance  # noqa: F401 (re-exported)
from .presets import (  # noqa: F401 (re-exported)
    GEOMETRY_KEYS,
    check_not_wan_mini,
    config_diff,
    config_error,
    generation_for_model,
    generation_from_dict,
    generation_preset,
    model_presets,
    preset_of,
    structured,
    with_model_defaults,
)


@dataclass
class GenerateConfig:
    model: Optional[str] = None  # a saved pipeline folder, or random-tiny / random-small / random-base
    seconds: float = 10.0
    fps: int = 8
    out: str = "clip.mp4"
    seed: int = 0
    actions: Optional[str] = None  # JSON file: ["up", "left", ...] or {"actions": [...]}
    prompt_world: Optional[int] = None  # start from ground-truth frames of this procedural world seed
    prompt_frames: int = 8  # how many (with prompt_world or prompt_video); they lead into the generated path
    prompt_image: Optional[str] = None  # start from this image (resized; one context frame)
    prompt_video: Optional[str] = None  # start from the last prompt_frames frames of this video (resized)
    resume: Optional[str] = None
    save_state: Optional[str] = None
    device: str = "auto"
    dtype: str = "float32"  # the transformer's weights and state: float32, bfloat16 or float16
    generation: GenerationConfig = field(default_factory=GenerationConfig)


# ------------------------------------------------------------------------------- loading


_structured = structured  # (the name other modules import)


DEFAULT_MODEL = "world-tiny-v3"  # the shipped world model: models/world-tiny-v3 of this repository


def resolve_model(model: str | None) -> str:
    """A ``--model`` value as a loadable one: ``None`` → the shipped model (``DEFAULT_MODEL``); a
    bare name of a folder in the repository's ``models/`` (``world-tiny-v3``) → its path;
    ``random-<preset>`` and paths unchanged."""
    name = DEFAULT_MODEL if model is None else str(model)
    if name.startswith("random-") or Path(name).exists() or "/" in name or os.sep in name:
        return name
    for root in (Path(__file__).resolve().parent.parent / "models", Path.cwd() / "models"):
        if (root / name / "model_index.json").is_file():
            return str(root / name)
    if model is None:
        raise ValueError(f"the default model {DEFAULT_MODEL!r} ships in the repository's models/ folder, which this "
                         f"installation cannot see (install from a checkout with pip install -e .); or pass "
                         f"--model PATH or --model random-tiny")
    raise ValueError(f"--model {name!r}: no such folder, and not a model in models/ ({DEFAULT_MODEL}) "
                     f"or random-tiny / random-small / random-base / random-world")


def preset_for_model(model: str | None) -> str:
    """Size preset of a ``--model`` value: ``random-<preset>``, or a saved pipeline folder whose
    transformer config is a named size or has only one's geometry (:func:`vidhash.presets.preset_of`),
    else ``tiny``."""
    if model is None:
        return "tiny"
    if model.startswith("random-"):
        preset = model.removeprefix("random-")
        if preset not in model_presets():
            raise ValueError(f"unknown model {model!r}; random models: {', '.join('random-' + p for p in model_presets())}")
        return preset
    saved = _read_json(Path(model) / "transformer" / "config.json")
    return (preset_of(saved) if saved is not None else None) or "tiny"


def _read_json(path: Path) -> dict | None:
    """``path``'s JSON object; None when it is missing or unreadable (a folder that cannot be
    loaded fails when ``VidHashPipeline.load`` reads it, after the run's own checks)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def generation_for(model: str | None) -> GenerationConfig:
    """The generation settings of a ``--model`` value, read without loading weights — what
    ``VidHashPipeline.load(model).generation_config`` holds: a folder's saved settings
    (``model_index.json``), else the preset of its size; ``random-<preset>``: that preset."""
    if model is not None and not model.startswith("random-"):
        index = Path(model) / "model_index.json"
        saved = (_read_json(index) or {}).get("generation_config")
        if saved is not None:
            return generation_from_dict(saved, f"{index}: generation_config")
    return generation_preset(preset_for_model(model))


def generation_config(preset: str = "tiny", overrides: list[str] | None = None) -> GenerationConfig:
    """The generation preset ``preset`` (``configs/generation.yaml``) with ``key=value`` overrides."""
    return apply_overrides(generation_preset(preset), overrides or [])


def apply_overrides(cfg: Any, overrides: list[str], prefix_for: dict[str, str] | None = None) -> Any:
    """Apply ``key=value`` strings to a dataclass instance; unknown keys and wrong types raise
    ValueError naming the key. ``prefix_for`` maps a top-level name to the prefix it lives under."""
    dotlist, typed = [], {}  # typed: the full key -> the override as the user wrote it
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not key=value")
        key, value = item.split("=", 1)
        first = key.split(".", 1)[0]
        full = f"{prefix_for[first]}.{key}" if prefix_for and first in prefix_for else key
        typed[full] = item
        dotlist.append(f"{full}={value}")
    base = OmegaConf.structured(cfg)
    try:
        merged = OmegaConf.merge(base, OmegaConf.from_dotlist(dotlist))
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        item = typed.get(str(getattr(err, "full_key", None) or ""))
        if item is None:
            raise config_error(err, "override") from None
        hint = " (None is written null)" if item.split("=", 1)[1] in ("None", "none") else ""
        raise ValueError(f"override {item}: {str(err).splitlines()[0]}{hint}") from None
    except ValueError as err:  # a config's own check (__post_init__): name the override it is about
        named = [item for item in overrides if item.split("=", 1)[0].rsplit(".", 1)[-1] in str(err)]
        if not named:
            raise
        raise ValueError(f"{', '.join(named)}: {err}") from None


_GENERATION_KEYS = {f.name: "generation" for f in fields(GenerationConfig)}


def generate_config(overrides: list[str] | None = None, preset: str | None = None, **values: Any) -> GenerateConfig:
    """A ``vidhash generate`` run: the generation settings of ``preset``, else of ``values["model"]``
    (:func:`generation_for`: what the pipeline itself would use), then ``values`` (flags), then
    ``key=value`` overrides."""
    base = generation_preset(preset) if preset is not None else generation_for(values.get("model"))
    data = {"generation": OmegaConf.structured(base)}
    data.update({key: value for key, value in values.items() if value is not None})
    cfg = structured(GenerateConfig, data, "run settings")  # type-checks the flags
    return apply_overrides(cfg, overrides or [], prefix_for=_GENERATION_KEYS)


def to_yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg) if not isinstance(cfg, DictConfig) else cfg)


def save_config(cfg: Any, path: str | os.PathLike) -> Path:
    """Write ``cfg`` as YAML atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(to_yaml(cfg))
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_config(cls: type, path: str | os.PathLike) -> Any:
    """Read YAML into dataclass ``cls`` (unknown keys and wrong types raise ValueError naming the key)."""
    return structured(cls, OmegaConf.load(str(path)), str(path))


# ------------------------------------------------------------------------------- model folders, read without weights


def model_config_for(model: str) -> dict:
    """The transformer constructor arguments of a resolved ``--model`` value, read and checked
    without loading weights: ``random-<preset>``'s, or a folder's ``transformer/config.json``
    (and its ``scheduler/scheduler_config.json`` checked too). ValueError naming the file and the key
    of a malformed folder (a value of the wrong type, out of range, or a JSON that does not parse)."""
    from .models.transformer_vidhash import VidHashTransformer3DModel
    from .presets import check_model_arguments, model_preset

    if model.startswith("random-"):
        return model_preset(preset_for_model(model))
    folder = Path(model)
    if not (folder / "model_index.json").is_file():
        raise ValueError(f"{model}: not a saved pipeline folder (no model_index.json)")
    check_not_wan_mini(model)
    for name in ("model_index.json", "transformer/config.json", "scheduler/scheduler_config.json"):
        if (folder / name).exists():
            _json_object(folder / name)
    path = folder / "transformer" / "config.json"
    saved = {k: v for k, v in _json_object(path).items() if not k.startswith("_")}
    args = check_model_arguments(with_model_defaults(saved), str(path))
    for key in ("in_channels", "patch_size", "hidden_dim", "num_layers", "num_heads", "num_actions", "pos_freqs",
                "sample_size"):
        if args[key] < 1:
            raise ValueError(f"{path}: {key} must be a positive integer, got {args[key]}")
    for key in ("mlp_ratio", "pos_period"):
        if not 0 < args[key] < float("inf"):
            raise ValueError(f"{path}: {key} must be a positive number, got {args[key]}")
    VidHashTransformer3DModel.check_arguments(**args, prefix=f"{path}: ")
    _check_scheduler(folder / "scheduler" / "scheduler_config.json")
    return args


def _json_object(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path} is missing (the model folder is incomplete)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _check_scheduler(path: Path) -> None:
    """The scheduler settings the sampler reads: ``num_train_timesteps`` a positive int, ``shift`` a
    positive number (a missing file or key keeps the scheduler's default)."""
    if not path.exists():
        return
    data = _json_object(path)
    steps = data.get("num_train_timesteps", 1000)
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"{path}: num_train_timesteps must be a positive integer, got {steps!r}")
    shift = data.get("shift", 1.0)
    if not isinstance(shift, (int, float)) or isinstance(shift, bool) or not 0 < shift < float("inf"):
        raise ValueError(f"{path}: shift must be a positive number, got {shift!r}")
