"""Helpers shared by the reliability tests (a module of its own: ``conftest`` is not importable by
name when several test folders have one)."""
from __future__ import annotations

import json
from pathlib import Path

LINKED = ["clip.mp4", "clip.poses.json", "clip.config.yaml", "clip.partial.config.yaml", "clip.poses.json.tmp", "state.pt"]


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def read_json(path: Path):
    return json.loads(path.read_text())
