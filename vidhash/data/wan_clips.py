"""Clips for wan-mini: the procedural world seen at 256×256 with camera motion, or folders of mp4.

    python -c "from vidhash.data.wan_clips import WanClipConfig, WanClips; \
print({k: v.shape for k, v in WanClips(WanClipConfig())[0].items()})"

**World clips.** ``ProceduralWorld`` draws landmarks 6–16 world pixels wide: at a native 256×256
view of a 1024² world a frame shows ~30 of them at 1–2 patches each over per-pixel grain. A world
pixel is therefore shown as ``scale × scale`` screen pixels: the world renders a
``frame_size / scale`` view that is resized bilinearly (``scale=2``: a 128² view of a 512² world,
~7 landmarks of 1.5–4 patches per frame). The camera moves ``step`` world pixels per action
(``step=4, scale=2``: 8 screen pixels, one 8×8 patch per frame). A 33-frame clip renders in
~3.4 ms on one core; a 512² world builds in ~90 ms.

Clip ``index`` is a pure function of ``(seed, index)``: indices come in blocks of
``pool_size · clips_per_world``; block b draws ``pool_size`` world seeds (training range,
below ``HELDOUT_WORLD_SEED``) and each clip picks one, so a data worker keeps at most
``pool_size`` worlds (an LRU; each worker builds its own, ~1% of a core at 10 clips/s).
Trajectories: ``out_and_back`` (walk out, retrace: the last frame is back at the first place; an even
length stays there one frame),
``random`` (``RandomTrajectory`` with revisits) or ``mixed`` (half each, by clip).

**Video clips** (``source="video"``): ``VideoFolderDataset`` clips resized to ``frame_size``, in a
seeded permutation per epoch; actions are ``NULL_ACTION``, poses zero.

An item: ``frames`` (f, 3, h, w) — uint8 for world clips (:func:`clip_frames` scales them to
[−1, 1] where they are used), float32 in [−1, 1] for video clips —, ``actions`` (f,) int64,
``poses`` (f, 2) float32 world (x, y) of the view centre.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from .clips import VideoFolderDataset
from .world import HELDOUT_WORLD_SEED, NULL_ACTION, ProceduralWorld, RandomTrajectory

INVERSE_ACTION = np.array([0, 2, 1, 4, 3, NULL_ACTION], dtype=np.int64)  # stay, up<->down, left<->right, null
SOURCES = ("world", "video")
TRAJECTORIES = ("out_and_back", "random", "mixed")


@dataclass
class WanClipConfig:
    source: str = "world"  # world | video
    num_frames: int = 33
    frame_size: int = 256  # frames are frame_size × frame_size
    seed: int = 0  # base of every per-clip seed (world choice, trajectory)
    # -- procedural world
    scale: int = 2  # screen pixels per world pixel (the world renders a frame_size / scale view)
    world_size: int = 512
    step: int = 4  # world pixels per move
    trajectory: str = "mixed"  # out_and_back | random | mixed
    reach: int = 48  # waypoints within ± reach world pixels (out_and_back walks up to 2·reach)
    revisit: float = 0.8  # RandomTrajectory's probability of walking back to an earlier waypoint
    world_seed_start: int = 0
    num_worlds: int = 100_000
    pool_size: int = 8  # worlds alive per block of pool_size × clips_per_world clips
    clips_per_world: int = 32
    # -- folders of mp4
    video_root: Optional[str] = None
    frame_stride: int = 1

    @property
    def view(self) -> int:
        """The world's view in world pixels."""
        return self.frame_size // self.scale


def check_clip_config(d: WanClipConfig, prefix: str = "data.") -> None:
    """Values a type check cannot catch; ValueError naming the key."""
    for key in ("num_frames", "frame_size", "scale", "world_size", "step", "num_worlds", "pool_size",
                "clips_per_world", "frame_stride", "reach"):
        if getattr(d, key) <= 0:
            raise ValueError(f"{prefix}{key} must be positive, got {getattr(d, key)}")
    if d.source not in SOURCES:
        raise ValueError(f"{prefix}source must be one of {', '.join(SOURCES)}, got {d.source!r}")
    if d.trajectory not in TRAJECTORIES:
        raise ValueError(f"{prefix}trajectory must be one of {', '.join(TRAJECTORIES)}, got {d.trajectory!r}")
    if d.source == "video" and not d.video_root:
        raise ValueError(f"{prefix}video_root must be set when {prefix}source is video")
    if d.source == "world":
        if d.frame_size % d.scale:
            raise ValueError(f"{prefix}frame_size ({d.frame_size}) must be a multiple of {prefix}scale ({d.scale})")
        if d.world_size % d.step or d.world_size < 2 * d.view:
            raise ValueError(f"{prefix}world_size ({d.world_size}) must be a multiple of {prefix}step and at "
                             f"least twice the view (frame_size / scale = {d.view})")
        if d.world_seed_start < 0 or d.world_seed_start + d.num_worlds > HELDOUT_WORLD_SEED:
            raise ValueError(f"{prefix}world_seed_start + {prefix}num_worlds must stay in [0, {HELDOUT_WORLD_SEED}): "
                             f"world seeds >= {HELDOUT_WORLD_SEED} are held out for evaluation")


