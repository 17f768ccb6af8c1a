"""Clip datasets: clips of the procedural world (with actions and poses) and clips from folders of mp4.

    python -c "from vidhash.data import WorldClipDataset; print({k: v.shape for k, v in WorldClipDataset(8, 16)[0].items()})"

Both return dicts of tensors that ``torch.utils.data.default_collate`` batches:

* ``frames``  (frames, channels, height, width) float32 in [-1, 1]
* ``actions`` (frames,) int64 — ids into ``ACTIONS``; ``NULL_ACTION`` where there is none (videos)
* ``poses``   (frames, 2) float32 — world (x, y) of the view centre; zeros where unknown (videos),
  which makes the model's position embedding fall back to positions within the frame.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .video import probe_frames, read_frames
from .world import NULL_ACTION, ProceduralWorld, RandomTrajectory


def to_model_frames(frames: np.ndarray) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float32 (T, 3, H, W) in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


class WorldClipDataset(Dataset):
    """``num_clips`` clips of ``num_frames`` from one procedural world; clip ``i`` is deterministic in (seed, i).

    Args:
        num_clips: dataset length.
        num_frames: frames per clip.
        seed: trajectory seed base (clip i uses trajectory seed ``(seed, i)``).
        world_seed: which world.
        world_size, view, step: world side, frame side and camera step in pixels.
        revisit: probability that a trajectory walks back to an earlier waypoint.
    """

    def __init__(
        self, num_clips: int, num_frames: int, seed: int = 0, world_seed: int = 0,
        world_size: int = 1024, view: int = 64, step: int = 4, revisit: float = 0.5,
    ):
        if num_clips <= 0 or num_frames <= 0:
            raise ValueError(f"num_clips and num_frames must be positive, got {num_clips}, {num_frames}")
        self.num_clips, self.num_frames, self.seed = int(num_clips), int(num_frames), int(seed)
        self.step, self.revisit = int(step), float(revisit)
        self.world = ProceduralWorld(seed=world_seed, size=world_size, view=view)

    def __len__(self) -> int:
        return self.num_clips

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not 0 <= i < self.num_clips:
            raise IndexError(f"clip {i} out of range 0..{self.num_clips - 1}")
        traj = RandomTrajectory(self.world.size, self.step, seed=[self.seed, i], revisit=self.revisit)
        actions, poses = traj.take(self.num_frames)
        actions[0] = 0  # nothing brought the camera to the first frame
        frames = self.world.render_many(poses)
        return {
            "frames": to_model_frames(frames),
            "actions": torch.from_numpy(actions),
            "poses": torch.from_numpy(poses.astype(np.float32)),
        }


VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi")


class VideoFolderDataset(Dataset):
    """Non-overlapping clips of ``num_frames`` (every ``frame_stride``-th frame) from every video under ``root``.

    Frames are resized to height × width. Videos shorter than one clip are skipped. The index
    (frame counts) is built once at construction with PyAV.
    """

    def __init__(self, root: str | os.PathLike, num_frames: int, height: int = 64, width: int = 64,
                 frame_stride: int = 1, extensions: tuple[str, ...] = VIDEO_EXTENSIONS):
        root = Path(root)
        if not root.is_dir():
            raise ValueError(f"video folder {root} does not exist or is not a folder")
        if num_frames <= 0 or frame_stride <= 0:
            raise ValueError(f"num_frames and frame_stride must be positive, got {num_frames}, {frame_stride}")
        self.num_frames, self.height, self.width, self.stride = int(num_frames), int(height), int(width), int(frame_stride)
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in extensions and ".partial." not in p.name)
        if not files:
            raise ValueError(f"no videos ({', '.join(extensions)}) under {root}")
        span = self.num_frames * self.stride
        self.index: list[tuple[Path, int]] = []
        for path in files:
            n = probe_frames(path)
            self.index.extend((path, start) for start in range(0, n - span + 1, span))
        if not self.index:
            raise ValueError(f"no video under {root} has {span} frames (num_frames × frame_stride)")

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        path, start = self.index[i]
        frames = read_frames(path, start, self.num_frames * self.stride, self.height, self.width)[:: self.stride]
        if len(frames) != self.num_frames:
            raise ValueError(f"{path}: expected {self.num_frames} frames from frame {start}, decoded {len(frames)}")
        return {
            "frames": to_model_frames(frames),
            "actions": torch.full((self.num_frames,), NULL_ACTION, dtype=torch.int64),
            "poses": torch.zeros(self.num_frames, 2),
        }
