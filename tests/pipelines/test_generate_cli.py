"""`vidhash generate`: files (mp4, poses, config, state), resume, interrupt, bad input; config overrides."""
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from vidhash.cli import main
from vidhash.config import GenerateConfig, generate_config, load_config
from vidhash.data.video import read_frames
from vidhash.pipelines import VidHashPipeline, VidHashState

FAST = ["num_inference_steps=1", "--quiet"]


def _run(*args):
    return main(["generate", "--model", "random-tiny", *args, *FAST])


def test_generate_writes_clip_poses_config(tmp_path, capsys):
    out = tmp_path / "clip.mp4"
    assert _run("--seconds", "2", "--fps", "8", "--out", str(out), "--seed", "3") == 0
    assert read_frames(out).shape == (16, 64, 64, 3)
    poses = json.loads((tmp_path / "clip.poses.json").read_text())
    assert poses["fps"] == 8 and len(poses["poses"]) == 16 and poses["start_frame"] == 0
    cfg = load_config(GenerateConfig, tmp_path / "clip.config.yaml")
    assert cfg.seed == 3 and cfg.generation.num_inference_steps == 1 and cfg.model == "random-tiny"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.config.yaml", "clip.mp4", "clip.poses.json"]
    assert "wrote" in capsys.readouterr().out


def test_generate_actions_file_and_resume(tmp_path):
    actions = tmp_path / "actions.json"
    actions.write_text(json.dumps({"actions": ["right"] * 8 + ["up"] * 8}))
    a, b = tmp_path / "a.mp4", tmp_path / "b.mp4"
    state = tmp_path / "state.pt"
    assert _run("--seconds", "1", "--out", str(a), "--actions", str(actions), "--save-state", str(state)) == 0
    first = json.loads((tmp_path / "a.poses.json").read_text())
    assert first["actions"] == ["right"] * 8
    assert VidHashState.load(state).frame_index == 8
    assert _run("--seconds", "1", "--out", str(b), "--resume", str(state), "--save-state", str(state)) == 0
    second = json.loads((tmp_path / "b.poses.json").read_text())
    assert second["start_frame"] == 8 and read_frames(b).shape[0] == 8
    assert VidHashState.load(state).frame_index == 16
    # the continuation starts where the first clip's camera stopped (random trajectory from there on)
    step = np.abs(np.array(second["poses"][0]) - np.array(first["poses"][-1])).sum()
    assert step in (0, 4)


def test_interrupt_leaves_playable_partial_and_state(tmp_path, monkeypatch):
    """Ctrl-C after two chunks: the current chunk is dropped, clip.partial.mp4 holds the 8 finished
    frames and plays, no clip.mp4 exists, and the saved state continues from frame 8."""
    real_stream = VidHashPipeline.stream

    def stream_then_sigint(self, *args, **kwargs):
        for i, chunk in enumerate(real_stream(self, *args, **kwargs)):
            yield chunk
            if i == 1:
                os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(VidHashPipeline, "stream", stream_then_sigint)
    before = signal.getsignal(signal.SIGINT)  # Python's default_int_handler, or SIG_IGN under nohup / a background job
    out = tmp_path / "clip.mp4"
    assert _run("--seconds", "4", "--out", str(out)) == 130
    assert not out.exists() and not (tmp_path / "clip.poses.json").exists()
    assert read_frames(tmp_path / "clip.partial.mp4").shape[0] == 8
    assert len(json.loads((tmp_path / "clip.partial.poses.json").read_text())["poses"]) == 8
    state = VidHashState.load(tmp_path / "clip.partial.state.pt")
    assert state.frame_index == 8
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored to what they were


