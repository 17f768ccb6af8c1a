"""Coherence over seconds to minutes: drift, start-versus-end contrast, scene cuts.

:class:`DriftMeter` takes one keyframe a second and compares it with the first keyframe and
with the keyframes 1 s, 2 s, 5 s … up to ``max_lag_s`` earlier, keeping only those in a ring
buffer of small descriptors (so memory is bounded by the longest lag, not the video). Three
distances between keyframes, each 0 for identical frames:

- ``ssim_dist``: 1 − SSIM of the luma (Wang et al. 2004, σ = 1.5);
- ``hist_dist``: total-variation distance of the 8×8×8-bin RGB colour histograms, 0–1
  (the share of pixels whose colour bin would have to change);
- ``delta_e``: CIE76 ΔE between the mean CIE Lab colours of the two frames (about 2.3 is a
  just-noticeable difference) — a colour cast or a brightness change, whatever the content.

The slope of the mean distance against log10(lag) (per decade of lag) separates a video
that holds together (flat) from one that drifts (rising).

:class:`FrameStats` records per analysed frame brightness (mean L*, 0–100), chroma (mean
√(a*² + b*²)) and sharpness (variance of the Laplacian of luma) for the start-versus-end
contrast. :func:`detect_cuts` finds hard cuts from the short-range cut score.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import cv2
import numpy as np

from vidhash.metrics.short_range import GaussianStats, ssim

__all__ = [
    "DEFAULT_LAGS_S", "DISTANCES", "DriftMeter", "FrameStats", "Keyframe", "detect_cuts", "distances",
    "log_slope",
]

DEFAULT_LAGS_S = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600)
DISTANCES = ("ssim_dist", "hist_dist", "delta_e")
KEYFRAME_SIZE = 64  # longer side of the keyframe descriptors, pixels


@dataclass
class Keyframe:
    """Small descriptor of a keyframe: luma statistics, mean Lab colour, colour histogram."""

    t: float
    gray: GaussianStats
    lab: np.ndarray  # (3,) mean L*, a*, b*
    hist: np.ndarray  # (512,) float32, sums to 1

    @classmethod
    def of(cls, rgb: np.ndarray, t: float) -> "Keyframe":
        h, w = rgb.shape[:2]
        s = KEYFRAME_SIZE / max(h, w)
        if s < 1:
            rgb = cv2.resize(rgb, (max(8, round(w * s)), max(8, round(h * s))), interpolation=cv2.INTER_AREA)
        gray = GaussianStats.of(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
        lab = cv2.cvtColor(rgb.astype(np.float32) * (1.0 / 255.0), cv2.COLOR_RGB2Lab).reshape(-1, 3).mean(0)
        hist = cv2.calcHist([rgb], [0, 1, 2], None, [8, 8, 8], [0, 256, 0, 256, 0, 256]).ravel()
        return cls(t=t, gray=gray, lab=lab, hist=hist / max(float(hist.sum()), 1.0))


def distances(a: Keyframe, b: Keyframe) -> dict[str, float]:
    """The three keyframe distances (see module docstring)."""
    return {
        "ssim_dist": 1.0 - ssim(a.gray, b.gray),
        "hist_dist": 0.5 * float(np.abs(a.hist - b.hist).sum()),
        "delta_e": float(np.linalg.norm(a.lab - b.lab)),
    }


def log_slope(lags: list[float], values: list[float | None]) -> float | None:
    """Least-squares slope of value against log10(lag); None with fewer than two points."""
    pts = [(np.log10(l), v) for l, v in zip(lags, values) if v is not None]
    if len(pts) < 2:
        return None
    x, y = np.array(pts).T
    return float(np.polyfit(x, y, 1)[0])


@dataclass
class DriftMeter:
    """Keyframes once a second; distances from the first keyframe and at fixed lags."""

    lags_s: tuple[int, ...] = DEFAULT_LAGS_S
    max_lag_s: int = 600
    t_s: list[float] = field(default_factory=list)
    from_first: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in DISTANCES})

    def __post_init__(self) -> None:
        self.lags_s = tuple(l for l in self.lags_s if l <= self.max_lag_s)
        self._ring: deque[Keyframe] = deque(maxlen=(max(self.lags_s) if self.lags_s else 0) + 1)
        self._first: Keyframe | None = None
        self._sum = {k: np.zeros(len(self.lags_s)) for k in DISTANCES}
        self._n = np.zeros(len(self.lags_s), dtype=np.int64)
        self._next_second = 0

    def update(self, rgb: np.ndarray, t: float) -> bool:
        """Offer an analysed frame at time t (s); returns True if it became a keyframe."""
        if t + 1e-6 < self._next_second:
            return False
        self._next_second = int(np.floor(t + 1e-6)) + 1
        kf = Keyframe.of(rgb, t)
        if self._first is None:
            self._first = kf
        self.t_s.append(t)
        for k, v in distances(self._first, kf).items():
            self.from_first[k].append(v)
        # Ring slot i holds the keyframe i seconds ago when every second has a keyframe;
        # look lags up by time so gaps (variable frame rate, dropped seconds) stay honest.
        ring = self._ring
        for j, lag in enumerate(self.lags_s):
            if lag > len(ring):
                break
            old = ring[-lag]
            if abs((kf.t - old.t) - lag) > 0.5:
                old = next((o for o in ring if abs((kf.t - o.t) - lag) <= 0.5), None)
                if old is None:
                    continue
            for k, v in distances(old, kf).items():
                self._sum[k][j] += v
            self._n[j] += 1
        ring.append(kf)
        return True

    def result(self) -> dict:
        """The ``drift`` block of the report."""
        used = [j for j in range(len(self.lags_s)) if self._n[j] > 0]
        lags = [self.lags_s[j] for j in used]
        by_lag = {k: [float(self._sum[k][j] / self._n[j]) for j in used] for k in DISTANCES}
        return {
            "keyframes": len(self.t_s),
            "lags_s": lags,
            "pairs": [int(self._n[j]) for j in used],
            "by_lag": by_lag,
            "slope_per_decade": {k: log_slope(lags, by_lag[k]) for k in DISTANCES},
            "from_first": {"t_s": list(self.t_s), **{k: list(v) for k, v in self.from_first.items()}},
            "end_vs_first": {k: (v[-1] if v else None) for k, v in self.from_first.items()},
        }


@dataclass
class FrameStats:
    """Per-frame brightness, chroma and sharpness, for the start-versus-end contrast."""

    t_s: list[float] = field(default_factory=list)
    brightness: list[float] = field(default_factory=list)
    chroma: list[float] = field(default_factory=list)
    sharpness: list[float] = field(default_factory=list)

    def update(self, rgb: np.ndarray, t: float, gray: np.ndarray | None = None) -> None:
        lab = cv2.cvtColor(rgb.astype(np.float32) * (1.0 / 255.0), cv2.COLOR_RGB2Lab)
        self.t_s.append(t)
        self.brightness.append(float(lab[..., 0].mean()))
        self.chroma.append(float(np.sqrt(lab[..., 1] ** 2 + lab[..., 2] ** 2).mean()))
        g = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) if gray is None else gray
        self.sharpness.append(float(cv2.Laplacian(g, cv2.CV_32F).var()))

    def start_end(self, window_s: float | None = None) -> dict:
        """Means over the first and last ``window_s`` seconds (default: 10% of the video,
        between 1 and 10 s) and their difference (end − start)."""
        t = np.asarray(self.t_s)
        if t.size == 0:
            return {"window_s": None}
        span = float(t[-1] - t[0])
        w = window_s if window_s is not None else min(10.0, max(1.0, 0.1 * span))
        start = t <= t[0] + w - 1e-9
        end = t >= t[-1] - w + 1e-9
        start[0] = end[-1] = True
        out: dict = {"window_s": w}
        for name in ("brightness", "chroma", "sharpness"):
            v = np.asarray(getattr(self, name))
            s, e = float(v[start].mean()), float(v[end].mean())
            out[name] = {"start": s, "end": e, "delta": e - s, "rel_delta": (e - s) / s if abs(s) > 1e-9 else None}
        return out


def detect_cuts(cut_score: list[float], fps: float, threshold: float = 0.35, margin: float = 0.25) -> list[int]:
    """Indices of pairs (t, t+1) that are hard cuts.

    A pair is a cut when its score (see ``short_range``; about 0.05 within a shot and above 0.5
    across a cut between unrelated images) exceeds ``threshold``
    and exceeds the median of its neighbours within ±1 s by ``margin`` — so a stretch of
    uniformly hard content (noise, very fast motion) is not read as a run of cuts.
    """
    s = np.asarray(cut_score, dtype=np.float64)
    r = max(2, int(round(fps)))
    cuts = []
    for i in np.flatnonzero(s > threshold):
        nb = np.concatenate([s[max(0, i - r):i], s[i + 1:i + 1 + r]])
        base = float(np.median(nb)) if nb.size else 0.0
        if s[i] > base + margin:
            cuts.append(int(i))
    return cuts
