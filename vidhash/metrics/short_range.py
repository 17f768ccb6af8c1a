"""Frame-to-frame coherence: flicker, warping error, motion, SSIM/PSNR, smoothness, cut score.

All functions take frames as ``(height, width, 3)`` uint8 RGB (or ``(height, width)`` gray)
at the working size; :class:`ShortRangeMeter` streams over a video and keeps one number per
adjacent pair (and per triplet for smoothness), never the frames.

Definitions (pair = analysed frames t and t+1):

- **flicker**: mean absolute difference of the RGB frames, 0–255. It also rises with motion;
  read it next to ``motion``.
- **brightness jitter**: |L(t) − (L(t−1) + L(t+1)) / 2| of the mean luma — the part of the
  brightness that oscillates faster than the content changes.
- **warping error** (Lai et al., "Learning Blind Video Temporal Consistency", ECCV 2018):
  frame t+1 is warped onto frame t with the forward optical flow F(t→t+1) (OpenCV DIS);
  pixels that fail the forward–backward check of Ruder et al. (2016),
  ``|F + B∘F|² > 0.01 (|F|² + |B∘F|²) + 0.5``, or that flow out of the frame are masked out;
  error = mean over unmasked pixels of the squared L2 norm of the RGB difference, RGB in
  [0, 1]. Zero for a static clip: check ``motion``.
- **motion**: mean optical-flow magnitude in pixels at the working size per analysed frame.
- **SSIM** (Wang et al. 2004; Gaussian window σ = 1.5, on luma) and **PSNR** (RGB, dB, capped
  at 100 for identical frames) of adjacent frames.
- **smoothness**: frame t is predicted from t−1 and t+1 alone by flow-based midpoint
  interpolation (flow F(t−1→t+1), both neighbours warped half-way and averaged);
  smoothness = 1 − mean |prediction − frame t| / 255, as VBench scores motion smoothness
  (with a learned interpolator there). Stutter, frozen frames and jumps lower it.
- **cut score**: mean of (1 − normalised cross-correlation between frame t and the
  flow-warped frame t+1, on luma) and the occluded fraction. Optical flow between unrelated
  images fails the forward–backward check almost everywhere, and what it does warp does not
  correlate; both stay near 0 for continuous footage, brightness changes included.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

__all__ = [
    "GaussianStats", "ShortRangeMeter", "flow_dis", "occlusion_mask", "psnr", "ssim", "warp",
    "warping_error", "zncc",
]

_C1 = (0.01 * 255) ** 2
_C2 = (0.03 * 255) ** 2
PSNR_CAP_DB = 100.0


def _blur(x: np.ndarray) -> np.ndarray:
    return cv2.GaussianBlur(x, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)


@dataclass
class GaussianStats:
    """Per-frame local statistics reused by every SSIM the frame takes part in."""

    x: np.ndarray  # (height, width) float32 luma 0-255
    mu: np.ndarray
    var: np.ndarray  # local variance (sigma^2)

    @classmethod
    def of(cls, gray: np.ndarray) -> "GaussianStats":
        x = gray.astype(np.float32)
        mu = _blur(x)
        return cls(x=x, mu=mu, var=_blur(x * x) - mu * mu)


def ssim(a: np.ndarray | GaussianStats, b: np.ndarray | GaussianStats) -> float:
    """Mean SSIM of two luma images (0-255), Gaussian window sigma 1.5 (Wang et al. 2004)."""
    sa = a if isinstance(a, GaussianStats) else GaussianStats.of(a)
    sb = b if isinstance(b, GaussianStats) else GaussianStats.of(b)
    cov = _blur(sa.x * sb.x) - sa.mu * sb.mu
    num = (2 * sa.mu * sb.mu + _C1) * (2 * cov + _C2)
    den = (sa.mu * sa.mu + sb.mu * sb.mu + _C1) * (sa.var + sb.var + _C2)
    return float(np.mean(num / den))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 images; identical images give ``PSNR_CAP_DB``."""
    mse = float(np.mean(cv2.absdiff(a, b).astype(np.float32) ** 2))
    if mse <= 0:
        return PSNR_CAP_DB
    return min(PSNR_CAP_DB, 10.0 * math.log10(255.0**2 / mse))


def flow_dis(dis: cv2.DISOpticalFlow, a_gray: np.ndarray, b_gray: np.ndarray) -> np.ndarray:
    """Optical flow a→b, ``(height, width, 2)`` float32: a(x) ≈ b(x + flow(x))."""
    return dis.calc(a_gray, b_gray, None)


