"""ClipWriter: final names only on success; on a crash or a signal a playable partial mp4, its poses and
a state that matches it (or none); signal handlers restored."""
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from vidhash.config import GenerateConfig, generate_config, load_config
from vidhash.data import video
from vidhash.data.clip_writer import ClipWriter, OutputClaim, action_names, output_paths
from vidhash.data.video import read_frames
from vidhash.data.world import ACTIONS


class FakeState:
    """What ClipWriter uses of a VidHashState: frame_index and save(path)."""

    def __init__(self, frame_index):
        self.frame_index = frame_index

    def save(self, path):
        with open(path, "w") as f:
            f.write(str(self.frame_index))


class FakePipeline:
    def __init__(self, committing=False):
        self._interrupt, self.committing = False, committing


def chunk(i, n=4):
    """``n`` frames of 16×16 (grey level 40·i), poses along x, action ``right``."""
    frames = np.full((n, 16, 16, 3), 40 * i, np.uint8)
    poses = np.stack([np.arange(4 * i, 4 * i + n), np.zeros(n)], 1).astype(np.float64)
    return frames, poses, np.full(n, ACTIONS.index("right"))


def names(tmp_path):
    return sorted(p.name for p in tmp_path.iterdir())


@pytest.fixture
def cfg():
    return generate_config(preset="tiny", model="random-tiny", seconds=1.0)


def test_success_moves_every_file_to_its_final_name(tmp_path, cfg):
    out = tmp_path / "clip.mp4"
    with ClipWriter(out, 8, config=cfg, state=FakeState(8), save_state=str(tmp_path / "s.txt"),
                    info={"prompt_frames": 4}) as clip:
        # the partial mp4 exists from the start: created exclusively, it is this run's lock on the name
        assert names(tmp_path) == ["clip.partial.config.yaml", "clip.partial.mp4"]
        clip.write(*chunk(0))  # given frames: no state
        clip.write(*chunk(1), state=FakeState(12))
        clip.write(*chunk(2), state=FakeState(16))
    assert names(tmp_path) == ["clip.config.yaml", "clip.mp4", "clip.poses.json", "s.txt"]
    assert read_frames(out).shape == (12, 16, 16, 3) and clip.frames_written == 12
    meta = json.loads((tmp_path / "clip.poses.json").read_text())
    assert list(meta) == ["fps", "start_frame", "poses", "actions", "prompt_frames"]
    assert meta["start_frame"] == 8 and meta["prompt_frames"] == 4 and meta["actions"] == ["right"] * 12
    assert meta["poses"] == np.concatenate([chunk(i)[1] for i in range(3)]).tolist()
    assert load_config(GenerateConfig, tmp_path / "clip.config.yaml") == cfg
    assert (tmp_path / "s.txt").read_text() == "16"  # the last state


def test_crash_keeps_a_playable_partial_and_a_matching_state(tmp_path, cfg, capsys):
    with pytest.raises(RuntimeError, match="boom"):
        with ClipWriter(tmp_path / "c.mp4", 8, config=cfg, pipeline=FakePipeline()) as clip:
            clip.write(*chunk(0), state=FakeState(4))
            raise RuntimeError("boom")
    assert names(tmp_path) == ["c.partial.config.yaml", "c.partial.mp4", "c.partial.poses.json", "c.partial.state.pt"]
    assert read_frames(tmp_path / "c.partial.mp4").shape[0] == 4
    assert len(json.loads((tmp_path / "c.partial.poses.json").read_text())["poses"]) == 4
    assert (tmp_path / "c.partial.state.pt").read_text() == "4"
    assert "stopped: 4 frames in" in capsys.readouterr().err


def test_a_chunk_committed_but_not_written_is_written_on_the_way_out(tmp_path, cfg, monkeypatch):
    """The mp4 write of the second chunk fails after 1 of its 4 frames: the rest still reaches the
    file, so the file (8 frames) matches the chunk's state (frame 8), which is saved."""
    real = video.Mp4Writer.write
    calls = []

    def flaky(self, frames):
        calls.append(len(frames))
        if len(calls) == 2:
            real(self, frames[:1])
            raise OSError("disk hiccup")
        return real(self, frames)

    monkeypatch.setattr(video.Mp4Writer, "write", flaky)
    with pytest.raises(OSError, match="hiccup"):
        with ClipWriter(tmp_path / "c.mp4", 8, config=cfg, save_state=str(tmp_path / "s.txt"),
                        pipeline=FakePipeline()) as clip:
            clip.write(*chunk(0), state=FakeState(4))
            clip.write(*chunk(1), state=FakeState(8))
    assert read_frames(tmp_path / "c.partial.mp4").shape[0] == 8
    assert len(json.loads((tmp_path / "c.partial.poses.json").read_text())["poses"]) == 8
    assert (tmp_path / "s.txt").read_text() == "8"


@pytest.mark.parametrize("committing,resumed", [(True, False), (False, True)], ids=["inside-commit", "behind-file"])
def test_a_state_that_would_not_match_the_file_is_not_saved(tmp_path, cfg, capsys, committing, resumed):
    state = FakeState(20 if resumed else 4)  # resumed at 20: a state at 20 + 4 would match, 20 does not
    with pytest.raises(KeyboardInterrupt):
        with ClipWriter(tmp_path / "c.mp4", 8, config=cfg, state=FakeState(20) if resumed else None,
                        pipeline=FakePipeline(committing)) as clip:
            clip.write(*chunk(0), state=state)
            raise KeyboardInterrupt
    assert "state not saved" in capsys.readouterr().err
    assert not [p for p in names(tmp_path) if p.endswith("state.pt")]


