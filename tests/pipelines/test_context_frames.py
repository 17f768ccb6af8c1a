"""Frame prompts: ``context_frames`` enter the window and memory exactly as generated frames do."""
import numpy as np
import PIL.Image
import pytest
import torch

from vidhash.pipelines import VidHashState


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


FAST = dict(num_inference_steps=1, chunk_frames=4, window_frames=8)


def _path(n, start=(100, 200), step=4):
    return np.array([[start[0] + step * i, start[1]] for i in range(n)], dtype=np.float64)


def _observed(n, seed=1):
    return np.random.default_rng(seed).integers(0, 256, size=(n, 64, 64, 3), dtype=np.uint8)


@pytest.mark.parametrize("mode", ["hashed", "window", "full"])
def test_context_commits_exactly_like_generated_frames(tiny_pipe, mode):
    """Observed frames F == generated frames whose final latents a callback replaced by F:
    same window, same memory, so the frames generated after them are bitwise equal."""
    kw = dict(FAST, memory={"mode": mode})
    n = 12  # > window: some observed frames reach the memory
    frames, poses = _observed(n), _path(n)
    latents = torch.from_numpy(frames).float().div(255).permute(0, 3, 1, 2).mul(2).sub(1).unsqueeze(0)

    def replace(pipe, i, t, kwargs):
        s = pipe.chunk_index * 4
        return {"latents": latents[:, s : s + kwargs["latents"].shape[1]]}

    by_callback = tiny_pipe(num_frames=n, poses=poses, generator=gen(), callback_on_step_end=replace, **kw).state
    after = _path(8, start=(148, 200))
    want = tiny_pipe(num_frames=8, poses=after, state=by_callback, generator=gen(7), **kw)
    got = tiny_pipe(num_frames=8, poses=after, context_frames=frames, context_poses=poses, generator=gen(7), **kw)
    np.testing.assert_array_equal(got.frames, want.frames)
    assert got.frame_start == n and got.state.frame_index == n + 8 and got.frames.shape[1] == 8
    if mode == "hashed":
        assert all(int(m.num_entries().min()) > 0 for m in got.state.memories)


def test_context_changes_what_follows(tiny_pipe):
    poses = _path(8)
    a = tiny_pipe(num_frames=4, poses=_path(4, (132, 200)), context_frames=_observed(8, 1), context_poses=poses,
                  generator=gen(), **FAST)
    b = tiny_pipe(num_frames=4, poses=_path(4, (132, 200)), context_frames=_observed(8, 2), context_poses=poses,
                  generator=gen(), **FAST)
    assert not np.array_equal(a.frames, b.frames)


def test_context_draws_no_noise(tiny_pipe):
    """Observed frames draw nothing from the generator: it ends where a run without them ends."""
    kw = dict(FAST, poses=_path(4, (124, 200)), generator=gen(3))
    plain = tiny_pipe(num_frames=4, **kw).state
    prompted = tiny_pipe(num_frames=4, context_frames=_observed(5), context_poses=_path(5), **kw).state
    assert torch.equal(plain.generator.get_state(), prompted.generator.get_state())
    assert prompted.frame_index == 9 and prompted.pose == [136.0, 200.0]


def test_context_with_state_resume_exact(tiny_pipe, tmp_path):
    """observe + generate N, save, load, observe + generate N more == the same in one state without saving."""
    obs1, obs2 = _observed(6, 1), _observed(5, 2)
    p1, q1, p2, q2 = _path(6), _path(8, (124, 200)), _path(5, (156, 200)), _path(8, (176, 200))
    kw = dict(FAST)
    straight = tiny_pipe(num_frames=8, poses=q1, context_frames=obs1, context_poses=p1, generator=gen(2), **kw)
    s2 = tiny_pipe(num_frames=8, poses=q2, context_frames=obs2, context_poses=p2, state=straight.state, **kw)
    first = tiny_pipe(num_frames=8, poses=q1, context_frames=obs1, context_poses=p1, generator=gen(2), **kw)
    loaded = VidHashState.load(first.state.save(tmp_path / "s.pt"))
    second = tiny_pipe(num_frames=8, poses=q2, context_frames=obs2, context_poses=p2, state=loaded, **kw)
    np.testing.assert_array_equal(straight.frames, first.frames)
    np.testing.assert_array_equal(s2.frames, second.frames)
    assert second.frame_start == 6 + 8 + 5 and loaded.frame_index == 6 + 8 + 5 + 8