class _Grid:
    """Pixel coordinate grid for cv2.remap, cached by shape."""

    def __init__(self) -> None:
        self.shape: tuple[int, int] | None = None

    def __call__(self, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        if self.shape != (h, w):
            self.gx, self.gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
            self.shape = (h, w)
        return self.gx, self.gy


_grid = _Grid()


def warp(img: np.ndarray, flow: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """Sample ``img`` at x + scale·flow(x) (bilinear, border replicated)."""
    h, w = flow.shape[:2]
    gx, gy = _grid(h, w)
    mx = gx + scale * flow[..., 0] if scale != 1.0 else gx + flow[..., 0]
    my = gy + scale * flow[..., 1] if scale != 1.0 else gy + flow[..., 1]
    return cv2.remap(img, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def occlusion_mask(fw: np.ndarray, bw: np.ndarray) -> np.ndarray:
    """Boolean ``(height, width)``: True where the pixel of frame t is occluded in t+1 or
    leaves the frame (forward–backward check of Ruder et al. 2016, as Lai et al. 2018 use)."""
    h, w = fw.shape[:2]
    gx, gy = _grid(h, w)
    bw_at = warp(bw, fw)
    s = fw + bw_at
    lhs = s[..., 0] ** 2 + s[..., 1] ** 2
    rhs = 0.01 * (fw[..., 0] ** 2 + fw[..., 1] ** 2 + bw_at[..., 0] ** 2 + bw_at[..., 1] ** 2) + 0.5
    x1, y1 = gx + fw[..., 0], gy + fw[..., 1]
    outside = (x1 < 0) | (x1 > w - 1) | (y1 < 0) | (y1 > h - 1)
    return (lhs > rhs) | outside


def warping_error(a_rgb: np.ndarray, b_rgb: np.ndarray, fw: np.ndarray, bw: np.ndarray) -> tuple[float, float]:
    """Warping error of pair (a, b) as Lai et al. (2018) define it, and the occluded fraction.

    ``fw`` is flow a→b, ``bw`` flow b→a. Returns (error, occluded_fraction); when every pixel
    is occluded the error is taken over all pixels (as their evaluation code does).
    """
    occ = occlusion_mask(fw, bw)
    b_warped = warp(b_rgb, fw)
    d = cv2.absdiff(a_rgb, b_warped).astype(np.float32) * (1.0 / 255.0)
    sq = np.einsum("hwc,hwc->hw", d, d)  # squared L2 over RGB per pixel
    keep = ~occ
    n = int(keep.sum())
    err = float(sq[keep].sum() / n) if n else float(sq.mean())
    return err, float(occ.mean())


def zncc(a: np.ndarray, b: np.ndarray) -> float:
    """Zero-mean normalised cross-correlation of two float images (1 = same up to gain/offset)."""
    a = a - a.mean()
    b = b - b.mean()
    den = math.sqrt(float(np.dot(a.ravel(), a.ravel())) * float(np.dot(b.ravel(), b.ravel())))
    if den < 1e-6:
        # A flat image: equal if both flat and equal means, else no correlation to speak of.
        return 1.0 if float(np.abs(a).max()) < 1e-3 and float(np.abs(b).max()) < 1e-3 else 0.0
    return float(np.dot(a.ravel(), b.ravel()) / den)


@dataclass
class _Prev:
    rgb: np.ndarray
    gray: np.ndarray
    stats: GaussianStats
    luma: float


@dataclass
class ShortRangeMeter:
    """Streams over frames and records one value per adjacent pair (and per triplet).

    ``update(rgb)`` for each analysed frame, in order. Per-pair lists (length frames − 1):
    ``flicker, warp_error, occluded, motion, ssim, psnr, cut_score``; per frame: ``luma``;
    per interior frame (length frames − 2): ``smoothness``.
    """

    preset: int = cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST
    flicker: list[float] = field(default_factory=list)
    warp_error: list[float] = field(default_factory=list)
    occluded: list[float] = field(default_factory=list)
    motion: list[float] = field(default_factory=list)
    ssim: list[float] = field(default_factory=list)
    psnr: list[float] = field(default_factory=list)
    cut_score: list[float] = field(default_factory=list)
    smoothness: list[float] = field(default_factory=list)
    luma: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._dis = cv2.DISOpticalFlow_create(self.preset)
        self._prev: _Prev | None = None
        self._prev2: _Prev | None = None

    def update(self, rgb: np.ndarray) -> None:
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        cur = _Prev(rgb=rgb, gray=gray, stats=GaussianStats.of(gray), luma=float(gray.mean()))
        self.luma.append(cur.luma)
        prev = self._prev
        if prev is not None:
            # 1. adjacent-frame differences
            self.flicker.append(float(cv2.absdiff(prev.rgb, rgb).mean()))
            self.ssim.append(ssim(prev.stats, cur.stats))
            self.psnr.append(psnr(prev.rgb, rgb))
            # 2. optical flow both ways, warping error, motion, cut score
            fw = flow_dis(self._dis, prev.gray, gray)
            bw = flow_dis(self._dis, gray, prev.gray)
            err, occ = warping_error(prev.rgb, rgb, fw, bw)
            self.warp_error.append(err)
            self.occluded.append(occ)
            self.motion.append(float(np.mean(np.sqrt(fw[..., 0] ** 2 + fw[..., 1] ** 2))))
            self.cut_score.append(0.5 * (1.0 - zncc(prev.stats.x, warp(cur.stats.x, fw))) + 0.5 * occ)
        if self._prev2 is not None:
            # 3. midpoint interpolation of frame t from t-1 and t+1 only
            p2 = self._prev2
            f = flow_dis(self._dis, p2.gray, gray)
            mid = cv2.addWeighted(warp(p2.rgb, f, -0.5), 0.5, warp(rgb, f, 0.5), 0.5, 0.0)
            self.smoothness.append(1.0 - float(cv2.absdiff(mid, prev.rgb).mean()) / 255.0)
        self._prev2, self._prev = prev, cur

    @property
    def brightness_jitter(self) -> list[float]:
        """|L(t) − (L(t−1) + L(t+1))/2| of mean luma, per interior frame."""
        l = np.asarray(self.luma, dtype=np.float64)
        if l.size < 3:
            return []
        return np.abs(l[1:-1] - 0.5 * (l[:-2] + l[2:])).tolist()
