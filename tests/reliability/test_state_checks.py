"""A state continues only under the model that made it, and a damaged or edited state file is
refused on load with one line naming the file and the field (issue 20 defect 5): the fingerprint
covers the weights and every model key the forward reads, files carry a checksum, every field is
range-checked, and the crash handler never writes back the state a run started from."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from vidhash.cli import main
from vidhash.data.clip_writer import ClipWriter
from vidhash.pipelines import VidHashPipeline, VidHashState
from vidhash.pipelines.state import FORMAT, OLD_FORMATS, fingerprint, tensors_checksum

SMALL = dict(height=16, width=16, num_inference_steps=1, chunk_frames=2, window_frames=4,
             memory={"num_buckets": 4, "slots": 2})
OLD = Path(__file__).parents[1] / "pipelines" / "data" / "state_v1_tiny16.pt"


def _pipe(seed: int = 0, **model_changes) -> VidHashPipeline:
    pipe = VidHashPipeline.random("tiny", seed=seed)
    if model_changes:  # the same weights under a config that differs in a key the forward reads
        pipe.transformer.register_to_config(**model_changes)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A state after 8 frames (frames have left the window for the memory; a random trajectory)."""
    path = tmp_path_factory.mktemp("state") / "s.pt"
    _pipe()(num_frames=8, generator=torch.Generator().manual_seed(1), **SMALL).state.save(path)
    return path


def _read(path):
    with safe_open(str(path), "pt") as f:
        return json.loads(f.metadata()["vidhash"]), {k: f.get_tensor(k) for k in f.keys()}


def _write(path, meta, tensors, checksum: bool = True):
    """The file as an editor that knew the format would write it (fingerprint and checksum redone)."""
    meta = dict(meta)
    meta["fingerprint"] = fingerprint(meta["config"])
    meta.pop("checksum", None)
    if checksum:
        meta["checksum"] = tensors_checksum(tensors, meta)
    else:
        meta["format"] = OLD_FORMATS[0]
    save_file(tensors, str(path), metadata={"vidhash": json.dumps(meta)})
    return path


def test_another_models_weights_are_refused(saved):
    """Same config, other weights (the world-tiny-v3 state under a random model, in small)."""
    with pytest.raises(ValueError, match="other weights"):
        _pipe(seed=1)(num_frames=2, state=VidHashState.load(saved), **SMALL)
    _pipe(seed=0)(num_frames=2, state=VidHashState.load(saved), **SMALL)  # its own model continues it


@pytest.mark.parametrize("change", [{"rope": True}, {"prediction": "sample"}, {"sigma_min": 0.1}],
                         ids=["rope", "prediction", "sigma_min"])
def test_model_keys_the_forward_reads_are_in_the_fingerprint(saved, change):
    (key,) = change
    with pytest.raises(ValueError, match=f"another model or generation config.*{key}"):
        _pipe(**change)(num_frames=2, state=VidHashState.load(saved), **SMALL)


def test_old_states_are_checked_on_the_keys_they_have():
    """A state of the first format (no weights digest, no later keys, no checksum) still continues;
    a config key it recorded still has to match."""
    _pipe()(num_frames=2, state=VidHashState.load(OLD), memory={"top_k": 4, "mass_cap": 8})
    small = VidHashPipeline.random("small")
    with pytest.raises(ValueError, match="another model or generation config.*hidden_dim"):
        small(num_frames=2, state=VidHashState.load(OLD))


def test_flipped_bytes_are_refused(saved, tmp_path):
    data = bytearray(saved.read_bytes())
    data[-5] ^= 0x10  # inside the last tensor's bytes
    bad = tmp_path / "flipped.pt"
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum mismatch") as err:
        VidHashState.load(bad)
    assert str(bad) in str(err.value)


def test_a_new_file_without_its_checksum_is_refused(saved, tmp_path):
    meta, tensors = _read(saved)
    meta.pop("checksum")
    bad = tmp_path / "stripped.pt"
    save_file(tensors, str(bad), metadata={"vidhash": json.dumps(meta)})
    assert meta["format"] == FORMAT
    with pytest.raises(ValueError, match="checksum"):
        VidHashState.load(bad)


