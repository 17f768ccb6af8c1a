"""``GenerationConfig``: the settings a ``VidHashPipeline`` generates with, saved with the pipeline.

    python -c "from vidhash.presets import generation_preset; print(generation_preset('world'))"

* ``MemorySettings`` — what temporal attention sees beyond the chunk: ``mode`` ``hashed``
  (window + fixed-size ``HashedMemory``), ``window`` (window only) or ``full`` (every past frame,
  dense; the growing baseline), plus the memory's :class:`~vidhash.memory.MemorySize` (saved
  with a state) and its :class:`~vidhash.memory.MemoryRead` (per call). The fields are those two
  classes' own (one flat section: ``memory.num_buckets``, ``memory.top_k``, ...); ``.size`` and
  ``.read`` give the parts.
* ``GenerationConfig`` — frame size, chunk and window lengths, denoising steps, camera step,
  memory, context guidance.

Both are frozen and check themselves on construction (ValueError naming the key). A pipeline
folder saves its ``GenerationConfig`` in ``model_index.json`` (``VidHashPipeline.generation_config``):
``VidHashPipeline.from_pretrained(folder)()`` and ``vidhash generate --model folder`` start from
it. The named presets are ``configs/generation.yaml`` (:func:`vidhash.presets.generation_preset`).
"""
from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, field, fields
from typing import Optional

from .memory import MemoryRead, MemorySize

MEMORY_MODES = ("hashed", "window", "full")


@dataclass(frozen=True)
class MemorySettings(MemoryRead, MemorySize):
    """``mode`` + the memory's size (:class:`MemorySize` fields) + how it is read
    (:class:`MemoryRead` fields). Window and full modes keep the memory fields unused."""

    mode: str = "hashed"

    def __post_init__(self):
        MemorySize.__post_init__(self)
        MemoryRead.__post_init__(self)
        if self.mode not in MEMORY_MODES:
            raise ValueError(f"memory.mode must be one of {', '.join(MEMORY_MODES)}, got {self.mode!r}")

    @classmethod
    def of(cls, mode: str, size: MemorySize, read: MemoryRead) -> MemorySettings:
        """The settings of ``mode`` with ``size`` and ``read``."""
        return cls(mode=mode, **asdict(size.size), **asdict(read.read))

    def replace(self, values: dict) -> MemorySettings:
        """These settings with ``values`` (a dict of field names) replaced; unknown keys raise ValueError."""
        unknown = set(values) - {f.name for f in fields(self)}
        if unknown:
            raise ValueError(f"unknown memory keys {sorted(unknown)}; known: {', '.join(f.name for f in fields(self))}")
        return MemorySettings(**{**asdict(self), **values})


def check_guidance(scale: float, steps: int | None) -> None:
    """Context guidance settings (``guidance_scale``, ``guidance_steps``); ValueError naming the key."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale < 0:
        raise ValueError(f"guidance_scale must be a finite number >= 0 (1 = off), got {scale!r}")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0):
        raise ValueError(f"guidance_steps must be a positive int or None (every step), got {steps!r}")


@dataclass(frozen=True)
class GenerationConfig:
    """How a pipeline generates (every ``VidHashPipeline.__call__`` argument left None).

    Context guidance: ``v = v_free + guidance_scale · (v_context − v_free)``, ``v_free`` from a
    pass without window and memory; 1.0 = off. Only the first ``guidance_steps`` denoising steps
    of a chunk (None: all)."""

    height: int = 64
    width: int = 64
    chunk_frames: int = 4
    window_frames: int = 8
    num_inference_steps: int = 4
    action_step: int = 4
    memory: MemorySettings = field(default_factory=MemorySettings)
    guidance_scale: float = 1.0
    guidance_steps: Optional[int] = None

    def __post_init__(self):
        for key in ("height", "width", "chunk_frames", "window_frames", "num_inference_steps", "action_step"):
            value = getattr(self, key)
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{key} must be a positive int, got {value!r}")
        check_guidance(self.guidance_scale, self.guidance_steps)
        if not isinstance(self.memory, MemorySettings):
            raise ValueError(f"memory must be MemorySettings, got {type(self.memory).__name__}")
        if self.memory.mode != "full" and self.chunk_frames > self.window_frames:
            raise ValueError(f"chunk_frames ({self.chunk_frames}) is larger than window_frames ({self.window_frames})")

    @property
    def guided_steps(self) -> int:
        """Denoising steps of a chunk that run context guidance (0 when it is off)."""
        if self.guidance_scale == 1:
            return 0
        return self.num_inference_steps if self.guidance_steps is None else self.guidance_steps

    def to_dict(self) -> dict:
        """JSON-able (what ``model_index.json`` stores; read back by
        :func:`vidhash.presets.generation_from_dict`). ``memory.select`` at its default is left out, so a
        folder saved with the default read stays readable by versions before the setting."""
        out = asdict(self)
        if out["memory"]["select"] == MemoryRead.select:
            del out["memory"]["select"]
        return out
