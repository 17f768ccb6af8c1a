"""vidhash bench generation: the in-process and cross-process flatness verdicts on synthetic rows."""
import pytest

from vidhash.bench.generation import _chunks_at_ms_per_frame, time_flatness, verdict


def _row(seconds, ms_per_chunk, mode="hashed", frames_per_chunk=4, rss=100):
    return {"mode": mode, "seconds": seconds, "frames": frames_per_chunk * len(ms_per_chunk),
            "chunk_seconds": [m / 1000 for m in ms_per_chunk], "chunk_frames": [frames_per_chunk] * len(ms_per_chunk),
            "peak_rss_bytes": rss, "state_bytes": 7}


def test_in_process_verdict_ignores_a_slow_process():
    # the short run's process was 30% slower throughout (another job on the CPUs); the long run is flat
    short = _row(10, [52.0] * 20)
    long = _row(600, [40.0] * 1200)
    flat = time_flatness([short, long, _row(10, [1.0] * 20, mode="window")])
    assert flat["cross_process_ratio"] == pytest.approx(40 / 52)
    assert flat["in_process_ratio"] == pytest.approx(1.0)
    assert flat["in_process_chunks"] == [15, 20]  # 5 chunks (10% of 20, at least 5) ending where 10 s ends
    lines = verdict([short, long])
    assert "cross-process" in lines[0] and "NOT within" in lines[0]
    assert "in-process" in lines[1] and "1.000 (within 10%)" in lines[1]


def test_in_process_verdict_sees_growth_within_the_long_run():
    long = _row(600, [40.0] * 100 + [40.0 + 0.1 * i for i in range(1100)])  # slower and slower
    flat = time_flatness([_row(10, [40.0] * 100), long])
    assert flat["in_process_chunks"] == [90, 100]
    assert flat["in_process_ratio"] > 2
    assert "NOT within" in verdict([_row(10, [40.0] * 100), long])[1]


def test_chunk_window_edges():
    row = _row(1, [1, 2, 3, 4, 5, 6, 7, 8])
    assert _chunks_at_ms_per_frame(row, 2) == (3 / 4, 0, 5)  # at least 5 chunks, from the start
    assert _chunks_at_ms_per_frame(row, 7) == (5 / 4, 2, 7)
    assert _chunks_at_ms_per_frame(row, 50) == (6 / 4, 3, 8)  # capped at the row's length
    assert time_flatness([row]) is None
    assert verdict([row]) == ["flatness: needs hashed rows at two clip lengths"]


def test_in_process_verdict_is_one_sided():
    # later chunks FASTER (ratio 0.8, e.g. warm caches or graphs replaying): not a flatness failure
    faster = _row(600, [50.0] * 100 + [40.0] * 1100)
    assert time_flatness([_row(10, [50.0] * 100), faster])["in_process_ratio"] == pytest.approx(0.8)
    line = verdict([_row(10, [50.0] * 100), faster])[1]
    assert "0.800" in line and "NOT within" not in line and "faster" in line
    # 8% slower passes, 12% slower fails
    assert "NOT within" not in verdict([_row(10, [50.0] * 100), _row(600, [50.0] * 100 + [54.0] * 1100)])[1]
    assert "NOT within" in verdict([_row(10, [50.0] * 100), _row(600, [50.0] * 100 + [56.0] * 1100)])[1]


def test_clock_drop_explains_a_slower_end():
    """A run whose later chunks are 8 % slower while the SM clock fell 8 %: the cycles ratio is 1, and the
    verdict names the clock and the clock-event reason NVML gave."""
    long = _row(600, [40.0] * 750 + [40.0 * 1980 / 1830] * 450)
    long["gpu_samples"] = [[1980, 60, 500.0, 0x1]] * 750 + [[1830, 84, 690.0, 0x4 | 0x1]] * 450  # 0x1: gpu_idle
    flat = time_flatness([_row(10, [40.0] * 20), long])
    assert flat["in_process_ratio"] == pytest.approx(1980 / 1830)
    assert (flat["long_at_short_end_sm_mhz"], flat["long_last_sm_mhz"]) == (1980, 1830)
    assert flat["in_process_cycles_ratio"] == pytest.approx(1.0)
    line = [x for x in verdict([_row(10, [40.0] * 20), long]) if "SM clock" in x][0]
    assert "1980 MHz at chunks 15-19, 1830 MHz" in line and "(cycles): 1.000" in line
    assert "reasons there: sw_power_cap)" in line  # gpu_idle (every sample follows a synchronize) left out


