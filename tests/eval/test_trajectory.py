"""Loop trajectories: the camera really leaves the place and comes back along the visit."""
import numpy as np
import pytest

from vidhash.data.world import ACTION_DELTAS, ProceduralWorld
from vidhash.eval.trajectory import SEGMENTS, min_gap_frames, pick_place, plan_loop, torus_delta, views_overlap

CASES = [(0, 31, 16), (1, 32, 16), (2, 80, 16), (3, 480, 16), (4, 2400, 16), (5, 7, 4), (6, 45, 1), (7, 100, 9)]


@pytest.mark.parametrize("seed,gap,visit", CASES, ids=[f"S{s}-G{g}-V{v}" for s, g, v in CASES])
def test_loop_leaves_and_returns(seed, gap, visit):
    view = 64 if gap >= 31 else 16
    p = plan_loop(seed=seed, gap_frames=gap, visit_frames=visit, view=view, step=4, size=1024)
    # segments tile the loop in order; the gap is what was asked
    bounds = [p.segments[s] for s in SEGMENTS]
    assert bounds[0][0] == 0 and all(a[1] == b[0] for a, b in zip(bounds, bounds[1:])) and bounds[-1][1] == len(p.poses)
    assert p.segments["return"][0] - p.segments["visit"][1] == gap
    # the return is at the first visit's poses (reversed), pair by pair
    vis, ret = p.poses[p.frames("visit")], p.poses[p.frames("return")]
    np.testing.assert_array_equal(ret, vis[::-1])
    np.testing.assert_array_equal(p.poses[p.pairs[:, 0]], p.poses[p.pairs[:, 1]])
    assert (p.pairs[:, 1] < visit).all() and (p.pairs[:, 0] >= p.segments["return"][0]).all()
    # no wander frame sees anything the visit saw (view overlap), and the frame right after
    # the leave no longer does either
    wander = p.poses[p.frames("wander")]
    assert not views_overlap(wander, vis, view, 1024).any()
    assert not views_overlap(p.poses[p.segments["leave"][1] - 1 : p.segments["leave"][1]], vis, view, 1024).any()
    # one axis move of one step, or a pause, per frame; actions say which
    d = torus_delta(p.poses[:-1], p.poses[1:], 1024)
    assert set(np.abs(d).sum(1).tolist()) <= {0.0, 4.0}
    np.testing.assert_array_equal(ACTION_DELTAS[p.actions[1:]] * 4, d)
    assert p.actions[0] == 0 and (p.poses % 4 == 0).all()


def test_long_wander_really_goes_away():
    p = plan_loop(seed=3, gap_frames=2400, visit_frames=16)
    far = np.abs(torus_delta(p.poses[p.frames("wander")], np.asarray(p.place, float), 1024)).max(1)
    assert far.max() >= 300  # it roams, it does not pace next to the place


def test_deterministic_and_seed_dependent():
    a, b = plan_loop(seed=5, gap_frames=200), plan_loop(seed=5, gap_frames=200)
    np.testing.assert_array_equal(a.poses, b.poses)
    assert not np.array_equal(a.poses, plan_loop(seed=6, gap_frames=200).poses)


def test_place_is_a_landmark_on_the_grid():
    world = ProceduralWorld(seed=1_000_000)
    x, y = pick_place(world, 4, np.random.default_rng(0))
    assert x % 4 == 0 and y % 4 == 0
    assert min(abs(torus_delta([x, y], [lx, ly], 1024)).max() for lx, ly, *_ in world.landmarks) <= 2


def test_views_overlap_on_the_torus():
    assert views_overlap([[0, 0]], [[1020, 10]], 64, 1024)[0, 0]
    assert not views_overlap([[0, 0]], [[64, 0]], 64, 1024)[0, 0]


@pytest.mark.parametrize("kwargs,match", [
    (dict(gap_frames=30), "too short"),
    (dict(visit_frames=0), "visit_frames must be positive"),
    (dict(step=3), "divide the world size"),
    (dict(size=128, view=64, visit_frames=40), "too small"),
], ids=["short-gap", "no-visit", "step", "small-world"])
def test_bad_plans(kwargs, match):
    with pytest.raises(ValueError, match=match):
        plan_loop(**{"gap_frames": 80, **kwargs})
    assert min_gap_frames(64, 4) == 31
