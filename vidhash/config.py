"""Structured configs: dataclasses behind the YAML presets in ``configs/`` (shipped as ``vidhash.configs``).

    python -c "from vidhash.config import generate_config; print(generate_config(['chunk_frames=2']))"

OmegaConf builds every config from its dataclass, so an unknown key or a value of the wrong type
is an error that names the key. Presets (``models.yaml``, ``generation.yaml``) hold one named
entry per model size (``tiny``, ``small``, ``base``).

* ``ModelConfig`` — the ``VidHashTransformer3DModel`` constructor arguments.
* ``TemporalMemoryConfig`` — what temporal attention sees beyond the chunk: ``mode`` ``hashed``
  (window + fixed-size ``HashedMemory``), ``window`` (window only) or ``full`` (every past frame,
  dense; the growing baseline), and the memory's size and read width.
* ``GenerationConfig`` — frame size, chunk and window lengths, steps, camera step, memory.
* ``GenerateConfig`` — one ``vidhash generate`` run: model, length, output, seed, files, and
  its ``generation`` settings. ``key=value`` overrides may name generation keys without the
  ``generation.`` prefix (``chunk_frames=2``, ``memory.top_k=16``).
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from importlib.resources import files
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

PRESETS = ("tiny", "small", "base", "world")
GEOMETRY_KEYS = ("in_channels", "patch_size", "sample_size", "pos_period", "rope")  # what a generation preset depends on
MEMORY_MODES = ("hashed", "window", "full")
PREDICTIONS = ("velocity", "sample")  # what a model's last layer produces (its forward always returns a velocity)


@dataclass
class ModelConfig:
    """``VidHashTransformer3DModel`` arguments (see its docstring)."""

    in_channels: int = 3
    patch_size: int = 8
    hidden_dim: int = 128
    num_layers: int = 3
    num_heads: int = 4
    mlp_ratio: float = 2.0
    num_actions: int = 5
    pos_freqs: int = 8
    pos_period: float = 1024.0
    sample_size: int = 64
    qk_norm: bool = True
    memory_hash_bits: int = 0  # > 0: a learned memory signature (LearnedHash) per layer, fitted by vidhash calibrate
    memory_hash_hidden: int = 128
    rope: bool = False  # rotary embedding of world (x, y) on attention queries/keys
    prediction: str = "velocity"  # velocity | sample: the last layer gives the clean frame (the forward still returns a velocity)
    sigma_min: float = 0.05  # prediction=sample: the velocity divides by max(σ, sigma_min)


@dataclass
class TemporalMemoryConfig:
    mode: str = "hashed"
    num_buckets: int = 64
    slots: int = 16
    n_bits: int = 32
    policy: str = "fifo"
    top_k: int = 32
    seed: int = 0
    # read setting: the memory weighs in attention as at most mass_cap keys (each entry counts the
    # tokens merged into it; past the cap all shrink alike, HashedMemory.mass_penalty); 0 = off
    mass_cap: int = 0


@dataclass
class GenerationConfig:
    height: int = 64
    width: int = 64
    chunk_frames: int = 4
    window_frames: int = 8
    num_inference_steps: int = 4
    action_step: int = 4
    memory: TemporalMemoryConfig = field(default_factory=TemporalMemoryConfig)
    # context guidance: v = v_free + scale (v_context - v_free), v_free from a pass without window and
    # memory; 1.0 = off. Only the first guidance_steps denoising steps of a chunk (None: all).
    guidance_scale: float = 1.0
    guidance_steps: Optional[int] = None


@dataclass
class GenerateConfig:
    model: Optional[str] = None  # a saved pipeline folder, or random-tiny / random-small / random-base
    seconds: float = 10.0
    fps: int = 8
    out: str = "clip.mp4"
    seed: int = 0
    actions: Optional[str] = None  # JSON file: ["up", "left", ...] or {"actions": [...]}
    prompt_world: Optional[int] = None  # start from ground-truth frames of this procedural world seed
    prompt_frames: int = 8  # how many (with prompt_world); they lead into the generated path
    resume: Optional[str] = None
    save_state: Optional[str] = None
    device: str = "auto"
    generation: GenerationConfig = field(default_factory=GenerationConfig)


# ------------------------------------------------------------------------------- loading


def _config_error(err: Exception, what: str) -> ValueError:
    key = getattr(err, "full_key", None) or getattr(err, "key", None)
    msg = str(err).splitlines()[0]
    return ValueError(f"{what}: bad key {key!r}: {msg}" if key else f"{what}: {msg}")


def _preset_file(name: str) -> dict:
    text = files("vidhash.configs").joinpath(name).read_text()
    return OmegaConf.to_container(OmegaConf.create(text), resolve=True)


def _structured(cls: type, data: Any, what: str) -> Any:
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(cls), data)
        return OmegaConf.to_object(cfg)
    except OmegaConfBaseException as err:
        raise _config_error(err, what) from None


def model_config(preset: str = "tiny") -> ModelConfig:
    """The model size ``preset`` from ``configs/models.yaml``."""
    presets = _preset_file("models.yaml")
    if preset not in presets:
        raise ValueError(f"unknown model preset {preset!r}; known: {', '.join(presets)}")
    return _structured(ModelConfig, presets[preset], f"models.yaml:{preset}")


def with_model_defaults(saved: dict) -> dict:
    """A saved transformer config with the ``ModelConfig`` keys it lacks at their defaults: a folder
    saved before a key existed (``prediction`` in ``world-tiny-v1``) had the default behaviour."""
    return {**asdict(ModelConfig()), **saved}


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
    transformer config equals a named size (its generation preset then applies), else ``tiny``."""
    if model is None:
        return "tiny"
    if model.startswith("random-"):
        preset = model.removeprefix("random-")
        if preset not in PRESETS:
            raise ValueError(f"unknown model {model!r}; random models: {', '.join('random-' + p for p in PRESETS)}")
        return preset
    cfg_path = Path(model) / "transformer" / "config.json"
    if cfg_path.is_file():
        saved = with_model_defaults(json.loads(cfg_path.read_text()))
        for preset in PRESETS:
            if all(saved.get(k) == v for k, v in asdict(model_config(preset)).items()):
                return preset
        # a wider or deeper model of a preset's geometry (frame size, patch, world period, rope):
        # generation settings depend on the frames and the world, not on width or depth
        same = [p for p in PRESETS if all(saved.get(k) == asdict(model_config(p))[k] for k in GEOMETRY_KEYS)]
        if len(same) == 1:
            return same[0]
    return "tiny"