def test_no_clock_line_without_samples():
    long = _row(600, [40.0] * 1200)
    long["gpu_samples"] = None  # a CPU run
    assert "in_process_cycles_ratio" not in time_flatness([_row(10, [40.0] * 20), long])
    assert not [x for x in verdict([_row(10, [40.0] * 20), long]) if "SM clock" in x]


def test_host_memory_verdict_is_one_sided():
    """Peak host RSS: growth over 5 % is flagged, a smaller peak for the long clip is not (H100, 2026-12-06:
    the 600-s process peaked at 0.944× the 10-s one's)."""
    line = lambda rss: [x for x in verdict([_row(10, [40.0] * 20, rss=100), _row(600, [40.0] * 1200, rss=rss)])
                        if "peak host RSS" in x][0]
    assert "0.944 (no growth over 5%)" in line(94.4)
    assert "1.040 (no growth over 5%)" in line(104)
    assert "1.060 (grew more than 5%)" in line(106)


def test_graph_replay_times_place_the_wander():
    """With the replays' GPU times per chunk: the verdict gives the share inside the graphs and where the
    chunk-to-chunk spread is — here the GPU time is steady and the rest wanders (host-side)."""
    import random

    rnd = random.Random(0)
    extra = [rnd.choice([0.0, 3.0]) for _ in range(1200)]  # two levels outside the graphs
    long = _row(600, [22.0 + 2.0 + e for e in extra])
    long["graph_replays"] = [[22.0, 11]] * 1200
    long["graph_replays"][3] = [0.0, 0]  # a chunk that replayed nothing (window filling): left out
    flat = time_flatness([_row(10, [24.0] * 20), long])
    assert flat["long_last_graphs"]["graphs_ms"] == pytest.approx(22.0)
    sp = flat["long_spread_ms"]
    assert sp["graphs"] == pytest.approx(0.0) and sp["outside"] == pytest.approx(3.0) and sp["wall"] == pytest.approx(3.0)
    line = [x for x in verdict([_row(10, [24.0] * 20), long]) if "inside the CUDA graphs" in x][0]
    assert "22.0 of" in line and "inside the graphs 0.00, outside them 3.00" in line
    # without replay times (eager, CPU) there is no such line and no such keys
    plain = time_flatness([_row(10, [24.0] * 20), _row(600, [24.0] * 1200)])
    assert "long_last_graphs" not in plain and "long_spread_ms" not in plain
    assert not any("CUDA graphs" in x for x in verdict([_row(10, [24.0] * 20), _row(600, [24.0] * 1200)]))


def test_lead_to_the_first_pass_in_the_split_and_the_verdict():
    """A third entry per chunk of ``graph_replays`` (runs since the twenty-fourth session): the ms from the
    chunk's start to its first replay; its median joins the split and the verdict's graphs line. Rows of
    older runs (two entries) give neither."""
    long = _row(600, [26.0] * 1200)
    long["graph_replays"] = [[22.0, 11, 2.5]] * 1200
    long["graph_replays"][5] = [0.0, 0, None]  # replayed nothing
    flat = time_flatness([_row(10, [26.0] * 20), long])
    assert flat["long_last_graphs"]["lead_ms"] == pytest.approx(2.5)
    line = [x for x in verdict([_row(10, [26.0] * 20), long]) if "inside the CUDA graphs" in x][0]
    assert "2.50 ms from a chunk's start to its first pass" in line
    long["graph_replays"] = [[22.0, 11]] * 1200  # an older run's JSON
    assert "lead_ms" not in time_flatness([_row(10, [26.0] * 20), long])["long_last_graphs"]
