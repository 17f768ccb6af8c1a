"""`vidhash generate` owns its output names: one run per --out, no write through a symlink, no
output named twice (issue 20 defects 3, 4, 6) — as real subprocesses (conftest.py)."""
from __future__ import annotations

import pytest

from reliability_helpers import LINKED, one_line, read_json
from vidhash.config import GenerateConfig, generate_config, load_config
from vidhash.data.video import read_frames
from vidhash.generate import check_request


def _race(scenarios):
    """(folder, the winner's (fps, seed, stdout), the loser's (exit status, stderr)); exactly one won."""
    root, runs = scenarios["race"]
    results = {name: run.result() for name, run in runs.items()}
    winners = [n for n, (rc, _, _) in results.items() if rc == 0]
    assert len(winners) == 1, results
    (loser,) = set(results) - set(winners)
    return root, ((8, 1) if winners[0] == "race_a" else (4, 2)) + (results[winners[0]][1],), results[loser][::2]


def test_two_runs_on_one_out_one_wins_whole(scenarios):
    """Started together on the same --out: exactly one succeeds; the other exits 2 with one line
    naming the file, before its model loads; every final file is the winner's."""
    root, (fps, seed, out), (rc, err) = _race(scenarios)
    line = one_line(err)
    assert rc == 2 and str(root / "clip.partial.mp4") in line and "another vidhash run" in line
    cfg = load_config(GenerateConfig, root / "clip.config.yaml")
    poses = read_json(root / "clip.poses.json")
    assert (cfg.fps, cfg.seed) == (fps, seed) and poses["fps"] == fps
    assert read_frames(root / "clip.mp4").shape[0] == len(poses["poses"]) == fps  # one second at the winner's rate
    assert f"wrote {root / 'clip.mp4'}: {fps} frames" in out and f"state {root / 'state.pt'}" in out
    assert sorted(p.name for p in root.iterdir()) == sorted(
        ["clip.config.yaml", "clip.mp4", "clip.poses.json", "clip.poses.json.tmp", "state.pt", "targets"])


def test_planted_symlinks_are_not_followed(scenarios):
    """A symlink at every fixed name a run writes (mp4, poses, config, the partial config, the old
    poses temp name, the state): each name becomes a plain file (or goes), no link target changes."""
    root, _, _ = _race(scenarios)
    for name in LINKED:
        assert (root / "targets" / name).read_text() == f"precious {name}"
        if name == "clip.partial.config.yaml":  # written, then renamed to clip.config.yaml
            assert not (root / name).exists() and not (root / name).is_symlink()
        elif name != "clip.poses.json.tmp":  # no longer used: the poses go through a random temporary name
            assert (root / name).is_file() and not (root / name).is_symlink(), name


def test_symlink_at_the_partial_mp4_is_refused(scenarios):
    root, runs = scenarios["partial_link"]
    rc, out, err = runs["partial_link"].result()
    line = one_line(err)
    assert rc == 2 and "is a symlink" in line and str(root / "clip.partial.mp4") in line
    assert (root / "target").read_text() == "precious"
    assert sorted(p.name for p in root.iterdir()) == ["clip.partial.mp4", "target"]


def test_save_state_equal_to_out_is_refused_before_the_model_loads(scenarios):
    """The model folder cannot load: the --save-state message (not a load error) shows the check
    comes first; no file is created."""
    root, runs = scenarios["state_is_out"]
    rc, out, err = runs["state_is_out"].result()
    line = one_line(err)
    assert rc == 2 and "--save-state" in line and "--out" in line
    assert sorted(p.name for p in root.iterdir()) == ["broken-model"]


@pytest.mark.parametrize("name", ["clip.mp4", "clip.poses.json", "clip.config.yaml", "clip.partial.mp4",
                                  "clip.partial.poses.json", "clip.partial.config.yaml", "./sub/../clip.mp4"])
def test_save_state_on_any_output_of_the_run_is_refused(tmp_path, name):
    (tmp_path / "sub").mkdir()
    cfg = generate_config(preset="tiny", model="random-tiny", seconds=1, out=str(tmp_path / "clip.mp4"),
                          save_state=str(tmp_path / name))
    with pytest.raises(ValueError, match="--save-state") as err:
        check_request(cfg)
    assert len(str(err.value).splitlines()) == 1
    fine = generate_config(preset="tiny", model="random-tiny", seconds=1, out=str(tmp_path / "clip.mp4"),
                           save_state=str(tmp_path / "clip.partial.state.pt"))  # where an interrupt saves it anyway
    check_request(fine)


def test_save_state_linked_to_out_is_refused(tmp_path):
    (tmp_path / "clip.mp4").write_bytes(b"an earlier clip")
    (tmp_path / "s.pt").symlink_to(tmp_path / "clip.mp4")
    cfg = generate_config(preset="tiny", model="random-tiny", seconds=1, out=str(tmp_path / "clip.mp4"),
                          save_state=str(tmp_path / "s.pt"))
    with pytest.raises(ValueError, match="--save-state"):
        check_request(cfg)