def test_context_stream_and_layouts(tiny_pipe):
    """stream() yields only generated chunks; numpy uint8 / float / batch-1, torch and PIL inputs agree."""
    obs, poses = _observed(6), _path(6)
    chunks = list(tiny_pipe.stream(num_frames=5, context_frames=obs, context_poses=poses, generator=gen(), **FAST))
    assert [c.frame_start for c in chunks] == [6, 10] and sum(c.frames.shape[1] for c in chunks) == 5
    ref = np.concatenate([c.frames for c in chunks], 1)
    as_float = obs.astype(np.float32) / 255
    for frames in (as_float, as_float[None], torch.from_numpy(as_float).permute(0, 3, 1, 2),
                   [PIL.Image.fromarray(f) for f in obs]):
        out = tiny_pipe(num_frames=5, context_frames=frames, context_poses=poses, generator=gen(), **FAST)
        np.testing.assert_array_equal(out.frames, ref)


def test_context_actions_and_random_trajectory(tiny_pipe):
    """Poses follow context_actions from the state's pose; a random trajectory continues from the last one."""
    out = tiny_pipe(num_frames=4, context_frames=_observed(3), context_actions=["right", "right", "down"],
                    generator=gen(), action_step=4, **FAST)
    first = out.poses[0]
    # the random trajectory starts at the last context pose (0 + 8, 0 + 4) and moves one step at most
    assert np.abs(first - np.array([8.0, 4.0])).max() <= 4


@pytest.mark.parametrize("kwargs,match", [
    (dict(context_frames=np.zeros((2, 64, 64, 3), np.uint8)), "need their camera path"),
    (dict(context_poses=[[0, 0]]), "without context_frames"),
    (dict(context_frames=np.zeros((2, 64, 64, 4), np.uint8), context_poses=[[0, 0]] * 2), "must have 3 channels"),
    (dict(context_frames=np.zeros((2, 0, 64, 3), np.uint8), context_poses=[[0, 0]] * 2), "no pixels"),
    (dict(context_frames=np.zeros((2, 64, 64, 3), np.uint8), context_poses=[[0, 0]] * 3), "context_poses must have shape"),
    (dict(context_frames=np.zeros((2, 64, 64, 3), np.uint8), context_actions=["up"]), "got 1 context_actions"),
    (dict(context_frames=np.full((2, 64, 64, 3), 2.0), context_poses=[[0, 0]] * 2), r"must lie in \[0, 1\]"),
    (dict(context_frames=np.zeros((0, 64, 64, 3), np.uint8), context_poses=np.zeros((0, 2))), "empty"),
    (dict(context_frames=np.zeros((64, 64, 3), np.uint8), context_poses=[[0, 0]]), "must be \\(frames, height"),
], ids=["no-path", "poses-alone", "channels", "no-pixels", "poses-length", "actions-length", "range", "empty", "ndim"])
def test_context_bad_inputs_raise_before_work(tiny_pipe, kwargs, match):
    calls = []
    orig = tiny_pipe.transformer.forward
    tiny_pipe.transformer.forward = lambda *a, **k: calls.append(1) or orig(*a, **k)
    try:
        with pytest.raises(ValueError, match=match):
            tiny_pipe(num_frames=2, generator=gen(), **FAST, **kwargs)
    finally:
        del tiny_pipe.transformer.forward
    assert not calls
