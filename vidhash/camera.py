"""The camera vocabulary: actions, poses reached by them, and random trajectories.

    python -c "from vidhash.camera import RandomTrajectory; print(RandomTrajectory(1024, seed=0).take(8))"

Poses are ``(x, y)`` world pixel coordinates of the view's centre, wrapped into ``[0, size)``
(a torus). Actions move the camera by ``step`` pixels: ``ACTIONS = ("stay", "up", "down",
"left", "right")``; ``actions[t]`` is the action that brought the camera to frame ``t``
(``"stay"`` for the first); ``NULL_ACTION`` is the id of "no action" (frames of videos).

``RandomTrajectory`` wanders between waypoints and, with probability ``revisit``, walks back to
one it reached earlier (seconds to minutes ago), so clips contain returns to known places. Its
full state (numpy RNG included) is a small JSON-able dict of bounded size, so a generation run
can carry it in a saved state and continue exactly.

What the pipeline and the model know of a camera lives here; the procedural world that renders
views (``vidhash.data.world``) is one user of it.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ACTIONS: tuple[str, ...] = ("stay", "up", "down", "left", "right")
# (dx, dy) per action; y grows downwards (image rows).
ACTION_DELTAS = np.array([[0, 0], [0, -1], [0, 1], [-1, 0], [1, 0]], dtype=np.int64)
# Index the model uses when a frame has no action (videos from folders, unconditional frames).
NULL_ACTION = len(ACTIONS)


def action_ids(actions: Sequence[str | int]) -> np.ndarray:
    """Names or ids -> int64 ids; unknown names or out-of-range ids raise ValueError naming them
    (a lone name, e.g. ``"right"``, too: it is a sequence of letters, not of actions)."""
    if isinstance(actions, str):
        raise ValueError(f"actions must be a sequence of action names or ids, one per frame, got the string "
                         f"{actions!r}; e.g. [{actions!r}] * num_frames")
    ids = []
    for i, a in enumerate(actions):
        if isinstance(a, str):
            if a not in ACTIONS:
                raise ValueError(f"unknown action {a!r} at position {i}; known actions: {', '.join(ACTIONS)}")
            ids.append(ACTIONS.index(a))
        elif isinstance(a, (int, np.integer)) and not isinstance(a, bool):
            if not 0 <= int(a) < len(ACTIONS):
                raise ValueError(f"action id {a} at position {i} is out of range 0..{len(ACTIONS) - 1}")
            ids.append(int(a))
        else:
            raise ValueError(f"action at position {i} must be a name or an int, got {type(a).__name__}")
    return np.asarray(ids, dtype=np.int64)


def integrate_actions(actions: np.ndarray, start: Sequence[float], step: int, size: int) -> np.ndarray:
    """Poses (T, 2) float64 reached by applying ``actions`` (T,) from ``start`` (the pose before frame 0)."""
    deltas = ACTION_DELTAS[np.asarray(actions, dtype=np.int64)] * step
    return np.mod(np.asarray(start, dtype=np.float64)[None] + np.cumsum(deltas, axis=0), size)


class RandomTrajectory:
    """Seeded wandering camera: walks to waypoints, pauses, and often returns to earlier waypoints.

    Args:
        size: world size (poses wrap modulo it).
        step: pixels per move.
        seed: trajectory seed.
        start: pose before the first frame; random (on the step grid) when None.
        reach: new waypoints lie within ± reach pixels of the current pose.
        revisit: probability that the next waypoint is one reached before.
        history: how many reached waypoints are remembered (bounds the state size).
        max_pause: pauses at a waypoint last 0..max_pause frames.
    """

    def __init__(
        self,
        size: int = 1024,
        step: int = 4,
        seed: int = 0,
        start: Sequence[float] | None = None,
        reach: int = 192,
        revisit: float = 0.5,
        history: int = 32,
        max_pause: int = 6,
    ):
        if step <= 0 or size % step:
            raise ValueError(f"step {step} must be positive and divide the world size {size}")
        self.size, self.step, self.reach, self.revisit = int(size), int(step), int(reach), float(revisit)
        self.history_len, self.max_pause = int(history), int(max_pause)
        self.rng = np.random.default_rng(seed)
        if start is None:
            start = self.rng.integers(0, size // step, size=2) * step
        self.pos = [int(round(start[0])) % size, int(round(start[1])) % size]
        self.target: list[int] | None = None
        self.pause = 0
        self.history: list[list[int]] = [list(self.pos)]

    # -- state (small, JSON-able, bounded) ---------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "size": self.size, "step": self.step, "reach": self.reach, "revisit": self.revisit,
            "history_len": self.history_len, "max_pause": self.max_pause,
            "rng": self.rng.bit_generator.state, "pos": list(self.pos),
            "target": None if self.target is None else list(self.target),
            "pause": self.pause, "history": [list(h) for h in self.history],
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> RandomTrajectory:
        traj = cls(state["size"], state["step"], seed=0, start=state["pos"], reach=state["reach"],
                   revisit=state["revisit"], history=state["history_len"], max_pause=state["max_pause"])
        traj.rng.bit_generator.state = state["rng"]
        traj.target = None if state["target"] is None else list(state["target"])
        traj.pause = int(state["pause"])
        traj.history = [list(h) for h in state["history"]]
        return traj

    # -- stepping -----------------------------------------------------------------------------
    def _delta(self, a: int, b: int) -> int:
        """Shortest signed distance from a to b on the torus."""
        return (b - a + self.size // 2) % self.size - self.size // 2

    def _new_target(self) -> list[int]:
        if len(self.history) > 1 and self.rng.random() < self.revisit:
            return list(self.history[int(self.rng.integers(len(self.history) - 1))])  # not the last one
        off = self.rng.integers(-self.reach // self.step, self.reach // self.step + 1, size=2) * self.step
        return [int((self.pos[0] + off[0]) % self.size), int((self.pos[1] + off[1]) % self.size)]

    def next_action(self) -> int:
        """Advance one frame; return the action id taken."""
        if self.pause > 0:
            self.pause -= 1
            return 0
        if self.target is None:
            self.target = self._new_target()
        dx, dy = self._delta(self.pos[0], self.target[0]), self._delta(self.pos[1], self.target[1])
        if dx == 0 and dy == 0:  # arrived: remember the place, pause a little
            self.history.append(list(self.target))
            self.history = self.history[-self.history_len :]
            self.target = None
            self.pause = int(self.rng.integers(0, self.max_pause + 1))
            return 0
        # mostly reduce the larger gap, sometimes the other one (paths that are not straight lines)
        along_x = abs(dx) >= abs(dy)
        if dx != 0 and dy != 0 and self.rng.random() < 0.3:
            along_x = not along_x
        if along_x:
            action = 4 if dx > 0 else 3
        else:
            action = 2 if dy > 0 else 1
        d = ACTION_DELTAS[action] * self.step
        self.pos = [int((self.pos[0] + d[0]) % self.size), int((self.pos[1] + d[1]) % self.size)]
        return action

    def take(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The next ``n`` frames: actions (n,) int64 and poses (n, 2) float64."""
        actions = np.empty(n, dtype=np.int64)
        poses = np.empty((n, 2), dtype=np.float64)
        for t in range(n):
            actions[t] = self.next_action()
            poses[t] = self.pos
        return actions, poses


def revisits(poses: np.ndarray, min_gap: int, radius: float = 0.0, size: int | None = None) -> list[tuple[int, int]]:
    """Pairs (earlier, later) with ``later - earlier >= min_gap`` whose poses lie within ``radius``
    (torus distance when ``size`` is given); one pair per later frame (its latest such earlier frame)."""
    poses = np.asarray(poses, dtype=np.float64)
    pairs = []
    for t in range(len(poses)):
        d = np.abs(poses[: max(t - min_gap + 1, 0)] - poses[t])
        if size is not None:
            d = np.minimum(d, size - d)
        hit = np.nonzero(np.max(d, axis=-1) <= radius)[0]
        if len(hit):
            pairs.append((int(hit[-1]), t))
    return pairs
