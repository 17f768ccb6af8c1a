"""The building blocks against cases whose answer is known."""
import json
import math

import cv2
import numpy as np
import pytest

from vidhash.metrics import (
    DriftMeter,
    Keyframe,
    Poses,
    RevisitMeter,
    ShortRangeMeter,
    detect_cuts,
    distances,
    load_poses,
    log_slope,
    occlusion_mask,
    psnr,
    ssim,
    warp,
    warping_error,
    zncc,
)
from vidhash.metrics.synthetic import texture


@pytest.fixture(scope="module")
def tex():
    return texture(96, 160, seed=3, scale=5)


def _ssim_reference(a, b):
    """Direct SSIM (Wang et al. 2004) with scipy-free Gaussian weights, float64."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    g = cv2.getGaussianKernel(11, 1.5)
    w = g @ g.T

    def f(x):
        return cv2.filter2D(x, -1, w, borderType=cv2.BORDER_REFLECT)

    ma, mb = f(a), f(b)
    va, vb, cov = f(a * a) - ma**2, f(b * b) - mb**2, f(a * b) - ma * mb
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    return float(np.mean((2 * ma * mb + c1) * (2 * cov + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2))))


def test_ssim_matches_the_definition_and_falls_with_noise(tex):
    g = cv2.cvtColor(tex, cv2.COLOR_RGB2GRAY)
    rng = np.random.default_rng(0)
    assert ssim(g, g) == pytest.approx(1.0, abs=1e-5)
    prev = 1.0
    for sigma in (5, 15, 40):
        noisy = np.clip(g + rng.normal(0, sigma, g.shape), 0, 255).astype(np.uint8)
        s = ssim(g, noisy)
        assert s == pytest.approx(_ssim_reference(g, noisy), abs=2e-3)
        assert s < prev
        prev = s


def test_psnr_known_value(tex):
    assert psnr(tex, tex) == 100.0
    brighter = (tex.astype(np.int16) + 10).clip(0, 255).astype(np.uint8)
    mse = float(np.mean((brighter.astype(np.float64) - tex) ** 2))
    assert psnr(tex, brighter) == pytest.approx(10 * math.log10(255**2 / mse), rel=1e-5)


def test_dis_flow_warp_and_warping_error_on_a_known_shift(tex):
    a = np.ascontiguousarray(tex[:, 10:138])
    b = np.ascontiguousarray(tex[:, 7:135])  # content moves 3 px to the right: a(x) = b(x + 3)
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)
    ga, gb = cv2.cvtColor(a, cv2.COLOR_RGB2GRAY), cv2.cvtColor(b, cv2.COLOR_RGB2GRAY)
    fw, bw = dis.calc(ga, gb, None), dis.calc(gb, ga, None)
    assert np.median(fw[..., 0]) == pytest.approx(3.0, abs=0.2) and abs(np.median(fw[..., 1])) < 0.2
    # exact flow: warping b back onto a is exact away from the border
    true_fw = np.zeros_like(fw)
    true_fw[..., 0] = 3
    assert np.array_equal(warp(b, true_fw)[:, :-3], a[:, :-3])
    err, occ = warping_error(a, b, true_fw, -true_fw)
    assert err < 1e-9 and occ == pytest.approx(3 / 128, abs=1e-6)  # the 3 columns that leave the frame
    err_dis, _ = warping_error(a, b, fw, bw)
    err_none, _ = warping_error(a, b, np.zeros_like(fw), np.zeros_like(fw))
    assert err_dis < 0.2 * err_none


def test_occlusion_mask_flags_inconsistent_flow():
    h, w = 32, 48
    fw = np.zeros((h, w, 2), np.float32)
    fw[..., 0] = 2
    ok = occlusion_mask(fw, -fw)
    assert not ok[:, : w - 3].any() and ok[:, w - 2 :].all()
    bad = occlusion_mask(fw, np.zeros_like(fw))  # backward flow does not undo the forward one
    assert bad.mean() > 0.95


def test_zncc_ignores_gain_and_offset(tex):
    g = cv2.cvtColor(tex, cv2.COLOR_RGB2GRAY).astype(np.float32)
    assert zncc(g, 1.3 * g + 20) == pytest.approx(1.0, abs=1e-5)
    other = cv2.cvtColor(texture(96, 160, seed=9, scale=5), cv2.COLOR_RGB2GRAY).astype(np.float32)
    assert abs(zncc(g, other)) < 0.3


def test_short_range_meter_lengths(tex):
    m = ShortRangeMeter()
    for i in range(6):
        m.update(np.ascontiguousarray(tex[:, 2 * i : 2 * i + 64]))
    assert len(m.flicker) == len(m.warp_error) == len(m.ssim) == len(m.cut_score) == 5
    assert len(m.smoothness) == 4 and len(m.brightness_jitter) == 4 and len(m.luma) == 6
    assert np.median(m.motion) == pytest.approx(2.0, abs=0.3)


def test_keyframe_distances(tex):
    a = Keyframe.of(tex, 0.0)
    assert all(v == pytest.approx(0.0, abs=1e-5) for v in distances(a, a).values())
    cast = np.clip(tex.astype(np.float32) * [1.0, 1.0, 1.4], 0, 255).astype(np.uint8)
    d = distances(a, Keyframe.of(cast, 1.0))
    assert d["delta_e"] > 5 and d["hist_dist"] > 0.2 and d["ssim_dist"] < 0.2  # colour moved, structure did not


def test_log_slope():
    assert log_slope([1, 10, 100], [0.1, 0.2, 0.3]) == pytest.approx(0.1)
    assert log_slope([1], [0.5]) is None and log_slope([1, 10], [None, 0.3]) is None


def test_drift_meter_takes_one_keyframe_a_second_and_pairs_lags(tex):
    d = DriftMeter(lags_s=(1, 2, 5), max_lag_s=5)
    for i in range(8 * 12):  # 12 s at 8 fps
        d.update(tex, i / 8)
    r = d.result()
    assert r["keyframes"] == 12 and r["lags_s"] == [1, 2, 5] and r["pairs"] == [11, 10, 7]
    assert d._ring.maxlen == 6  # bounded by the longest lag, not the video


def test_detect_cuts_needs_a_jump_over_the_neighbourhood():
    base = [0.05] * 40
    s = list(base)
    s[10] = s[30] = 0.7
    assert detect_cuts(s, fps=8) == [10, 30]
    assert detect_cuts([0.6] * 40, fps=8) == []  # uniformly hard content is not a run of cuts


@pytest.mark.parametrize(
    "payload, fps, first",
    [
        ([[0, 1], [2, 3]], None, [0, 1]),
        ({"poses": [[0, 1, 0.5], [2, 3, 0.5]], "fps": 8}, 8.0, [0, 1, 0.5]),
        ([{"pose": [4, 5]}, {"pose": [6, 7]}], None, [4, 5]),
        ({"frames": [{"x": 1, "y": 2, "t": 0.0}, {"x": 3, "y": 4, "t": 0.1}]}, None, [1, 2]),
        ({"trajectory": {"poses": [[9, 9], [8, 8]], "fps": 4}}, 4.0, [9, 9]),
    ],
    ids=["plain", "sidecar", "records", "frames-xy", "trajectory"],
)
def test_load_poses_formats(tmp_path, payload, fps, first):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(payload))
    p = load_poses(str(path))
    assert len(p) == 2 and p.fps == fps and p.values[0].tolist() == first


@pytest.mark.parametrize(
    "text, msg",
    [("not json", "not valid JSON"), ("[]", "empty"), ('{"camera": 1}', "'poses' list"), ("[[0, 1], [2]]", "different lengths"),
     ('[["a", 1]]', "numbers"), ('{"poses": [[0, 1]], "fps": -2}', "positive")],
    ids=["json", "empty", "keys", "ragged", "strings", "fps"],
)
def test_load_poses_errors(tmp_path, text, msg):
    path = tmp_path / "p.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=msg):
        load_poses(str(path))
    with pytest.raises(ValueError, match="no such poses file"):
        load_poses(str(tmp_path / "none.json"))


def test_revisit_plan_pairs_by_gap_and_holds_few_frames():
    # out and back over 20 s at 8 fps: frame j returns to the pose of frame n-1-j
    n, fps = 160, 8.0
    x = np.concatenate([np.arange(n // 2), np.arange(n // 2)[::-1]]).astype(float)
    poses = Poses(values=np.stack([x, np.zeros(n)], 1), fps=fps)
    times = np.arange(n) / fps
    m = RevisitMeter(poses, times, fps, tol=0.5, min_gap_s=1.0, max_pairs_per_bin=5)
    for c in m.pairs:
        assert len(c) <= 5
        for i, j in c:
            assert x[i] == x[j] and times[j] - times[i] >= 1.0
    rng = np.random.default_rng(0)
    for j in range(n):
        img = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
        m.update(j, img, img[..., 0])
    r = m.result()
    assert r["pairs"] == sum(len(c) for c in m.pairs) > 0
    assert m.max_held <= r["pairs"] and not m._held
