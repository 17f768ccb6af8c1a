"""Each metric must rank videos with known defects the way the defect dictates.

Clips (vidhash.metrics.synthetic): a clean pan, a static shot, the pan with brightness
flicker, with a slow colour drift, with hard cuts every 2 s, with every frame shown twice
(frozen frames), and an out-and-back path with and without drift (for revisits).
"""
import pytest

from vidhash.metrics import REPORT_KEYS, CoherenceOptions, load_poses, measure_coherence

SIZE = 64  # as in conftest.py

KINDS_ALL = ("pan", "static", "flicker", "drift", "cuts", "frozen", "return", "return_drift")


def test_report_has_the_documented_keys(reports):
    for kind, r in reports.items():
        assert set(REPORT_KEYS) <= set(r), kind
        assert "revisit" not in r
        assert r["frames"] == 64 and r["fps"] == 8 and r["duration_s"] == pytest.approx(8.0)
        assert r["warnings"] == [], (kind, r["warnings"])


def test_flicker_ranks_the_flickering_clip_first(reports):
    jitter = {k: r["flicker"]["brightness_jitter"] for k, r in reports.items()}
    assert max(jitter, key=jitter.get) == "flicker"
    assert jitter["flicker"] > 10 * max(v for k, v in jitter.items() if k != "flicker")
    assert reports["flicker"]["flicker"]["mean"] > 1.3 * reports["pan"]["flicker"]["mean"]
    assert reports["static"]["flicker"]["mean"] < 0.5


def test_warping_error_separates_flicker_and_cuts_from_a_clean_pan(reports):
    w = {k: r["warp_error"]["mean"] for k, r in reports.items()}
    assert w["flicker"] > 5 * w["pan"]
    assert w["cuts"] > 3 * w["pan"]
    # static clip: zero warping error, and motion says why
    assert w["static"] < 1e-5 and reports["static"]["motion"]["mean_px"] < 0.05


def test_motion_matches_the_pan_speed(reports):
    speed = SIZE / 40  # synthetic_clip's default, pixels per frame
    for kind in ("pan", "flicker", "drift"):
        assert reports[kind]["motion"]["mean_px"] == pytest.approx(speed, rel=0.1), kind
    # the stuttering clip moves as far on average, in steps of 0 and 2·speed
    assert reports["frozen"]["motion"]["mean_px"] == pytest.approx(speed, rel=0.15)
    assert reports["frozen"]["motion"]["max_px"] > 1.6 * speed


def test_frozen_frames_are_counted(reports):
    frozen = {k: r["motion"]["frozen_fraction"] for k, r in reports.items()}
    assert 0.4 < frozen["frozen"] < 0.6
    assert frozen["static"] > 0.95
    assert frozen["pan"] < 0.05 and frozen["flicker"] < 0.05


def test_smoothness_drops_for_stutter_and_flicker(reports):
    s = {k: r["smoothness"]["mean"] for k, r in reports.items()}
    assert s["pan"] > 0.98
    assert s["frozen"] < s["pan"] - 0.015
    assert s["flicker"] < s["pan"] - 0.015
    assert reports["cuts"]["smoothness"]["min"] < s["pan"] - 0.05


def test_adjacent_ssim_and_psnr(reports):
    ssim = {k: r["ssim_adjacent"] for k, r in reports.items()}
    assert ssim["static"]["mean"] > 0.99
    assert ssim["flicker"]["mean"] < ssim["pan"]["mean"]
    assert ssim["cuts"]["min"] < 0.5 < ssim["pan"]["min"]
    assert reports["flicker"]["psnr_adjacent"]["mean"] < reports["pan"]["psnr_adjacent"]["mean"] - 2
    # frame-to-frame scores barely see a slow colour drift ...
    assert abs(ssim["drift"]["mean"] - ssim["pan"]["mean"]) < 0.05


def test_drift_metrics_see_the_slow_colour_drift(reports):
    pan, drift = reports["pan"]["drift"], reports["drift"]["drift"]
    # ... but the long-range ones do
    assert drift["slope_per_decade"]["delta_e"] > 2 * pan["slope_per_decade"]["delta_e"]
    assert drift["slope_per_decade"]["hist_dist"] > 1.5 * pan["slope_per_decade"]["hist_dist"]
    assert drift["end_vs_first"]["delta_e"] > 2 * pan["end_vs_first"]["delta_e"]
    assert pan["lags_s"] == [1, 2, 5] and pan["pairs"] == [7, 6, 3]
    assert len(pan["from_first"]["t_s"]) == 8 and pan["from_first"]["delta_e"][0] == 0
    chroma = {k: abs(reports[k]["start_end"]["chroma"]["delta"]) for k in ("pan", "drift")}
    assert chroma["drift"] > 2 * chroma["pan"]
    # a static shot does not drift at all
    static = reports["static"]["drift"]
    assert max(static["by_lag"]["ssim_dist"]) < 1e-3 and max(static["by_lag"]["delta_e"]) < 0.1


def test_cuts_are_found_where_they_are(reports):
    assert reports["cuts"]["cuts"]["count"] == 3
    assert reports["cuts"]["cuts"]["times_s"] == pytest.approx([2.0, 4.0, 6.0], abs=0.13)
    for kind in KINDS_ALL:
        if kind != "cuts":
            assert reports[kind]["cuts"]["count"] == 0, kind


def test_revisits_score_the_same_place_by_time_gap(clip_paths):
    opts = CoherenceOptions(size=SIZE, progress=False)
    out = {}
    for kind in ("return", "return_drift"):
        video, poses = clip_paths[kind]
        out[kind] = measure_coherence(video, opts, poses=load_poses(poses))["revisit"]
    clean, drift = out["return"], out["return_drift"]
    assert clean["pairs"] > 10 and clean["pairs"] == drift["pairs"]
    assert clean["psnr"] > 35 and clean["ssim"] > 0.95
    assert drift["psnr"] < clean["psnr"] - 10
    gaps = [row["gap_s"] for row in clean["by_gap"]]
    assert gaps == [[1.0, 2.0], [2.0, 4.0], [4.0, 8.0]]
    # with drift, revisits after a longer gap match worse
    assert drift["by_gap"][-1]["psnr"] < drift["by_gap"][0]["psnr"]