def generation_config(preset: str = "tiny", overrides: list[str] | None = None) -> GenerationConfig:
    """The generation preset for model size ``preset`` from ``configs/generation.yaml``, with overrides."""
    presets = _preset_file("generation.yaml")
    if preset not in presets:
        raise ValueError(f"unknown generation preset {preset!r}; known: {', '.join(presets)}")
    cfg = _structured(GenerationConfig, presets[preset], f"generation.yaml:{preset}")
    cfg = apply_overrides(cfg, overrides or [])
    check_generation(cfg)
    return cfg


def apply_overrides(cfg: Any, overrides: list[str], prefix_for: dict[str, str] | None = None) -> Any:
    """Apply ``key=value`` strings to a dataclass instance; unknown keys and wrong types raise
    ValueError naming the key. ``prefix_for`` maps a top-level name to the prefix it lives under."""
    dotlist = []
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not key=value")
        key, value = item.split("=", 1)
        first = key.split(".", 1)[0]
        if prefix_for and first in prefix_for:
            key = f"{prefix_for[first]}.{key}"
        dotlist.append(f"{key}={value}")
    base = OmegaConf.structured(cfg)
    try:
        merged = OmegaConf.merge(base, OmegaConf.from_dotlist(dotlist))
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise _config_error(err, "override") from None


def check_guidance(scale: float, steps: int | None) -> None:
    """Context guidance settings (``guidance_scale``, ``guidance_steps``); ValueError naming the key."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale < 0:
        raise ValueError(f"guidance_scale must be a finite number >= 0 (1 = off), got {scale!r}")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0):
        raise ValueError(f"guidance_steps must be a positive int or None (every step), got {steps!r}")


def check_generation(cfg: GenerationConfig) -> None:
    """Values a type check cannot catch; ValueError naming the key."""
    for key in ("height", "width", "chunk_frames", "window_frames", "num_inference_steps", "action_step"):
        if getattr(cfg, key) <= 0:
            raise ValueError(f"{key} must be positive, got {getattr(cfg, key)}")
    check_guidance(cfg.guidance_scale, cfg.guidance_steps)
    m = cfg.memory
    if m.mode not in MEMORY_MODES:
        raise ValueError(f"memory.mode must be one of {', '.join(MEMORY_MODES)}, got {m.mode!r}")
    for key in ("num_buckets", "slots", "n_bits", "top_k"):
        if getattr(m, key) <= 0:
            raise ValueError(f"memory.{key} must be positive, got {getattr(m, key)}")
    if m.mass_cap < 0:
        raise ValueError(f"memory.mass_cap must be ≥ 0 (0 = off), got {m.mass_cap}")
    if m.mode != "full" and cfg.chunk_frames > cfg.window_frames:
        raise ValueError(f"chunk_frames ({cfg.chunk_frames}) is larger than window_frames ({cfg.window_frames})")


_GENERATION_KEYS = {f.name: "generation" for f in fields(GenerationConfig)}


def generate_config(overrides: list[str] | None = None, preset: str = "tiny", **values: Any) -> GenerateConfig:
    """A ``vidhash generate`` run: generation preset, then ``values`` (flags), then ``key=value`` overrides."""
    data = {"generation": OmegaConf.structured(generation_config(preset))}
    data.update({key: value for key, value in values.items() if value is not None})
    cfg = _structured(GenerateConfig, data, "run settings")  # type-checks the flags
    cfg = apply_overrides(cfg, overrides or [], prefix_for=_GENERATION_KEYS)
    check_generation(cfg.generation)
    return cfg


def to_yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg) if not isinstance(cfg, DictConfig) else cfg)


def save_config(cfg: Any, path: str | os.PathLike) -> Path:
    """Write ``cfg`` as YAML atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(to_yaml(cfg))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def load_config(cls: type, path: str | os.PathLike) -> Any:
    """Read YAML into dataclass ``cls`` (unknown keys and wrong types raise ValueError naming the key)."""
    return _structured(cls, OmegaConf.load(str(path)), str(path))
