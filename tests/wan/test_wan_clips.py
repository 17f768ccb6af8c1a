"""wan-mini clips: 256×256-style world clips with a scale factor, trajectories, the video source."""
import numpy as np
import pytest
import torch

from vidhash.data import Mp4Writer
from vidhash.data.wan_clips import WanClipConfig, WanClips, check_clip_config, clip_frames, clip_trajectory
from vidhash.data.world import ACTION_DELTAS, NULL_ACTION, ProceduralWorld

SMALL = dict(num_frames=9, frame_size=32, scale=2, world_size=128, step=4, reach=16, pool_size=2, clips_per_world=4)


def test_world_clip_shapes_and_determinism():
    ds = WanClips(WanClipConfig(**SMALL))
    a, b = ds[3], WanClips(WanClipConfig(**SMALL))[3]
    assert a["frames"].shape == (9, 3, 32, 32) and a["frames"].dtype == torch.uint8
    assert a["actions"].shape == (9,) and a["poses"].shape == (9, 2)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert not torch.equal(ds[3]["frames"], ds[4]["frames"])
    assert clip_frames(a["frames"]).min() >= -1 and clip_frames(a["frames"]).max() <= 1


@pytest.mark.parametrize("n", [9, 8], ids=["odd-returns", "even-stays"])
def test_out_and_back_returns_to_the_start(n):
    d = WanClipConfig(**{**SMALL, "num_frames": n, "trajectory": "out_and_back"})
    for i in range(5):
        actions, poses = clip_trajectory(d, i, np.random.default_rng(i))
        assert len(actions) == len(poses) == n and actions[0] == 0
        assert np.array_equal(poses[-1], poses[0])
        # each action moves the camera by step pixels from the previous pose (torus)
        step = np.mod(poses[1:] - poses[:-1] + d.world_size // 2, d.world_size) - d.world_size // 2
        assert np.array_equal(step, ACTION_DELTAS[actions[1:]] * d.step)


def test_scale_shows_a_world_pixel_as_scale_squared_pixels():
    d = WanClipConfig(**{**SMALL, "scale": 4, "frame_size": 32, "num_frames": 2})
    ds = WanClips(d)
    item = ds[0]
    seeds = ds.world_seeds(0)
    worlds = [ProceduralWorld(seed=int(s), size=d.world_size, view=d.view) for s in seeds]
    views = [w.render(item["poses"][0].numpy()) for w in worlds]  # (8, 8, 3): the world pixels shown
    frame = item["frames"][0].permute(1, 2, 0).numpy().astype(np.int16)
    # bilinear 4× resize: the centre of each 4×4 block is close to its world pixel
    errs = [np.abs(frame[2::4, 2::4][1:-1, 1:-1] - v[1:-1, 1:-1].astype(np.int16)).mean() for v in views]
    assert min(errs) < 20 and item["frames"].shape[-1] == 32


def test_video_source(tmp_path):
    root = tmp_path / "videos"
    root.mkdir()
    with Mp4Writer(root / "a.mp4", fps=8) as w:
        for t in range(12):
            w.write(np.full((1, 16, 16, 3), 20 * t, dtype=np.uint8))
    ds = WanClips(WanClipConfig(source="video", video_root=str(root), num_frames=4, frame_size=32))
    item = ds[0]
    assert item["frames"].shape == (4, 3, 32, 32) and item["frames"].dtype == torch.float32
    assert torch.all(item["actions"] == NULL_ACTION) and torch.all(item["poses"] == 0)
    # 12 frames = 3 clips; each epoch is a permutation of them
    epoch0 = sorted(round(float(ds[i]["frames"].mean()), 3) for i in range(3))
    assert epoch0 == sorted(round(float(ds[i]["frames"].mean()), 3) for i in range(3, 6)) and len(set(epoch0)) == 3


@pytest.mark.parametrize("bad, key", [
    (dict(frame_size=30, scale=4), "data.frame_size"),
    (dict(world_size=24), "data.world_size"),
    (dict(source="video"), "data.video_root"),
    (dict(trajectory="spiral"), "data.trajectory"),
    (dict(num_worlds=2_000_000), "data.world_seed_start"),
    (dict(step=0), "data.step"),
])
def test_config_errors_name_the_key(bad, key):
    with pytest.raises(ValueError, match=key):
        check_clip_config(WanClipConfig(**{**SMALL, **bad}))
