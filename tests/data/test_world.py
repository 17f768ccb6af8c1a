"""Procedural world: determinism, rendering on the torus, trajectories that return, resumable trajectory state."""
import numpy as np
import pytest

from vidhash.data.world import (
    ACTIONS, ProceduralWorld, RandomTrajectory, action_ids, integrate_actions, revisits,
)


@pytest.fixture(scope="module")
def world():
    return ProceduralWorld(seed=3, size=256, view=64)


def test_world_is_deterministic_by_seed(world):
    again = ProceduralWorld(seed=3, size=256, view=64)
    other = ProceduralWorld(seed=4, size=256, view=64)
    assert np.array_equal(world.texture, again.texture)
    assert not np.array_equal(world.texture, other.texture)
    assert world.texture.shape == (256, 256, 3) and world.texture.dtype == np.uint8


@pytest.mark.parametrize("pose", [(128, 128), (0, 0), (255, 3), (10.7, 250.2), (-40, 300)],
                         ids=["centre", "origin", "x-seam", "fractional-y-seam", "outside-wraps"])
def test_render_is_a_wrapped_crop(world, pose):
    frame = world.render(pose)
    assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8
    x0 = int(np.floor(pose[0])) - 32
    y0 = int(np.floor(pose[1])) - 32
    expected = np.roll(world.texture, (-y0, -x0), axis=(0, 1))[:64, :64]
    assert np.array_equal(frame, expected)


def test_landmarks_make_places_distinct(world):
    """Frames of different places differ (no two of a grid of views are identical)."""
    frames = world.render_many(np.array([[x, y] for x in range(0, 256, 64) for y in range(0, 256, 64)]))
    flat = frames.reshape(len(frames), -1).astype(np.int32)
    d = np.abs(flat[:, None] - flat[None]).mean(-1)
    assert (d + np.eye(len(frames)) * 1e9).min() > 5


def test_world_rejects_a_view_too_large():
    with pytest.raises(ValueError, match="twice the view"):
        ProceduralWorld(size=100, view=64)


def test_trajectory_poses_follow_actions_and_are_deterministic():
    a1, p1 = RandomTrajectory(1024, 4, seed=7).take(500)
    a2, p2 = RandomTrajectory(1024, 4, seed=7).take(500)
    assert np.array_equal(a1, a2) and np.array_equal(p1, p2)
    start = RandomTrajectory(1024, 4, seed=7).pos
    assert np.array_equal(integrate_actions(a1, start, 4, 1024), p1)
    assert set(np.unique(a1)) <= set(range(len(ACTIONS)))


def test_trajectory_returns_after_seconds_to_minutes():
    """Over 10 minutes at 8 fps, the camera comes back to exact earlier poses after ≥ 5 s and after ≥ 60 s."""
    _, poses = RandomTrajectory(1024, 4, seed=0).take(4800)
    gaps = [b - a for a, b in revisits(poses, min_gap=40, size=1024)]
    assert len(gaps) > 50
    assert max(gaps) >= 8 * 60


def test_trajectory_state_resumes_exactly():
    straight = RandomTrajectory(1024, 4, seed=11)
    a, p = straight.take(300)
    first = RandomTrajectory(1024, 4, seed=11)
    a1, p1 = first.take(150)
    import json

    state = json.loads(json.dumps(first.state_dict()))  # JSON round trip, as in a saved VidHashState
    a2, p2 = RandomTrajectory.from_state_dict(state).take(150)
    assert np.array_equal(a, np.concatenate([a1, a2])) and np.array_equal(p, np.concatenate([p1, p2]))
    assert len(state["history"]) <= 32


@pytest.mark.parametrize("bad,match", [(["up", "jump"], "unknown action 'jump' at position 1"),
                                       ([0, 9], "out of range"), ([1.5], "name or an int"),
                                       ("right", r"got the string 'right'; e\.g\. \['right'\] \* num_frames")],
                         ids=["unknown-name", "id-out-of-range", "float", "a-lone-name"])
def test_action_ids_name_the_problem(bad, match):
    with pytest.raises(ValueError, match=match):
        action_ids(bad)


def test_action_ids_accept_names_and_ids():
    assert action_ids(["stay", "up", 4]).tolist() == [0, 1, 4]