def test_crash_while_writing_keeps_frames_and_consistent_state(tmp_path, monkeypatch):
    """An exception after a chunk was committed but before it reached the file: its frames are
    still written, so the file and the saved state agree."""
    from vidhash.data import video

    calls = []
    real_write = video.Mp4Writer.write

    def flaky(self, frames):
        calls.append(len(frames))
        if len(calls) == 2:
            raise RuntimeError("encoder hiccup")
        return real_write(self, frames)

    monkeypatch.setattr(video.Mp4Writer, "write", flaky)
    out = tmp_path / "clip.mp4"
    state = tmp_path / "s.pt"
    with pytest.raises(RuntimeError, match="hiccup"):
        main(["generate", "--model", "random-tiny", "--seconds", "2", "--out", str(out), "--save-state", str(state),
              *FAST])
    assert read_frames(tmp_path / "clip.partial.mp4").shape[0] == 8
    assert VidHashState.load(state).frame_index == 8


@pytest.mark.parametrize("args,match", [
    (["--out", "{tmp}/missing/x.mp4"], "does not exist"),
    (["--out", "{tmp}/x.avi"], "must end in .mp4"),
    (["--seconds", "0"], "need at least one"),
    (["--fps", "-1"], "fps must be positive"),
    (["chunk_frames=16"], "chunk_frames .16. is larger than window_frames .8."),
    (["bogus=1"], "bogus"),
    (["chunk_frames=two"], "chunk_frames"),
    (["height=60"], "divisible by the patch size"),
    (["--actions", "{tmp}/actions.json"], "unknown action 'jump'"),
    (["--resume", "{tmp}/trunc.pt"], "truncated"),
    (["--model", "random-huge"], "unknown model 'random-huge'"),
    (["--model", "{tmp}"], "not a saved pipeline folder"),
    (["--out", "{tmp}/old.mp4"], "old.partial.mp4 exists"),
    (["--prompt-world", "1", "--prompt-frames", "0"], "prompt-frames must be at least 1"),
    (["--prompt-world", "1", "--resume", "{tmp}/trunc.pt"], "cannot be combined with --resume"),
    (["--device", "cpu", "--cuda-graphs"], "--cuda-graphs needs a CUDA device"),
], ids=["missing-folder", "not-mp4", "zero-seconds", "negative-fps", "chunk-gt-window", "unknown-key",
        "wrong-type", "height", "unknown-action", "truncated-state", "unknown-random-model", "not-a-model",
        "earlier-partial-kept", "zero-prompt-frames", "prompt-and-resume", "graphs-on-cpu"])
def test_bad_input_is_a_clear_error(tmp_path, capsys, args, match):
    (tmp_path / "actions.json").write_text('["up", "jump"]')
    (tmp_path / "trunc.pt").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    (tmp_path / "old.partial.mp4").write_bytes(b"frames of an interrupted run")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    base = ["generate", "--model", "random-tiny", "--seconds", "1", "--out", str(tmp_path / "ok.mp4"), "--quiet"]
    assert main(base + args) == 2
    err = capsys.readouterr().err
    assert "error:" in err
    import re

    assert re.search(match, err), err
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".mp4") == ["old.partial.mp4"]  # nothing new
    assert (tmp_path / "old.partial.mp4").read_bytes() == b"frames of an interrupted run"


def test_default_model_is_the_shipped_world_model(tmp_path, capsys):
    from vidhash.config import DEFAULT_MODEL, preset_for_model, resolve_model

    path = resolve_model(None)
    assert path.endswith(DEFAULT_MODEL) and (Path(path) / "model_index.json").is_file()
    assert preset_for_model(path) == "world"  # its generation settings come with it
    assert resolve_model("world-tiny-v3") == path and resolve_model("random-tiny") == "random-tiny"
    out = tmp_path / "x.mp4"
    assert main(["generate", "--seconds", "0.5", "--out", str(out), "--quiet", "num_inference_steps=1"]) == 0
    assert read_frames(out).shape[0] == 4
    saved = (tmp_path / "x.config.yaml").read_text()
    assert f"model: {path}" in saved and "policy: merge" in saved
    assert main(["generate", "--model", "no-such-model", "--out", str(tmp_path / "y.mp4")]) == 2
    assert "no-such-model" in capsys.readouterr().err


