"""Clip datasets and the mp4 writer/reader."""
import os

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from vidhash.data import NULL_ACTION, Mp4Writer, VideoFolderDataset, WorldClipDataset, probe_frames, read_frames


def _frames(n, h=64, w=64, seed=0):
    rng = np.random.default_rng(seed)  # 8-pixel blocks: survives 4:2:0 chroma subsampling
    base = np.kron(rng.integers(0, 200, (1, h // 8, w // 8, 3)), np.ones((1, 8, 8, 1), dtype=np.int64))
    return np.clip(base + np.arange(n)[:, None, None, None] * 4, 0, 255).astype(np.uint8)


def test_world_clips_shapes_and_determinism():
    ds = WorldClipDataset(num_clips=3, num_frames=12, seed=1, world_size=256)
    item = ds[2]
    assert item["frames"].shape == (12, 3, 64, 64) and item["frames"].dtype == torch.float32
    assert item["frames"].min() >= -1 and item["frames"].max() <= 1
    assert item["actions"].shape == (12,) and item["actions"].dtype == torch.int64 and item["actions"][0] == 0
    assert item["poses"].shape == (12, 2)
    again = WorldClipDataset(num_clips=3, num_frames=12, seed=1, world_size=256)[2]
    assert all(torch.equal(item[k], again[k]) for k in item)
    assert not torch.equal(ds[0]["poses"], item["poses"])
    batch = default_collate([ds[0], ds[1]])
    assert batch["frames"].shape == (2, 12, 3, 64, 64)
    with pytest.raises(IndexError):
        ds[3]


def test_mp4_writer_renames_on_close(tmp_path):
    out = tmp_path / "a.mp4"
    with Mp4Writer(out, fps=8) as w:
        w.write(_frames(10))
        w.write(_frames(3)[0])
        assert (tmp_path / "a.partial.mp4").exists() and not out.exists()
    assert out.exists() and not (tmp_path / "a.partial.mp4").exists()
    frames = read_frames(out)
    assert frames.shape == (11, 64, 64, 3) and probe_frames(out) == 11
    assert np.abs(frames[:10].astype(int) - _frames(10)).mean() < 4  # lossy but close


def test_mp4_writer_error_leaves_playable_partial_only(tmp_path):
    out = tmp_path / "b.mp4"
    with pytest.raises(RuntimeError):
        with Mp4Writer(out, fps=8) as w:
            w.write(_frames(13))
            raise RuntimeError("crash")
    assert not out.exists()
    assert read_frames(tmp_path / "b.partial.mp4").shape[0] == 13


@pytest.mark.parametrize("make,match", [
    (lambda p: Mp4Writer(p / "missing" / "x.mp4", fps=8), "does not exist"),
    (lambda p: Mp4Writer(p / "x.avi", fps=8), "must end in .mp4"),
    (lambda p: Mp4Writer(p / "x.mp4", fps=0), "fps"),
    (lambda p: Mp4Writer(p, fps=8), "is a directory"),
], ids=["missing-folder", "not-mp4", "zero-fps", "directory"])
def test_mp4_writer_bad_paths(tmp_path, make, match):
    with pytest.raises(ValueError, match=match):
        make(tmp_path)


def test_mp4_writer_bad_frames(tmp_path):
    w = Mp4Writer(tmp_path / "c.mp4", fps=8)
    with pytest.raises(ValueError, match="uint8"):
        w.write(np.zeros((2, 64, 64, 3), np.float32))
    with pytest.raises(ValueError, match="even"):
        w.write(np.zeros((2, 63, 64, 3), np.uint8))
    w.write(np.zeros((2, 64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="differs"):
        w.write(np.zeros((2, 32, 32, 3), np.uint8))
    w.close()


def test_video_folder_dataset(tmp_path):
    for name, n in (("a.mp4", 20), ("sub/b.mp4", 9), ("short.mp4", 3)):
        os.makedirs((tmp_path / name).parent, exist_ok=True)
        with Mp4Writer(tmp_path / name, fps=8) as w:
            w.write(_frames(n, seed=len(name)))
    ds = VideoFolderDataset(tmp_path, num_frames=4, height=32, width=48, frame_stride=2)
    assert len(ds) == 2 + 1  # a: 20 // 8, b: 9 // 8, short: none
    item = ds[1]
    assert item["frames"].shape == (4, 3, 32, 48)
    assert (item["actions"] == NULL_ACTION).all() and item["poses"].abs().sum() == 0


@pytest.mark.parametrize("kwargs,match", [({"num_frames": 4}, "no videos"), ({"num_frames": 0}, "positive")],
                         ids=["empty-folder", "zero-frames"])
def test_video_folder_dataset_errors(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        VideoFolderDataset(tmp_path, **kwargs)
    with pytest.raises(ValueError, match="does not exist"):
        VideoFolderDataset(tmp_path / "nope", num_frames=4)
