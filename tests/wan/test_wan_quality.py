"""``vidhash bench wan-quality``: models' clips on held-out worlds against the rendered truth. Tiny
random models here (the machinery, not quality: that needs the trained models on a GPU)."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from vidhash.bench.wan_quality import data_config, psnr, return_frames, summarise, truth_clip
from vidhash.cli import main as cli_main

CPU_CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "train" / "wan_mini_cpu.yaml")


def test_return_frames_are_the_poses_of_the_context_seen_again():
    poses = np.array([[0, 0], [4, 0], [8, 0], [12, 0], [8, 0], [4, 0], [0, 0], [0, 0]], dtype=np.float64)
    assert return_frames(poses, 3).tolist() == [4, 5, 6, 7]
    assert return_frames(poses, 1).tolist() == [6, 7] and return_frames(poses, 0).tolist() == []
    paused = np.array([[0, 0], [0, 0], [4, 0], [0, 0]], dtype=np.float64)  # a pause after the context: no return
    assert return_frames(paused, 1).tolist() == [3]


def test_truth_clips_are_held_out_out_and_back_and_deterministic():
    d = data_config("unused", CPU_CONFIG)
    frames, actions, poses = truth_clip(d, 2)
    again, _, _ = truth_clip(d, 2)
    assert frames.shape == (d.num_frames, d.frame_size, d.frame_size, 3) and frames.dtype == np.uint8
    assert np.array_equal(frames, again) and len(actions) == d.num_frames
    assert np.array_equal(poses[0], poses[-1])  # out and back: the clip ends where it began
    assert not np.array_equal(frames, truth_clip(d, 3)[0])


def test_psnr_and_means_leave_out_what_is_not_a_number():
    a = np.zeros((2, 4, 4, 3), np.uint8)
    assert psnr(a, a) == float("inf") and psnr(a, a + 1) == pytest.approx(48.13, abs=0.01)
    rows = summarise([{"psnr": 20.0, "psnr_return": None}, {"psnr": float("inf"), "psnr_return": 30.0}])
    assert rows["psnr"] == 20.0 and rows["psnr_return"] == 30.0 and rows["ssim"] is None


def test_the_command_compares_a_dense_and_a_sparse_trained_model(tiny_model, tmp_path, capsys):
    sparse = tmp_path / "wan-mini-sparse"
    shutil.copytree(tiny_model, sparse)
    (sparse / "train_state.json").write_text(json.dumps({"attention": {"density": 0.5, "block_size": 16}}))
    out = tmp_path / "q.json"
    assert cli_main(["bench", "wan-quality", str(tiny_model), str(sparse), "--config", CPU_CONFIG, "--frames", "8",
                     "--clips", "2", "--steps", "2", "--context", "3", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    report = json.loads(out.read_text())
    truth, dense, hashed = report["rows"]
    assert [r["name"] for r in report["rows"]] == ["truth", "wan-mini", "wan-mini-sparse"]
    assert dense["attention"] == "dense" and hashed["attention"].startswith("hash 0.5, key blocks 16")
    assert truth["psnr"] is None and truth["realism"] > 0 and len(truth["per_clip"]) == 2
    for row in (dense, hashed):
        assert 0 < row["psnr"] < 60 and row["psnr_return"] is not None and 0 < row["clip_s"]
        assert row["realism"] > 0 and 0 <= row["real_share"] <= 1
    # the same weights: only the attention differs, so the sparse-trained row really ran hash attention
    assert all(a["psnr"] != b["psnr"] for a, b in zip(dense["per_clip"], hashed["per_clip"]))
    assert all(r["coherence"]["flicker"] >= 0 for r in report["rows"])
    assert "| wan-mini-sparse | hash 0.5" in text


@pytest.mark.parametrize("extra, match", [
    ([], "no train_state.json"),
    (["--config", CPU_CONFIG, "--frames", "8", "--context", "8"], "--context must be in"),
    (["SAME", "--config", CPU_CONFIG], "given twice"),
    (["NOSUCH", "--config", CPU_CONFIG], "no such folder"),
    (["FILE", "--config", CPU_CONFIG], "is a file; give a folder"),
    (["WORLD", "--config", CPU_CONFIG], "a VidHashPipeline, not a WanMiniPipeline export"),
    (["--config", str(Path(CPU_CONFIG).parent / "cpu_test.yaml")], "not a wan-mini train config"),
    (["--config", CPU_CONFIG, "--frames", "100000"], "--frames 100000: this model takes at most"),
])
def test_refusals_name_the_problem(tiny_model, capsys, extra, match):
    names = {"SAME": str(tiny_model), "NOSUCH": str(tiny_model.parent / "nosuch"), "FILE": CPU_CONFIG,
             "WORLD": str(Path(__file__).resolve().parents[2] / "models" / "world-tiny-v3")}
    argv = ["bench", "wan-quality", str(tiny_model), *[names.get(x, x) for x in extra]]
    assert cli_main(argv) != 0
    assert match in capsys.readouterr().err