def test_saved_model_folder(tmp_path, tiny_pipe):
    tiny_pipe.save_pretrained(tmp_path / "model")
    out = tmp_path / "x.mp4"
    assert main(["generate", "--model", str(tmp_path / "model"), "--seconds", "0.5", "--out", str(out), *FAST]) == 0
    assert read_frames(out).shape[0] == 4


def test_config_overrides_and_presets():
    cfg = generate_config(["chunk_frames=2", "memory.top_k=8", "generation.window_frames=6"], preset="small", seconds=3)
    assert (cfg.generation.chunk_frames, cfg.generation.memory.top_k, cfg.generation.window_frames) == (2, 8, 6)
    assert cfg.generation.height == 128 and cfg.seconds == 3.0
    with pytest.raises(ValueError, match="unknown generation preset"):
        generate_config(preset="huge")
    with pytest.raises(ValueError, match=r"override memory\.slotz=3: Key 'slotz'"):
        generate_config(["memory.slotz=3"])
    with pytest.raises(ValueError, match=r"override chunk_frames=abc: .*Integer"):  # as typed, not generation.chunk_frames
        generate_config(["chunk_frames=abc"])
    with pytest.raises(ValueError, match="None is written null"):
        generate_config(["memory.top_k=None"])
    with pytest.raises(ValueError, match="not key=value"):
        generate_config(["chunk_frames"])


def test_prompt_world_opens_the_clip_with_ground_truth(tmp_path):
    """--prompt-world: the given frames come first in the mp4 and the poses file, lead into the
    first action, and the generated path continues from the last of them."""
    from vidhash.data.world import ProceduralWorld

    actions = tmp_path / "loop.json"
    actions.write_text(json.dumps(["left"] * 4 + ["right"] * 4))
    out = tmp_path / "p.mp4"
    assert _run("--seconds", "1", "--out", str(out), "--actions", str(actions), "--prompt-world", "5",
                "--prompt-frames", "4") == 0
    frames = read_frames(out)
    assert frames.shape == (12, 64, 64, 3)  # 4 given + 8 generated
    meta = json.loads((tmp_path / "p.poses.json").read_text())
    assert meta["prompt_frames"] == 4 and meta["prompt_world"] == 5 and len(meta["poses"]) == 12
    size = int(VidHashPipeline.load("random-tiny").transformer.config.pos_period)
    c = size // 2
    # moving left into the clip: the prompt walks left too and ends at the world's centre
    assert meta["poses"][:4] == [[c + 12, c], [c + 8, c], [c + 4, c], [c, c]]
    assert meta["actions"][:4] == ["left"] * 4 and meta["poses"][4] == [c - 4, c]
    truth = ProceduralWorld(seed=5, size=size, view=64).render_many(np.array(meta["poses"][:4]))
    def psnr(a, b):
        return 10 * np.log10(255**2 / ((a.astype(float) - b) ** 2).mean())

    assert psnr(frames[:4], truth) > 22  # the given frames, through H.264 (~26 dB on these textures)
    assert psnr(frames[:4], truth[::-1]) < psnr(frames[:4], truth) - 3  # ... in their order


def test_a_wider_world_model_gets_the_world_preset(tmp_path):
    import json

    from vidhash.config import preset_for_model, resolve_model

    src = json.loads((Path(resolve_model(None)) / "transformer" / "config.json").read_text())
    for name, change, want in (("wide", {"hidden_dim": 256, "num_heads": 4}, "world"),  # world_wide.yaml
                               ("deep", {"num_layers": 8}, "world"),
                               ("other-size", {"hidden_dim": 256, "sample_size": 96}, "tiny")):  # no preset's geometry
        (tmp_path / name / "transformer").mkdir(parents=True)
        (tmp_path / name / "transformer" / "config.json").write_text(json.dumps({**src, **change}))
        assert preset_for_model(str(tmp_path / name)) == want, name
