"""Synthetic videos with known defects, shared by the validation tests and the benchmark.

    frames, poses = synthetic_clip("flicker", seconds=6, fps=8, size=64)
    write_video("flicker.mp4", frames, fps=8)

Every clip is a camera panning over a seeded random colour texture (several scales, so
optical flow has something to hold on to). ``kind``:

- ``pan``: clean pan at constant speed;
- ``static``: the camera does not move;
- ``flicker``: the pan with a random brightness gain (±15%) on every frame;
- ``drift``: the pan with a slow colour cast growing to full strength by the end
  (adjacent frames stay alike, the first and last do not);
- ``cuts``: the pan, switching to an unrelated texture every ``cut_every_s`` seconds;
- ``frozen``: the pan at the same average speed, but every frame shown twice (stutter);
- ``return``: the camera goes out and comes back along the same path (for revisits);
- ``return_drift``: ``return`` with the colour drift, so revisits no longer match.

``poses`` holds the camera position ``[x, y]`` (pixels of the texture) per frame.
"""
from __future__ import annotations

import os

import cv2
import numpy as np

__all__ = ["KINDS", "synthetic_clip", "texture", "write_video"]

KINDS = ("pan", "static", "flicker", "drift", "cuts", "frozen", "return", "return_drift")


def texture(height: int, width: int, seed: int = 0, scale: float = 5.0) -> np.ndarray:
    """A stationary random colour texture, ``(height, width, 3)`` uint8, blobs of ``scale`` px."""
    rng = np.random.default_rng(seed)
    img = np.zeros((height, width, 3), np.float32)
    for sigma, weight in ((scale, 1.0), (max(1.0, scale / 3), 0.5), (1.0, 0.1)):
        noise = rng.standard_normal((height, width, 3)).astype(np.float32)
        layer = cv2.GaussianBlur(noise, (0, 0), sigma)
        img += weight * layer / (layer.std() + 1e-6)
    img = (img - img.mean()) / (img.std() + 1e-6)
    return np.clip(128 + 45 * img, 0, 255).astype(np.uint8)


def synthetic_clip(
    kind: str, seconds: float = 6.0, fps: float = 8.0, size: int = 64, speed: float | None = None, seed: int = 0,
    cut_every_s: float = 2.0,
) -> tuple[list[np.ndarray], np.ndarray]:
    """Frames ``(size, size, 3)`` uint8 and poses ``(frames, 2)`` of one synthetic clip.

    ``speed`` is the pan speed in pixels per frame (default size/40, a gentle pan).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown synthetic clip kind {kind!r}; choose from {KINDS}")
    n = max(1, int(round(seconds * fps)))
    v = size / 40 if speed is None else speed
    rng = np.random.default_rng(seed + 1)
    # 1. camera path (x in texture pixels)
    i = np.arange(n, dtype=np.float64)
    if kind == "static":
        x = np.zeros(n)
    elif kind == "frozen":
        x = v * 2 * np.floor(i / 2)
    elif kind in ("return", "return_drift"):
        half = (n - 1) / 2
        x = v * (half - np.abs(i - half))
    else:
        x = v * i
    y = np.zeros(n)
    span = int(np.ceil(x.max())) + size + 2
    canvases = [texture(size + 2, span, seed=seed + 10 * k, scale=size / 12) for k in range(3 if kind == "cuts" else 1)]
    frames = []
    for k in range(n):
        canvas = canvases[int(k / (cut_every_s * fps)) % len(canvases)] if kind == "cuts" else canvases[0]
        # 2. sub-pixel crop of the texture at the camera position
        m = np.float32([[1, 0, x[k]], [0, 1, y[k]]])
        f = cv2.warpAffine(canvas, m, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT)
        # 3. the defect
        if kind == "flicker":
            f = np.clip(f.astype(np.float32) * rng.uniform(0.85, 1.15), 0, 255).astype(np.uint8)
        elif kind in ("drift", "return_drift"):
            s = k / max(1, n - 1)
            gain = np.float32([1.0 - 0.45 * s, 1.0 - 0.1 * s, 1.0 + 0.6 * s])
            f = np.clip(f.astype(np.float32) * gain + 20 * s, 0, 255).astype(np.uint8)
        frames.append(np.ascontiguousarray(f))
    return frames, np.stack([x, y], axis=1)


def write_video(path: str, frames, fps: float, codec: str = "libx264", crf: int = 12) -> str:
    """Write RGB uint8 frames as H.264 (yuv420p) mp4 through PyAV; returns the path."""
    import fractions

    import av

    frames = iter(frames)
    first = next(frames)
    h, w = first.shape[:2]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    rate = fractions.Fraction(fps).limit_denominator(1001)
    with av.open(path, mode="w") as out:
        stream = out.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": str(crf), "preset": "veryfast"}
        for f in _chain(first, frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def _chain(first, rest):
    yield first
    yield from rest
