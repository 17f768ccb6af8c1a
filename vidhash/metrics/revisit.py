"""Revisits: frames shown at the same camera pose at different times should look the same.

Poses file (JSON), any of:

- a plain list, one pose per source frame: ``[[x, y], [x, y, yaw], ...]``;
- ``{"poses": [...], "fps": 8}`` — the sidecar ``vidhash generate`` writes; ``fps`` is the
  rate of the poses (default: the video's frame rate);
- per-frame records: ``[{"pose": [x, y]}, ...]`` or ``[{"x": 0, "y": 1}, ...]``, also under
  ``{"frames": [...]}`` or ``{"trajectory": {...}}``.

A pose is a vector of numbers (position, optionally heading); two frames are at the same pose
when every component differs by at most ``tol``. Pairs are taken between analysed frames at
least ``min_gap_s`` apart, grouped by time gap in doubling bins (1–2 s, 2–4 s, … ), at most
``max_pairs_per_bin`` per bin (spread evenly over the video). Only the earlier frames of the
chosen pairs are held in memory, and each only until its last pair is scored.
"""
from __future__ import annotations

import json
import math
import os
from bisect import bisect_right
from dataclasses import dataclass, field

import numpy as np

from vidhash.metrics.short_range import psnr, ssim

__all__ = ["Poses", "RevisitMeter", "load_poses"]

_SKIP_KEYS = {"t", "time", "frame", "index", "i", "timestamp"}


@dataclass
class Poses:
    """Per-frame poses: ``values`` (frames, dims) float64; ``fps`` None = the video's rate."""

    values: np.ndarray
    fps: float | None
    path: str = ""

    def __len__(self) -> int:
        return len(self.values)


def _pose_vector(item, where: str) -> list[float]:
    if isinstance(item, dict):
        if "pose" in item:
            return _pose_vector(item["pose"], where)
        if "position" in item:
            return _pose_vector(item["position"], where)
        item = [v for k, v in item.items() if k not in _SKIP_KEYS]
    if isinstance(item, (int, float)) and not isinstance(item, bool):
        item = [item]
    if not isinstance(item, (list, tuple)) or not item:
        raise ValueError(f"{where}: a pose must be a list of numbers or an object of numbers, got {str(item)[:60]}")
    try:
        vec = [float(v) for v in item]
    except (TypeError, ValueError):
        raise ValueError(f"{where}: a pose must hold numbers only, got {str(item)[:60]}") from None
    if not all(math.isfinite(v) for v in vec):
        raise ValueError(f"{where}: a pose holds NaN or infinity")
    return vec


def load_poses(path: str) -> Poses:
    """Read a poses JSON file in any of the formats in the module docstring."""
    if not os.path.exists(path):
        raise ValueError(f"{path}: no such poses file")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    fps = None
    if isinstance(data, dict):
        if "trajectory" in data and isinstance(data["trajectory"], (dict, list)):
            inner = data["trajectory"]
            data = {**data, **inner} if isinstance(inner, dict) else {**data, "poses": inner}
        fps = data.get("fps")
        items = data.get("poses", data.get("frames"))
        if items is None:
            raise ValueError(f"{path}: expected a list of poses or an object with a 'poses' list; found keys {sorted(data)[:8]}")
    else:
        items = data
    if not isinstance(items, list) or not items:
        raise ValueError(f"{path}: the poses list is empty or not a list")
    vecs = [_pose_vector(p, f"{path}: pose {i}") for i, p in enumerate(items)]
    dims = {len(v) for v in vecs}
    if len(dims) != 1:
        raise ValueError(f"{path}: poses have different lengths {sorted(dims)}")
    if fps is not None:
        try:
            fps = float(fps)
        except (TypeError, ValueError):
            raise ValueError(f"{path}: 'fps' must be a number, got {fps!r}") from None
        if not fps > 0:
            raise ValueError(f"{path}: 'fps' must be positive, got {fps}")
    return Poses(values=np.asarray(vecs, dtype=np.float64), fps=fps, path=path)


def gap_bins(max_gap_s: float, min_gap_s: float = 1.0) -> list[tuple[float, float]]:
    """Doubling bins [g, 2g) from ``min_gap_s`` up past ``max_gap_s``."""
    bins, g = [], float(min_gap_s)
    while g <= max_gap_s:
        bins.append((g, 2 * g))
        g *= 2
    return bins


