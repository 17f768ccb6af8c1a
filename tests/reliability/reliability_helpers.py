"""Helpers shared by the reliability tests (a module of its own: ``conftest`` is not importable by
name when several test folders have one)."""
from __future__ import annotations

import json
from pathlib import Path

# the interrupt → resume runs: chunks of 2 frames, a window of 4 and a 4 × 2 memory, so that frames
# leave the window for the memory before the interrupt; 4 fps keeps the clip few frames
RESUME = ["--fps", "4", "--quiet", "num_inference_steps=1", "height=16", "width=16", "chunk_frames=2",
          "window_frames=4", "memory.num_buckets=4", "memory.slots=2"]
LINKED = ["clip.mp4", "clip.poses.json", "clip.config.yaml", "clip.partial.config.yaml", "clip.poses.json.tmp", "state.pt"]


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def read_json(path: Path):
    return json.loads(path.read_text())
