"""Loop trajectories for the world-memory evaluation: see a place, wander away, come back.

    python -c "from vidhash.eval.trajectory import plan_loop; p = plan_loop(seed=0, gap_frames=80); print(p.segments)"

A loop (all poses on the ``step`` grid, one axis move or a pause per frame, on the world torus):

* **visit** — ``visit_frames`` frames along a straight line through the place (a landmark);
* **leave** — ``ceil(view / step)`` frames further along the same line, until the view no longer
  overlaps any visit view;
* **wander** — a random walk between waypoints inside the band of the torus whose views never
  overlap the visit's (checked), ending where it started;
* **approach** — back along the leave line;
* **return** — the visit poses in reverse order (frame ``return[j]`` is at the pose of
  ``visit[visit_frames − 1 − j]``: "pairs").

``gap_frames`` = leave + wander + approach: the frames between the last visit frame and the first
return frame (the horizon). Leave and approach frames see the edge of the visited area; wander
frames do not see any of it. The shortest gap is ``2·ceil(view / step) − 1`` frames (31 for a
64-pixel view and 4-pixel steps).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from vidhash.data.world import ACTION_DELTAS, ProceduralWorld

SEGMENTS = ("visit", "leave", "wander", "approach", "return")
_DIRECTIONS = np.array([[1, 0], [-1, 0], [0, 1], [0, -1]], dtype=np.int64)


@dataclass
class LoopPlan:
    """``poses (T, 2)`` float64, ``actions (T,)`` int64 (``actions[t]`` brought the camera to
    frame t; ``"stay"`` for frame 0), ``segments`` name → (start, stop), ``pairs (visit_frames, 2)``
    of (return frame, visit frame at the same pose), ``place`` (x, y)."""

    poses: np.ndarray
    actions: np.ndarray
    segments: dict[str, tuple[int, int]]
    pairs: np.ndarray
    place: tuple[int, int]
    meta: dict = field(default_factory=dict)

    def frames(self, name: str) -> slice:
        start, stop = self.segments[name]
        return slice(start, stop)


def min_gap_frames(view: int = 64, step: int = 4) -> int:
    """The shortest gap a loop can have: out of view and straight back."""
    return 2 * math.ceil(view / step) - 1


def torus_delta(a: np.ndarray, b: np.ndarray, size: int) -> np.ndarray:
    """Shortest signed b − a per axis on a torus of side ``size``."""
    return (np.asarray(b, np.float64) - np.asarray(a, np.float64) + size / 2) % size - size / 2


def views_overlap(a: np.ndarray, b: np.ndarray, view: int, size: int) -> np.ndarray:
    """``(len(a), len(b))`` bool: the ``view × view`` frames centred on poses a[i] and b[j] share a pixel."""
    d = np.abs(torus_delta(np.asarray(a, np.float64)[:, None], np.asarray(b, np.float64)[None], size))
    return (d < view).all(-1)


def pick_place(world: ProceduralWorld, step: int, rng: np.random.Generator) -> tuple[int, int]:
    """A landmark of ``world`` (so the place is recognisable), snapped to the ``step`` grid."""
    if world.landmarks:
        x, y = world.landmarks[int(rng.integers(len(world.landmarks)))][:2]
    else:
        x, y = rng.integers(0, world.size, size=2)
    return int(round(x / step) * step) % world.size, int(round(y / step) * step) % world.size


def plan_loop(seed: int = 0, gap_frames: int = 80, visit_frames: int = 16, view: int = 64, step: int = 4,
              size: int = 1024, place: tuple[int, int] | None = None, reach: int = 192, max_pause: int = 4,
              rng: np.random.Generator | None = None) -> LoopPlan:
    """Plan one loop (see the module docstring). Deterministic in its arguments; ``rng`` (else
    ``default_rng(seed)``) picks the direction and the wander; ``place`` defaults to a random
    point. ValueError for a gap shorter than :func:`min_gap_frames` or a world too small."""
    if visit_frames < 1:
        raise ValueError(f"visit_frames must be positive, got {visit_frames}")
    if step <= 0 or size % step:
        raise ValueError(f"step {step} must be positive and divide the world size {size}")
    leave = math.ceil(view / step)
    if gap_frames < 2 * leave - 1:
        raise ValueError(f"a gap of {gap_frames} frames is too short: leaving the {view}-pixel view at {step} px per "
                         f"frame and coming back takes at least {2 * leave - 1} frames")
    rng = np.random.default_rng(seed) if rng is None else rng
    if place is None:
        place = tuple(int(v) for v in rng.integers(0, size // step, size=2) * step)
    d = _DIRECTIONS[int(rng.integers(4))]
    perp = np.array([d[1], d[0]], dtype=np.int64)
    # local coordinates: u along d (from the place), w across; world = place + u·d + w·perp
    half = (visit_frames - 1) // 2
    visit_u = (np.arange(visit_frames) - half) * step
    u_end = int(visit_u[-1])
    u_x = u_end + leave * step  # where the leave ends and the wander starts/ends
    a_max = (int(visit_u[0]) + size - view) - u_x  # the wander's u stays in [u_x, u_x + a_max]
    a_max -= a_max % step
    if a_max < 0:
        raise ValueError(f"world size {size} is too small for a visit of {visit_frames} frames and a {view}-pixel view")
    leave_u = u_end + step * np.arange(1, leave + 1)
    wander = _wander(rng, gap_frames - 2 * leave + 1, a_max, step, size, reach, max_pause)  # (W, 2) as (a, w)
    approach_u = u_x - step * np.arange(1, leave)
    local = np.concatenate([
        np.stack([visit_u, np.zeros(visit_frames)], 1),
        np.stack([leave_u, np.zeros(leave)], 1),
        np.stack([u_x + wander[:, 0], wander[:, 1]], 1) if len(wander) else np.zeros((0, 2)),
        np.stack([approach_u, np.zeros(leave - 1)], 1),
        np.stack([visit_u[::-1], np.zeros(visit_frames)], 1),
    ]).astype(np.int64)
    poses = np.mod(np.asarray(place)[None] + local[:, :1] * d[None] + local[:, 1:] * perp[None], size).astype(np.float64)
    bounds = np.cumsum([0, visit_frames, leave, len(wander), leave - 1, visit_frames])
    segments = {name: (int(bounds[i]), int(bounds[i + 1])) for i, name in enumerate(SEGMENTS)}
    r0 = segments["return"][0]
    pairs = np.stack([r0 + np.arange(visit_frames), visit_frames - 1 - np.arange(visit_frames)], 1)
    meta = {"gap_frames": int(gap_frames), "direction": [int(d[0]), int(d[1])], "leave_frames": leave,
            "wander_frames": len(wander),
            "band_width_px": int(a_max)}
    return LoopPlan(poses=poses, actions=pose_actions(poses, size), segments=segments, pairs=pairs,
                    place=(int(place[0]), int(place[1])), meta=meta)


def _wander(rng: np.random.Generator, frames: int, a_max: int, step: int, size: int, reach: int,
            max_pause: int) -> np.ndarray:
    """A closed walk of exactly ``frames`` frames from (0, 0) back to (0, 0) in local (a, w) with
    ``0 ≤ a ≤ a_max`` (w wraps on the torus): random waypoints within ``reach``, axis moves of
    ``step`` (mostly along the larger gap), short pauses at waypoints. Invariant: after each
    frame, home is at most the frames left away, so the last frame is at home."""
    out = np.zeros((frames, 2), dtype=np.int64)
    pos, home = np.zeros(2, dtype=np.int64), np.zeros(2, dtype=np.int64)
    target, pause = None, 0

    def delta(p, q) -> tuple[int, int]:
        return int(q[0] - p[0]), int((q[1] - p[1] + size // 2) % size - size // 2)

    def dist(p, q) -> int:  # frames of axis moves between two local points
        da, dw = delta(p, q)
        return (abs(da) + abs(dw)) // step

    def toward(p, q, zigzag: bool):
        da, dw = delta(p, q)
        along_a = abs(da) >= abs(dw)
        if zigzag and da and dw and rng.random() < 0.3:
            along_a = not along_a
        n = p.copy()
        if along_a:
            n[0] += step if da > 0 else -step
        else:
            n[1] = (n[1] + (step if dw > 0 else -step)) % size
        return n

    for t in range(frames):
        after = frames - t - 1  # frames left after this one
        if pause > 0:
            pause -= 1
            nxt = pos
        else:
            if target is None:
                r = reach // step
                wp = pos + rng.integers(-r, r + 1, size=2) * step
                wp[0], wp[1] = min(max(int(wp[0]), 0), a_max), int(wp[1]) % size
                target = wp if dist(pos, wp) + dist(wp, home) <= after else home
            if (pos == target).all():
                target, pause = None, int(rng.integers(0, max_pause + 1))
                nxt = pos
            else:
                nxt = toward(pos, target, zigzag=True)
        if dist(nxt, home) > after:  # keep home reachable
            nxt = toward(pos, home, zigzag=False)
            target = home
        pos = nxt
        out[t] = pos
    return out


def pose_actions(poses: np.ndarray, size: int) -> np.ndarray:
    """Action id of each frame from the pose before it (``"stay"`` for the first and for pauses)."""
    poses = np.asarray(poses, dtype=np.float64)
    d = np.sign(torus_delta(poses[:-1], poses[1:], size)).astype(np.int64)
    ids = np.zeros(len(poses), dtype=np.int64)
    for a, delta in enumerate(ACTION_DELTAS):
        ids[1:][(d == delta).all(-1)] = a
    return ids
