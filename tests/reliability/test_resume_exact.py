"""Interrupt → resume equals a straight run, bitwise — frames and every state tensor, the random
generator included (issue 20 defect 1). Through the API here (``callback_on_step_end`` setting
``pipe._interrupt``); through the CLI (SIGINT / SIGTERM to a real ``vidhash generate``, then
``--resume``) in :func:`test_cli_interrupt_then_resume_equals_a_straight_run`."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from reliability_helpers import RESUME, read_json
from safetensors import safe_open

from vidhash.data.video import read_frames

from vidhash.pipelines import VidHashPipeline, VidHashState

SMALL = dict(height=16, width=16, num_inference_steps=2, chunk_frames=2, window_frames=4,
             memory={"num_buckets": 4, "slots": 2})


@pytest.fixture(scope="module")
def pipe():
    pipe = VidHashPipeline.random("tiny")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _tensors(state: VidHashState, tmp_path, name: str) -> dict:
    path = state.save(tmp_path / name)
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def _assert_same_state(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]


@pytest.mark.parametrize("stop_chunk,stop_step,seed", [(2, 0, 3), (2, 1, None), (0, 0, None), (3, 1, 5)],
                         ids=["chunk2-step0", "chunk2-step1-drawn-trajectory", "first-chunk", "chunk3-step1"])
def test_interrupt_then_resume_equals_a_straight_run(pipe, tmp_path, stop_chunk, stop_step, seed):
    """A callback stops generation inside chunk ``stop_chunk``: that chunk is dropped, the state —
    its generator too — is the state after the chunks before it, and continuing it gives the
    straight run's frames and final state. ``seed=None``: the trajectory's seed is drawn from the
    generator inside the first chunk, which the rollback must also undo."""
    n = 12
    straight = pipe(num_frames=n, generator=torch.Generator().manual_seed(7), trajectory_seed=seed, **SMALL)

    def stop(p, step, t, kwargs):
        if p.chunk_index == stop_chunk and step % p.steps_per_chunk == stop_step:  # step: the call's global index
            p._interrupt = True
        return kwargs

    state = pipe.init_state(**{k: SMALL[k] for k in ("height", "width", "window_frames", "memory")},
                            generator=torch.Generator().manual_seed(7))
    first = pipe(num_frames=n, state=state, trajectory_seed=seed, callback_on_step_end=stop, **SMALL)
    done = stop_chunk * SMALL["chunk_frames"]
    assert first.state is state and state.frame_index == done
    clean = pipe(num_frames=done, generator=torch.Generator().manual_seed(7), trajectory_seed=seed, **SMALL).state \
        if done else pipe.init_state(**{k: SMALL[k] for k in ("height", "width", "window_frames", "memory")},
                                     generator=torch.Generator().manual_seed(7))
    _assert_same_state(_tensors(state, tmp_path, "stopped.pt"), _tensors(clean, tmp_path, "clean.pt"))
    # resumed from the file, as the CLI does
    rest = pipe(num_frames=n - done, state=VidHashState.load(tmp_path / "stopped.pt"), trajectory_seed=seed, **SMALL)
    frames = np.concatenate([first.frames, rest.frames], axis=1) if done else rest.frames
    np.testing.assert_array_equal(frames, straight.frames)
    _assert_same_state(_tensors(rest.state, tmp_path, "resumed.pt"), _tensors(straight.state, tmp_path, "straight.pt"))


def test_an_exception_inside_a_chunk_rolls_its_draws_back(pipe, tmp_path):
    """A callback that raises (a second Ctrl-C raises KeyboardInterrupt the same way) inside a
    chunk: the state the caller keeps is the one after the last finished chunk, generator included."""
    straight = pipe(num_frames=8, generator=torch.Generator().manual_seed(1), trajectory_seed=2, **SMALL)

    def boom(p, step, t, kwargs):
        if p.chunk_index == 2 and step % p.steps_per_chunk == 1:
            raise KeyboardInterrupt
        return kwargs

    state = pipe.init_state(**{k: SMALL[k] for k in ("height", "width", "window_frames", "memory")},
                            generator=torch.Generator().manual_seed(1))
    chunks = []
    with pytest.raises(KeyboardInterrupt):
        for chunk in pipe.stream(num_frames=8, state=state, trajectory_seed=2, callback_on_step_end=boom, **SMALL):
            chunks.append(chunk.frames)
    assert state.frame_index == 4 and not pipe.committing
    rest = pipe(num_frames=4, state=state, trajectory_seed=2, **SMALL)
    np.testing.assert_array_equal(np.concatenate([*chunks, rest.frames], axis=1), straight.frames)
    _assert_same_state(_tensors(rest.state, tmp_path, "a.pt"), _tensors(straight.state, tmp_path, "b.pt"))


def _file_tensors(path) -> dict:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


@pytest.fixture(scope="module")
def cli_resume(scenarios, vidhash_run):
    """The interrupted run (conftest), then together: its ``--resume`` for 4 more frames, and the
    straight run of as many frames as both. Returns (folder, frames before the interrupt, the
    interrupted run's result, {name: result})."""
    root, runs = scenarios["interrupt"]
    stopped = runs["interrupt"].result()
    done = len(read_json(root / "int.partial.poses.json")["poses"])
    common = ["generate", "--model", "random-tiny", *RESUME]
    later = {
        "resume": vidhash_run([*common, "--out", str(root / "res.mp4"), "--seconds", "1",
                               "--resume", str(root / "int.state.pt"), "--save-state", str(root / "res.state.pt")], root),
        "straight": vidhash_run([*common, "--out", str(root / "full.mp4"), "--seconds", str((done + 4) / 4),
                                 "--seed", "3", "--save-state", str(root / "full.state.pt")], root),
    }
    return root, done, stopped, {name: run.result() for name, run in later.items()}


def test_cli_interrupt_then_resume_equals_a_straight_run(cli_resume):
    """``vidhash generate`` stopped by SIGINT after a few chunks, then ``--resume`` of its state: the
    final state equals a straight run's bitwise (every tensor, the generator included, and the
    counters), the frames written before the signal are the straight run's (decoded mp4s: the
    encoder is causal), and the poses continue the straight run's. (The resumed mp4 starts a new
    H.264 stream, so its decoded frames are compared through the state they produced.)"""
    root, done, (rc, out, err), later = cli_resume
    assert rc == 130 and "state saved to" in err and str(root / "int.state.pt") in err, err
    assert done >= 2 and done % 2 == 0, done  # stopped between chunks of 2, after at least one
    for name, (code, out, err) in later.items():
        assert code == 0, (name, err)
    _assert_same_state(_file_tensors(root / "res.state.pt"), _file_tensors(root / "full.state.pt"))
    resumed, straight = VidHashState.load(root / "res.state.pt"), VidHashState.load(root / "full.state.pt")
    assert (resumed.frame_index, resumed.pose, resumed.trajectory) == (straight.frame_index, straight.pose,
                                                                      straight.trajectory)
    assert straight.frame_index == done + 4
    np.testing.assert_array_equal(read_frames(root / "int.partial.mp4"), read_frames(root / "full.mp4")[:done])
    first, rest, full = (read_json(root / f"{n}.poses.json") for n in ("int.partial", "res", "full"))
    assert rest["start_frame"] == done and first["poses"] + rest["poses"] == full["poses"]
    assert first["actions"] + rest["actions"] == full["actions"]
    assert len(read_frames(root / "res.mp4")) == 4
