"""A seeded procedural 2D world seen through a moving camera.

    python -c "from vidhash.data.world import ProceduralWorld, RandomTrajectory; \
w = ProceduralWorld(seed=0); a, p = RandomTrajectory(w.size, seed=0).take(480); print(w.render_many(p).shape)"

The world is a torus of ``size × size`` pixels (1024² by default): terrain (water, sand, grass,
forest, rock, snow from two band-limited noise fields) plus a few hundred distinct landmarks
(shape × colour × size), so every place is recognisable. It is drawn once per seed with numpy;
a frame is then a slice of a wrap-padded copy of that texture, which makes rendering cost a
64×64×3 copy (tens of thousands of frames per second on one core).

Poses are ``(x, y)`` world pixel coordinates of the view's centre, wrapped into ``[0, size)``.
The camera's vocabulary — actions, poses reached by them, ``RandomTrajectory`` — is
:mod:`vidhash.camera`; its names are re-exported here for older imports.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

from ..camera import (  # noqa: F401 (re-exported: the camera vocabulary lived here)
    ACTION_DELTAS,
    ACTIONS,
    NULL_ACTION,
    RandomTrajectory,
    action_ids,
    integrate_actions,
    revisits,
)

# ----------------------------------------------------------------------------------- world

# World seeds >= this are held out for evaluation (vidhash eval world) and never trained on
# (vidhash.training.config checks the training range against it).
HELDOUT_WORLD_SEED = 1_000_000

_ELEV_STOPS = np.array([0.00, 0.30, 0.40, 0.44, 0.60, 0.75, 0.86, 1.00])
_ELEV_RGB = np.array(
    [  # deep water, shallow water, shallow, sand, grass, hills, rock, snow
        [10, 30, 110], [30, 80, 170], [60, 130, 200], [215, 200, 140],
        [90, 170, 70], [110, 140, 60], [120, 110, 100], [245, 245, 250],
    ],
    dtype=np.float64,
)
_FOREST_RGB = np.array([25, 95, 40], dtype=np.float64)
_LANDMARK_RGB = np.array(
    [
        [230, 25, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180], [70, 240, 240],
        [240, 50, 230], [250, 190, 212], [0, 0, 128], [128, 0, 0], [255, 255, 255], [0, 0, 0],
    ],
    dtype=np.uint8,
)
_SHAPES = ("disc", "square", "triangle", "cross", "ring", "diamond")


def _noise_field(rng: np.random.Generator, size: int, beta: float, lowcut: float) -> np.ndarray:
    """Periodic band-limited noise in [0, 1] (power spectrum ~ 1/f^beta, frequencies below lowcut removed)."""
    white = rng.standard_normal((size, size))
    f = np.fft.rfft2(white)
    fy = np.fft.fftfreq(size)[:, None] * size
    fx = np.fft.rfftfreq(size)[None, :] * size
    freq = np.sqrt(fx**2 + fy**2)
    amp = np.where(freq >= lowcut, 1.0 / np.maximum(freq, 1.0) ** (beta / 2), 0.0)
    field = np.fft.irfft2(f * amp, s=(size, size))
    lo, hi = np.percentile(field, [1, 99])
    return np.clip((field - lo) / (hi - lo), 0.0, 1.0)


class ProceduralWorld:
    """A seeded toroidal world texture; ``render(pose)`` returns the (view, view, 3) uint8 frame centred on pose.

    Args:
        seed: world seed (terrain and landmarks are a function of it only).
        size: side of the square world in pixels (poses wrap modulo ``size``).
        view: side of the rendered frame in pixels.
        num_landmarks: landmark count; default one per 48×48 pixels.
    """

    def __init__(self, seed: int = 0, size: int = 1024, view: int = 64, num_landmarks: int | None = None):
        if size < 2 * view:
            raise ValueError(f"world size {size} must be at least twice the view {view}")
        self.seed, self.size, self.view = int(seed), int(size), int(view)
        rng = np.random.default_rng([self.seed, 0x5EED])
        # 1. terrain: elevation decides the band, moisture turns grass into forest
        elev = _noise_field(rng, size, beta=3.0, lowcut=2.0)
        moist = _noise_field(rng, size, beta=3.0, lowcut=2.0)
        rgb = np.stack([np.interp(elev, _ELEV_STOPS, _ELEV_RGB[:, c]) for c in range(3)], axis=-1)
        forest = ((elev > 0.46) & (elev < 0.74) & (moist > 0.55))[..., None]
        rgb = np.where(forest, 0.35 * rgb + 0.65 * _FOREST_RGB, rgb)
        rgb += rng.normal(0.0, 6.0, size=rgb.shape)  # fine grain, so flat regions still have texture
        texture = np.clip(rgb, 0, 255).astype(np.uint8)
        # 2. landmarks: distinct (shape, colour, size) drawn with a dark outline, wrapped at the seams
        n = num_landmarks if num_landmarks is not None else (size * size) // (48 * 48)
        self.landmarks = []
        for _ in range(n):
            x, y = rng.integers(0, size, size=2)
            shape = _SHAPES[int(rng.integers(len(_SHAPES)))]
            colour = _LANDMARK_RGB[int(rng.integers(len(_LANDMARK_RGB)))]
            radius = int(rng.integers(3, 9))
            self.landmarks.append((int(x), int(y), shape, tuple(int(c) for c in colour), radius))
            for ox in (-size, 0, size):
                for oy in (-size, 0, size):
                    if -radius - 2 <= x + ox < size + radius + 2 and -radius - 2 <= y + oy < size + radius + 2:
                        _draw(texture, int(x + ox), int(y + oy), shape, colour, radius)
        self.texture = texture
        # 3. wrap-pad by one view so any view is a plain slice
        self._padded = np.pad(texture, ((0, view), (0, view), (0, 0)), mode="wrap")

    @classmethod
    def from_texture(cls, texture: np.ndarray, landmarks: list, seed: int, view: int) -> ProceduralWorld:
        """The world whose built ``texture`` (size, size, 3) uint8 and ``landmarks`` are given
        (``vidhash.data.world_cache`` publishes them): the same object a build gives, no rebuild."""
        texture = np.asarray(texture, dtype=np.uint8)
        size = texture.shape[0]
        if texture.shape != (size, size, 3) or size < 2 * view:
            raise ValueError(f"texture must be (size, size, 3) with size ≥ 2 · view, got {texture.shape}, view {view}")
        world = cls.__new__(cls)
        world.seed, world.size, world.view = int(seed), int(size), int(view)
        world.landmarks = [tuple(x) for x in landmarks]
        world.texture = texture
        world._padded = np.pad(texture, ((0, view), (0, view), (0, 0)), mode="wrap")
        return world

    def _corner(self, pose: Sequence[float]) -> tuple[int, int]:
        x0 = int(math.floor(pose[0])) - self.view // 2
        y0 = int(math.floor(pose[1])) - self.view // 2
        return x0 % self.size, y0 % self.size

    def render(self, pose: Sequence[float]) -> np.ndarray:
        """Frame (view, view, 3) uint8 centred on ``pose`` = (x, y); a read-only view into the texture."""
        x0, y0 = self._corner(pose)
        return self._padded[y0 : y0 + self.view, x0 : x0 + self.view]

    def render_many(self, poses: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Frames (T, view, view, 3) uint8 for poses (T, 2)."""
        poses = np.asarray(poses)
        if out is None:
            out = np.empty((len(poses), self.view, self.view, 3), dtype=np.uint8)
        for t, pose in enumerate(poses):
            out[t] = self.render(pose)
        return out