EDITS = {
    "frame_index-negative": (lambda m, t: m.update(frame_index=-3), "frame_index"),
    "frame_index-huge": (lambda m, t: m.update(frame_index=10**30), "frame_index"),
    "frame_index-text": (lambda m, t: m.update(frame_index="8"), "frame_index"),
    "frame_index-shifted": (lambda m, t: m.update(frame_index=10), "window.index"),
    "window_filled-over": (lambda m, t: m.update(window_filled=9), "window_filled"),
    "window_filled-float": (lambda m, t: m.update(window_filled=4.0), "window_filled"),
    "pose-nan": (lambda m, t: m.update(pose=[float("nan"), 0.0]), "pose"),
    "pose-short": (lambda m, t: m.update(pose=[1.0]), "pose"),
    "trajectory-pos": (lambda m, t: m["trajectory"].update(pos=[10**9, 0]), "trajectory.pos"),
    "trajectory-pause": (lambda m, t: m["trajectory"].update(pause=-1), "trajectory.pause"),
    "trajectory-rng": (lambda m, t: m["trajectory"].update(rng={"bit_generator": "nope"}), "trajectory.rng"),
    "trajectory-missing": (lambda m, t: m["trajectory"].pop("history"), "history"),
    "trajectory-type": (lambda m, t: m.update(trajectory=[1, 2]), "trajectory"),
    "window_frames-huge": (lambda m, t: m["config"].update(window_frames=10**7), "window_frames"),
    "num_layers-text": (lambda m, t: m["config"]["model"].update(num_layers="six"), "num_layers"),
    "height-odd": (lambda m, t: m["config"].update(height=17), "height"),
    "policy": (lambda m, t: m["config"]["memory"].update(policy="bogus"), "policy"),
    "rng-short": (lambda m, t: t.update(rng=t["rng"][:100]), "rng"),
    "window-nan": (lambda m, t: t["window.k"].view(-1).__setitem__(0, float("nan")), "window.k"),
    "memory-frames": (lambda m, t: t["memory.0.frames"].view(-1).__setitem__(0, 99), "memory.0.frames"),
    "memory-missing": (lambda m, t: t.pop("memory.1.keys"), "memory.1.keys"),
}


@pytest.mark.parametrize("checksum", [True, False], ids=["new-format", "old-format"])
@pytest.mark.parametrize("edit", list(EDITS))
def test_edited_fields_are_refused_naming_them(saved, tmp_path, edit, checksum):
    """Each field edited (with a fingerprint and checksum redone to match, or as a file of the old
    format that has none): one ValueError naming the file and the field, nothing else raised."""
    change, field = EDITS[edit]
    meta, tensors = _read(saved)
    change(meta, tensors)
    path = _write(tmp_path / "edited.pt", meta, tensors, checksum)
    with pytest.raises(ValueError) as err:
        VidHashState.load(path)
    message = str(err.value)
    assert len(message.splitlines()) == 1 and str(path) in message and field in message, message


def test_the_unedited_file_passes_the_same_checks(saved, tmp_path):
    """(The edits above are what fails: the same rewrite without an edit loads, in both formats.)"""
    for checksum in (True, False):
        meta, tensors = _read(saved)
        state = VidHashState.load(_write(tmp_path / f"same{checksum}.pt", meta, tensors, checksum))
        assert state.frame_index == 8 and state.window_filled == 4


def test_cli_refuses_an_edited_state_in_one_line_and_writes_nothing(saved, tmp_path, capsys):
    meta, tensors = _read(saved)
    meta["window_filled"] = 7
    path = _write(tmp_path / "edited.pt", meta, tensors)
    out = tmp_path / "clip.mp4"
    rc = main(["generate", "--model", "random-tiny", "--resume", str(path), "--out", str(out), "--seconds", "1",
               "--quiet", "num_inference_steps=1", "chunk_frames=2"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "window_filled" in err and str(path) in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["edited.pt"]


def test_crash_handler_does_not_write_back_the_state_it_started_from(saved, tmp_path):
    """A run resumed from a state fails before its first chunk is done: no state is saved (not to
    --save-state, not to the partial name) and the message says so."""
    state = VidHashState.load(saved)
    with pytest.raises(RuntimeError, match="boom"):
        with ClipWriter(tmp_path / "clip.mp4", 8, config={"x": 1}, state=state,
                        save_state=str(tmp_path / "again.pt")):
            raise RuntimeError("boom")
    assert not (tmp_path / "again.pt").exists() and not (tmp_path / "clip.partial.state.pt").exists()
    # once a chunk of the run has reached the state it is saved, as before
    with pytest.raises(RuntimeError, match="boom"):
        with ClipWriter(tmp_path / "clip2.mp4", 8, config={"x": 1}, state=state,
                        save_state=str(tmp_path / "again.pt")) as clip:
            more = _pipe()(num_frames=2, state=state, output_type="pt", **SMALL)
            frames = (more.frames[0].permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
            clip.write(frames, more.poses, more.actions, state=more.state)
            raise RuntimeError("boom")
    assert VidHashState.load(tmp_path / "again.pt").frame_index == 10