def clip_frames(frames: torch.Tensor) -> torch.Tensor:
    """A batch's frames as float32 in [−1, 1]: uint8 world frames scaled, float video frames as they are."""
    return frames.float() / 127.5 - 1.0 if frames.dtype == torch.uint8 else frames.float()


def render_clip(world: ProceduralWorld, poses: np.ndarray, frame_size: int) -> np.ndarray:
    """Frames (f, frame_size, frame_size, 3) uint8 of ``poses``: the world's view, resized bilinearly."""
    frames = world.render_many(poses)
    if world.view == frame_size:
        return frames
    out = np.empty((len(frames), frame_size, frame_size, 3), dtype=np.uint8)
    for t, frame in enumerate(frames):
        out[t] = cv2.resize(frame, (frame_size, frame_size), interpolation=cv2.INTER_LINEAR)
    return out


def clip_trajectory(d: WanClipConfig, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Actions (f,) int64 and poses (f, 2) float64 (world pixels) of clip ``index``."""
    kind = d.trajectory
    if kind == "mixed":
        kind = "out_and_back" if rng.random() < 0.5 else "random"
    tseed = [d.seed, 3, int(index)]
    n = d.num_frames
    if kind == "random":
        actions, poses = RandomTrajectory(d.world_size, d.step, seed=tseed, reach=d.reach, revisit=d.revisit,
                                          max_pause=3).take(n)
    else:
        half = (n + 1) // 2
        out_a, out_p = RandomTrajectory(d.world_size, d.step, seed=tseed, reach=2 * d.reach, revisit=0.0,
                                        max_pause=2).take(half)
        actions = np.concatenate([out_a, INVERSE_ACTION[out_a[:0:-1]]])  # the moves that undo the walk out
        poses = np.concatenate([out_p, out_p[-2::-1]])
        if len(actions) < n:  # an even clip length: stay one frame at the start
            actions, poses = np.append(actions, 0), np.concatenate([poses, poses[-1:]])
    actions = actions.copy()
    actions[0] = 0  # nothing brought the camera to the first frame
    return actions, poses


class WanClips(Dataset):
    """``clips[index]`` → dict of frames, actions, poses (module docstring); indices are unbounded
    for world clips (``len`` is only for DataLoader bookkeeping) and wrap by epoch for videos."""

    def __init__(self, cfg: WanClipConfig):
        check_clip_config(cfg)
        self.cfg = cfg
        self.videos = None
        if cfg.source == "video":
            try:
                self.videos = VideoFolderDataset(cfg.video_root, cfg.num_frames, cfg.frame_size, cfg.frame_size,
                                                 cfg.frame_stride)
            except ValueError as err:
                raise ValueError(f"data.video_root: {err}") from None
            except Exception as err:  # PyAV: a file that is not a readable video
                raise ValueError(f"data.video_root {cfg.video_root}: a video could not be read ({err})") from None
        self._worlds: OrderedDict[int, ProceduralWorld] = OrderedDict()

    def __len__(self) -> int:
        return 1 << 62

    def world_seeds(self, block: int) -> np.ndarray:
        d = self.cfg
        return d.world_seed_start + np.random.default_rng([d.seed, 2, int(block)]).integers(0, d.num_worlds, d.pool_size)

    def world(self, seed: int) -> ProceduralWorld:
        w = self._worlds.get(seed)
        if w is None:
            w = self._worlds[seed] = ProceduralWorld(seed=int(seed), size=self.cfg.world_size, view=self.cfg.view)
            while len(self._worlds) > self.cfg.pool_size:
                self._worlds.popitem(last=False)
        self._worlds.move_to_end(seed)
        return w

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        d, index = self.cfg, int(index)
        if index < 0:
            raise IndexError(f"clip index must be >= 0, got {index}")
        if self.videos is not None:
            n = len(self.videos)
            epoch, k = divmod(index, n)
            item = self.videos[int(np.random.default_rng([d.seed, 4, epoch]).permutation(n)[k])]
            return {"frames": item["frames"], "actions": item["actions"], "poses": item["poses"]}
        rng = np.random.default_rng([d.seed, 1, index])
        seeds = self.world_seeds(index // (d.pool_size * d.clips_per_world))
        world = self.world(int(seeds[int(rng.integers(len(seeds)))]))
        actions, poses = clip_trajectory(d, index, rng)
        frames = render_clip(world, poses, d.frame_size)
        return {"frames": torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous(),
                "actions": torch.from_numpy(actions),
                "poses": torch.from_numpy(poses.astype(np.float32))}