def _draw(img: np.ndarray, x: int, y: int, shape: str, colour: np.ndarray, r: int) -> None:
    col = tuple(int(c) for c in colour)
    dark = (20, 20, 20) if sum(col) > 200 else (235, 235, 235)
    if shape == "disc":
        cv2.circle(img, (x, y), r + 1, dark, -1)
        cv2.circle(img, (x, y), r, col, -1)
    elif shape == "ring":
        cv2.circle(img, (x, y), r, dark, 3)
        cv2.circle(img, (x, y), r, col, 1)
    elif shape == "square":
        cv2.rectangle(img, (x - r - 1, y - r - 1), (x + r + 1, y + r + 1), dark, -1)
        cv2.rectangle(img, (x - r, y - r), (x + r, y + r), col, -1)
    elif shape == "cross":
        cv2.line(img, (x - r, y), (x + r, y), dark, 4)
        cv2.line(img, (x, y - r), (x, y + r), dark, 4)
        cv2.line(img, (x - r, y), (x + r, y), col, 2)
        cv2.line(img, (x, y - r), (x, y + r), col, 2)
    else:  # triangle, diamond
        if shape == "triangle":
            pts = np.array([[x, y - r], [x - r, y + r], [x + r, y + r]], dtype=np.int32)
        else:
            pts = np.array([[x, y - r], [x + r, y], [x, y + r], [x - r, y]], dtype=np.int32)
        cv2.polylines(img, [pts], True, dark, 2)
        cv2.fillPoly(img, [pts], col)
