"""Output of ``VidHashPipeline`` (a whole call, or one chunk of ``pipe.stream``), and the PIL form of
both pipelines' frames."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from diffusers.utils import BaseOutput


@dataclass
class VidHashPipelineOutput(BaseOutput):
    r"""
    Args:
        frames: ``output_type="np"``: float32 ``(batch, frames, height, width, 3)`` in [0, 1];
            ``"pt"``: float32 tensor ``(batch, frames, 3, height, width)`` in [0, 1];
            ``"pil"``: a list (batch) of lists of ``PIL.Image``.
        state: the ``VidHashState`` after these frames (pass it back as ``state=`` to continue).
        poses: float64 ``(frames, 2)`` world (x, y) of each frame's view centre.
        actions: int64 ``(frames,)`` action ids (``NULL_ACTION`` where none was given).
        frame_start: index of the first of these frames in the whole clip.
    """

    frames: Any
    state: Any = None
    poses: np.ndarray | None = None
    actions: np.ndarray | None = None
    frame_start: int = 0


def pil_frames(array: np.ndarray) -> list:
    """``output_type="pil"``: float ``(batch, frames, height, width, 3)`` in [0, 1] as a list (batch) of
    lists of RGB ``PIL.Image``, ``round(x · 255)``, as diffusers' video pipelines return them."""
    from PIL import Image

    return [[Image.fromarray((f * 255).round().astype(np.uint8)) for f in clip] for clip in array]
