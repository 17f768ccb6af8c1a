"""The no-reference realism metric (vidhash.metrics.realism) on a small bank (CPU, seconds)."""
import numpy as np
import pytest
import torch

from vidhash.metrics.realism import RealismBank, RealismResult, _real_frames, distortions, patch_features

WORLD = 256  # small worlds render fast; the ranking, not the calibration, is under test


@pytest.fixture(scope="module")
def bank():
    return RealismBank.build(world_size=WORLD, bank_worlds=3, bank_frames=24, bank_size=4096, cal_worlds=2,
                             cal_frames=16)


@pytest.fixture(scope="module")
def real():
    """Frames of held-out worlds (neither bank nor calibration seeds)."""
    return np.concatenate([_real_frames(s, 8, WORLD) for s in (1_000_000, 1_000_001)])


def test_real_scores_like_calibration_and_degradations_score_worse(bank, real):
    r = bank.score(real)
    assert abs(r.distance - bank.calibration_distance) < 0.06
    assert 0.85 <= r.real_share <= 1.0
    worse = distortions(real)
    for name in ("blur σ 1.0", "blur σ 2.0", "noise σ 20", "colour −20 R +40 G −20 B", "shuffled 8×8 tiles"):
        d = bank.score(worse[name])
        assert d.distance > r.distance + 0.03, name
        assert d.real_share < r.real_share - 0.02, name
    assert bank.score(worse["blur σ 2.0"]).distance > bank.score(worse["blur σ 0.7"]).distance > r.distance


def test_flat_and_random_frames_are_not_real(bank, real):
    rng = np.random.default_rng(0)
    ref = bank.score(real)
    noise = rng.integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    flat = np.full((2, 32, 32, 3), 128, dtype=np.uint8)
    assert bank.score(noise).distance > ref.distance + 0.08  # its share is a weak signal (docs/realism.md)
    r = bank.score(flat)
    assert r.distance > ref.distance + 0.08 and r.real_share < ref.real_share - 0.5


def test_deterministic(real):
    kw = dict(world_size=WORLD, bank_worlds=1, bank_frames=8, bank_size=512, cal_worlds=1, cal_frames=4)
    a, b = RealismBank.build(**kw), RealismBank.build(**kw)
    assert torch.equal(a.features, b.features) and torch.equal(a.radii, b.radii) and a.threshold == b.threshold
    ra, rb = a.score(real), b.score(real)
    assert ra.distance == rb.distance and np.array_equal(ra.frame_distance, rb.frame_distance)


def test_shapes_and_dtypes(bank, real):
    r = bank.score(real[:3])
    assert isinstance(r, RealismResult) and r.frame_distance.shape == (3,) and r.frame_share.shape == (3,)
    assert r.frame_distance.dtype == np.float64 and isinstance(r.distance, float)
    assert r.distance == pytest.approx(r.frame_distance.mean()) and r.as_dict() == {"realism": r.distance,
                                                                                   "real_share": r.real_share}
    as_float = bank.score(real[:3].astype(np.float32) / 255)
    assert as_float.distance == pytest.approx(r.distance, abs=1e-5)
    torch_in = bank.score(torch.from_numpy(real[:3].copy()))
    assert torch_in.distance == r.distance
    one = bank.score(real[0])  # (H, W, 3)
    assert one.frame_distance.shape == (1,) and one.distance == pytest.approx(r.frame_distance[0])
    small = bank.score(real[:2, :16, :20])  # any size >= a patch
    assert small.frame_distance.shape == (2,)
    assert patch_features(real[:2]).shape == (2, 15 * 15, 49)
    d = bank.patch_distances(real[:2])
    assert d.shape == (2, 225) and d.dtype == torch.float32


@pytest.mark.parametrize("frames,match", [
    (np.zeros((0, 64, 64, 3), np.uint8), "no frames"),
    (np.zeros((2, 64, 64), np.uint8), "shape"),
    (np.zeros((2, 64, 64, 4), np.uint8), "shape"),
    (np.zeros((64,), np.uint8), "shape"),
    (np.zeros((1, 4, 64, 3), np.uint8), "smaller than"),
    (np.full((1, 16, 16, 3), 200.0, np.float32), r"in \[0, 1\]"),
    (np.full((1, 16, 16, 3), np.nan, np.float32), "NaN"),
    (np.zeros((1, 16, 16, 3), np.int32), "uint8 or float"),
], ids=["empty", "no-channels", "four-channels", "1d", "too-small", "float-255", "nan", "int32"])
def test_bad_inputs(bank, frames, match):
    with pytest.raises(ValueError, match=match):
        bank.score(frames)


def test_bad_bank_settings():
    with pytest.raises(ValueError, match="at least"):
        RealismBank.build(world_size=64)
    with pytest.raises(ValueError, match="positive"):
        RealismBank.build(world_size=WORLD, bank_worlds=0)


def test_search_device_and_chunk_do_not_change_the_score(bank, real):
    """The nearest-bank search chunked differently (and, on a GPU, run there) gives the same distances
    up to float32 rounding."""
    ref = bank.patch_distances(real)
    torch.testing.assert_close(bank.patch_distances(real, chunk=97), ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(bank.patch_distances(real, device="cpu"), ref, rtol=0, atol=0)


@pytest.mark.gpu
def test_search_on_cuda_matches_cpu(bank, real):
    ref = bank.score(real)
    got = bank.score(real, device="cuda")
    torch.testing.assert_close(torch.as_tensor(got.frame_distance), torch.as_tensor(ref.frame_distance),
                               rtol=0, atol=2e-3)
    assert abs(got.real_share - ref.real_share) < 0.01