def test_first_signal_stops_the_pipeline_then_interrupts(tmp_path, cfg, capsys):
    pipe = FakePipeline()
    before, before_int = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        with ClipWriter(tmp_path / "c.mp4", 8, config=cfg, pipeline=pipe) as clip:
            clip.write(*chunk(0), state=FakeState(4))
            os.kill(os.getpid(), signal.SIGTERM)  # the pipeline finishes its step ...
            assert pipe._interrupt and clip.interrupted == [signal.SIGTERM]
            clip.write(*chunk(1), state=FakeState(8))  # ... and its chunk reaches the file
    err = capsys.readouterr().err
    assert "stopping after the current step" in err and "state saved to" in err
    assert (tmp_path / "c.partial.state.pt").read_text() == "8"
    # the handlers in place before (SIGINT: Python's default, or SIG_IGN under nohup / a background job)
    assert signal.getsignal(signal.SIGTERM) is before and signal.getsignal(signal.SIGINT) is before_int


def test_action_names():
    assert action_names(np.array([0, len(ACTIONS), -1])) == [ACTIONS[0], None, None]


# ---------------------------------------------------------------------------------- exclusive, no symlinks


def test_a_second_writer_on_the_same_out_fails_at_once(tmp_path, cfg):
    """The partial mp4 is created exclusively and locked from the claim to the last rename: a
    second run on the same out fails at once, naming the file, and touches nothing."""
    out = tmp_path / "c.mp4"
    with OutputClaim(out) as claim:
        with pytest.raises(ValueError) as err:
            OutputClaim(out).__enter__()
        assert "being written by another vidhash run" in str(err.value) and str(out.with_name("c.partial.mp4")) in str(err.value)
        with ClipWriter(out, 8, config=cfg, claim=claim) as clip:
            clip.write(*chunk(0))
            with pytest.raises(ValueError, match="another vidhash run"):
                with ClipWriter(out, 8, config=cfg) as other:
                    other.write(*chunk(3))
    assert names(tmp_path) == ["c.config.yaml", "c.mp4", "c.poses.json"]
    assert read_frames(out).shape[0] == 4 and read_frames(out)[0].mean() == 0  # the first run's frames only
    with OutputClaim(out):  # free again
        pass
    assert names(tmp_path) == ["c.config.yaml", "c.mp4", "c.poses.json"]  # an unused claim leaves nothing


def test_the_name_stays_taken_until_the_last_rename(tmp_path, cfg):
    """The mp4 is renamed last: while the state (and poses, config) are written, the name is still taken."""
    out = tmp_path / "c.mp4"
    seen = []

    class Probe(FakeState):
        def save(self, path):
            try:
                OutputClaim(out).__enter__()
            except ValueError as err:
                seen.append(str(err))
            super().save(path)

    with ClipWriter(out, 8, config=cfg, save_state=str(tmp_path / "s.txt")) as clip:
        clip.write(*chunk(0), state=Probe(4))
    assert len(seen) == 1 and "another vidhash run" in seen[0] and out.is_file()


def test_an_interrupted_partial_is_not_overwritten(tmp_path, cfg):
    (tmp_path / "c.partial.mp4").write_bytes(b"earlier frames")
    with pytest.raises(ValueError, match="exists \\(an interrupted earlier run\\)"):
        with ClipWriter(tmp_path / "c.mp4", 8, config=cfg):
            pass
    assert (tmp_path / "c.partial.mp4").read_bytes() == b"earlier frames"


def test_stopped_before_a_frame_keeps_no_empty_mp4(tmp_path, cfg, capsys):
    with pytest.raises(RuntimeError):
        with ClipWriter(tmp_path / "c.mp4", 8, config=cfg, pipeline=FakePipeline()):
            raise RuntimeError("model failed")
    assert "c.partial.mp4" not in names(tmp_path) and "stopped before the first frame" in capsys.readouterr().err


@pytest.mark.parametrize("role", ["partial mp4", "partial config", "partial poses", "partial state", "mp4", "poses",
                                  "config", "old poses temp"])
def test_a_planted_symlink_is_never_written_through(tmp_path, cfg, role):
    """A symlink at any fixed output name: refused (the partial mp4, the lock) or replaced by the
    file (every other name); the link's target is untouched. The poses went through
    ``<stem>.poses.json.tmp`` and the partial mp4 was opened by name: a link redirected the write."""
    out = tmp_path / "c.mp4"
    paths = output_paths(out)
    name = Path(f"{paths['poses']}.tmp") if role == "old poses temp" else paths[role]
    target = tmp_path / "elsewhere"
    target.write_bytes(b"precious")
    name.symlink_to(target)
    crash = role.startswith("partial") and role != "partial mp4"
    if role == "partial mp4":
        with pytest.raises(ValueError, match="is a symlink"):
            with ClipWriter(out, 8, config=cfg):
                pass
    elif crash:  # the partial names are written when a run stops
        with pytest.raises(RuntimeError):
            with ClipWriter(out, 8, config=cfg, pipeline=FakePipeline()) as clip:
                clip.write(*chunk(0), state=RealFileState(4))
                raise RuntimeError("stop")
        assert not name.is_symlink() and name.is_file()
    else:
        with ClipWriter(out, 8, config=cfg) as clip:
            clip.write(*chunk(0), state=RealFileState(4))
        assert (not name.is_symlink() and name.is_file()) or role == "old poses temp"
    assert target.read_bytes() == b"precious"


class RealFileState(FakeState):
    """Saves like VidHashState.save: a temporary file in the folder, renamed into place."""

    def save(self, path):
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp-test")
        tmp.write_text(str(self.frame_index))
        os.replace(tmp, path)