@dataclass
class RevisitMeter:
    """Plans same-pose pairs from the poses and scores them while frames stream past.

    Args:
        poses: per-frame poses of the source video.
        times: time (s) of each analysed frame, as the reader will produce them.
        pose_fps: rate of the poses (the video's rate when the file gives none).
    """

    poses: Poses
    times: np.ndarray
    pose_fps: float
    tol: float = 0.5
    min_gap_s: float = 1.0
    max_pairs_per_bin: int = 200
    psnr_by_pair: dict[tuple[int, int], float] = field(default_factory=dict)
    ssim_by_pair: dict[tuple[int, int], float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        idx = np.clip(np.rint(self.times * self.pose_fps).astype(np.int64), 0, len(self.poses) - 1)
        p = self.poses.values[idx]  # pose of each analysed frame
        t = self.times
        self.bins = gap_bins(float(t[-1] - t[0]) if len(t) else 0.0, self.min_gap_s)
        # 1. candidate pairs: for each frame j and each gap bin, the earliest earlier frame
        #    at the same pose (within tol) in that bin; frames found through a grid of cells.
        cell = max(self.tol, 1e-9)
        keys = np.floor(p / cell).astype(np.int64)
        grid: dict[tuple, list[int]] = {}
        cand: list[list[tuple[int, int]]] = [[] for _ in self.bins]
        dims = p.shape[1]
        offsets = np.array(np.meshgrid(*[[-1, 0, 1]] * dims)).reshape(dims, -1).T if dims <= 4 else np.zeros((1, dims), int)
        for j in range(len(t)):
            for b, (g0, g1) in enumerate(self.bins):
                lo_t, hi_t = t[j] - g1, t[j] - g0  # earlier frame time in (lo_t, hi_t]
                best = None
                for off in offsets:
                    lst = grid.get(tuple(keys[j] + off))
                    if not lst:
                        continue
                    a = bisect_right(lst, lo_t, key=lambda i: t[i])
                    e = bisect_right(lst, hi_t, key=lambda i: t[i])
                    for i in lst[a:e]:
                        if np.all(np.abs(p[i] - p[j]) <= self.tol):
                            best = i if best is None else min(best, i)
                            break
                if best is not None:
                    cand[b].append((best, j))
            grid.setdefault(tuple(keys[j]), []).append(j)
        # 2. at most max_pairs_per_bin per bin, evenly spread
        self.pairs: list[list[tuple[int, int]]] = []
        for c in cand:
            if len(c) > self.max_pairs_per_bin:
                pick = np.linspace(0, len(c) - 1, self.max_pairs_per_bin).round().astype(int)
                c = [c[k] for k in pick]
            self.pairs.append(c)
        self.candidates = [len(c) for c in cand]
        self._need: dict[int, list[int]] = {}  # later frame j -> earlier frames i
        self._last_use: dict[int, int] = {}
        for c in self.pairs:
            for i, j in c:
                self._need.setdefault(j, []).append(i)
                self._last_use[i] = max(self._last_use.get(i, -1), j)
        self._held: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.max_held = 0

    def update(self, index: int, rgb: np.ndarray, gray: np.ndarray) -> None:
        for i in self._need.get(index, ()):
            if i in self._held:
                ref_rgb, ref_gray = self._held[i]
                self.psnr_by_pair[(i, index)] = psnr(ref_rgb, rgb)
                self.ssim_by_pair[(i, index)] = ssim(ref_gray, gray)
        if index in self._last_use:
            self._held[index] = (rgb.copy(), gray.copy())
            self.max_held = max(self.max_held, len(self._held))
        for i in [i for i in self._held if self._last_use[i] <= index]:
            del self._held[i]

    def result(self) -> dict:
        """The ``revisit`` block of the report."""
        rows = []
        all_p, all_s = [], []
        for (g0, g1), pairs, n_cand in zip(self.bins, self.pairs, self.candidates):
            ps = [self.psnr_by_pair[pq] for pq in pairs if pq in self.psnr_by_pair]
            ss = [self.ssim_by_pair[pq] for pq in pairs if pq in self.ssim_by_pair]
            all_p += ps
            all_s += ss
            rows.append({
                "gap_s": [g0, g1], "pairs": len(ps), "candidates": n_cand,
                "psnr": float(np.mean(ps)) if ps else None, "ssim": float(np.mean(ss)) if ss else None,
            })
        return {
            "poses": self.poses.path, "tol": self.tol, "min_gap_s": self.min_gap_s,
            "pairs": len(all_p),
            "psnr": float(np.mean(all_p)) if all_p else None,
            "ssim": float(np.mean(all_s)) if all_s else None,
            "by_gap": [r for r in rows if r["candidates"] > 0],
        }
