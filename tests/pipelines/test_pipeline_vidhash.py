"""VidHashPipeline and VidHashState on the tiny random model (CPU)."""
import numpy as np
import PIL.Image
import pytest
import torch

from vidhash.generation_config import MemorySettings
from vidhash.pipelines import VidHashPipeline, VidHashPipelineOutput, VidHashState



def gen(seed=0):
    return torch.Generator().manual_seed(seed)


FAST = dict(num_inference_steps=1, chunk_frames=4, window_frames=8)  # pins behaviour, not quality


@pytest.mark.parametrize("output_type", ["np", "pt", "pil"], ids=["np", "pt", "pil"])
def test_output_types(tiny_pipe, output_type):
    out = tiny_pipe(num_frames=6, generator=gen(), output_type=output_type, **FAST)
    assert isinstance(out, VidHashPipelineOutput)
    if output_type == "np":
        assert out.frames.shape == (1, 6, 64, 64, 3) and out.frames.dtype == np.float32
        assert out.frames.min() >= 0 and out.frames.max() <= 1
    elif output_type == "pt":
        assert out.frames.shape == (1, 6, 3, 64, 64) and out.frames.dtype == torch.float32
    else:
        assert len(out.frames) == 1 and len(out.frames[0]) == 6
        assert all(isinstance(im, PIL.Image.Image) and im.size == (64, 64) for im in out.frames[0])
    assert out.poses.shape == (6, 2) and out.actions.shape == (6,) and out.state.frame_index == 6
    frames, state = tiny_pipe(num_frames=2, generator=gen(), output_type=output_type, return_dict=False, **FAST)
    assert state.frame_index == 2


@pytest.mark.parametrize("num_frames,chunk", [(1, 4), (7, 4), (5, 5), (9, 2)],
                         ids=["F1", "F7-C4-partial-chunk", "F5-C5", "F9-C2"])
def test_odd_lengths(tiny_pipe, num_frames, chunk):
    chunks = list(tiny_pipe.stream(num_frames=num_frames, generator=gen(), num_inference_steps=1,
                                   chunk_frames=chunk, window_frames=8))
    assert [c.frame_start for c in chunks] == list(range(0, num_frames, chunk))
    assert sum(c.frames.shape[1] for c in chunks) == num_frames
    out = tiny_pipe(num_frames=num_frames, generator=gen(), num_inference_steps=1, chunk_frames=chunk, window_frames=8)
    assert out.frames.shape[1] == num_frames
    np.testing.assert_array_equal(out.frames, np.concatenate([c.frames for c in chunks], 1))


def test_non_square_size(tiny_pipe):
    out = tiny_pipe(num_frames=2, height=32, width=48, generator=gen(), **FAST)
    assert out.frames.shape == (1, 2, 32, 48, 3)


def test_state_nbytes_constant_in_clip_length(tiny_pipe):
    short = tiny_pipe(num_frames=16, generator=gen(), **FAST).state
    long = tiny_pipe(num_frames=128, generator=gen(), **FAST).state
    assert short.nbytes == long.nbytes
    assert all(int(m.num_entries().min()) > 0 for m in long.memories)  # the memory is really in use
    full = dict(FAST, memory={"mode": "full"})  # the dense baseline keeps every frame: it grows
    assert (tiny_pipe(num_frames=32, generator=gen(), **full).state.nbytes
            > tiny_pipe(num_frames=16, generator=gen(), **full).state.nbytes)


@pytest.mark.parametrize("mode", ["hashed", "window", "full"], ids=["hashed", "window", "full"])
def test_resume_equals_straight_run(tiny_pipe, tmp_path, mode):
    """2N frames straight == N frames, save, load, N more (bitwise, same seed), random trajectory."""
    kw = dict(FAST, memory={"mode": mode})
    straight = tiny_pipe(num_frames=24, generator=gen(5), **kw)
    first = tiny_pipe(num_frames=12, generator=gen(5), **kw)
    path = first.state.save(tmp_path / "state.pt")
    loaded = VidHashState.load(path)
    second = tiny_pipe(num_frames=12, state=loaded, **kw)
    np.testing.assert_array_equal(straight.frames, np.concatenate([first.frames, second.frames], 1))
    np.testing.assert_array_equal(straight.poses, np.concatenate([first.poses, second.poses]))
    assert second.frame_start == 12 and loaded.frame_index == 24


def test_memory_contents_change_later_frames(tiny_pipe):
    """The resume test above is not vacuous: what the memory holds changes the frames."""
    first = tiny_pipe(num_frames=16, generator=gen(5), **FAST)
    keep = tiny_pipe(num_frames=8, state=first.state, **FAST).frames
    first = tiny_pipe(num_frames=16, generator=gen(5), **FAST)
    for mem in first.state.memories:
        mem.reset()
    assert not np.array_equal(keep, tiny_pipe(num_frames=8, state=first.state, **FAST).frames)


def test_actions_and_poses(tiny_pipe):
    actions = ["right"] * 3 + ["down"] * 2 + ["stay"]
    out = tiny_pipe(num_frames=6, actions=actions, generator=gen(), action_step=4, **FAST)
    np.testing.assert_array_equal(out.poses, [[4, 0], [8, 0], [12, 0], [12, 4], [12, 8], [12, 8]])
    poses = np.array([[100.0, 200.0]] * 5)
    out = tiny_pipe(num_frames=5, poses=poses, generator=gen(), **FAST)
    np.testing.assert_array_equal(out.poses, poses)
    a = tiny_pipe(num_frames=4, actions=["up"] * 4, generator=gen(), **FAST).frames
    b = tiny_pipe(num_frames=4, actions=["left"] * 4, generator=gen(), **FAST).frames
    assert not np.array_equal(a, b)  # actions condition the model


def test_same_seed_same_frames_other_seed_other_frames(tiny_pipe):
    a = tiny_pipe(num_frames=4, generator=gen(1), **FAST).frames
    assert np.array_equal(a, tiny_pipe(num_frames=4, generator=gen(1), **FAST).frames)
    assert not np.array_equal(a, tiny_pipe(num_frames=4, generator=gen(2), **FAST).frames)


def test_from_pretrained_round_trip(tiny_pipe, tmp_path):
    tiny_pipe.save_pretrained(tmp_path)
    assert (tmp_path / "model_index.json").exists()
    assert (tmp_path / "transformer" / "diffusion_pytorch_model.safetensors").exists()
    loaded = VidHashPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(loaded(num_frames=4, generator=gen(), **FAST).frames,
                                  tiny_pipe(num_frames=4, generator=gen(), **FAST).frames)


def test_callback_can_stop_generation(tiny_pipe):
    seen = []

    def stop_in_second_chunk(pipe, step, t, kwargs):
        seen.append((pipe.chunk_index, step, tuple(kwargs["latents"].shape)))
        assert pipe.num_timesteps == 3 * 3 and pipe.steps_per_chunk == 3
        if pipe.chunk_index == 1:
            pipe._interrupt = True
        return kwargs

    out = tiny_pipe(num_frames=12, generator=gen(), callback_on_step_end=stop_in_second_chunk,
                    num_inference_steps=3, chunk_frames=4, window_frames=8)
    assert out.frames.shape[1] == 4 and out.state.frame_index == 4  # chunk 1 dropped, state at chunk 0
    # the step index counts the call's denoising steps over chunks (diffusers' callbacks compare it with num_timesteps)
    assert seen == [(0, 0, (1, 4, 3, 64, 64)), (0, 1, (1, 4, 3, 64, 64)), (0, 2, (1, 4, 3, 64, 64)),
                    (1, 3, (1, 4, 3, 64, 64))]
    # the stopped state continues like a straight run from frame 4
    more = tiny_pipe(num_frames=4, state=out.state, num_inference_steps=3, chunk_frames=4, window_frames=8)
    assert more.frame_start == 4


def test_callback_can_replace_latents(tiny_pipe):
    def zero(pipe, step, t, kwargs):
        return {"latents": torch.zeros_like(kwargs["latents"])}

    out = tiny_pipe(num_frames=4, generator=gen(), callback_on_step_end=zero, output_type="pt", **FAST)
    assert torch.all(out.frames == 0.5)


@pytest.fixture(scope="module")
def saved_state(tmp_path_factory, tiny_pipe):
    path = tmp_path_factory.mktemp("state") / "s.pt"
    tiny_pipe(num_frames=12, generator=gen(), **FAST).state.save(path)
    return path


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_frames=4, height=60), "divisible by the patch size"),
    (dict(num_frames=4, width=65), "divisible by the patch size"),
    (dict(num_frames=4, chunk_frames=9, window_frames=8), r"chunk_frames \(9\) is larger than window_frames \(8\)"),
    (dict(num_frames=0), "num_frames must be a positive int"),
    (dict(num_frames=-3), "num_frames must be a positive int"),
    (dict(num_frames=2, actions=["up", "fly"]), "unknown action 'fly'"),
    (dict(num_frames=3, actions=["up", "up"]), "got 2 actions for 3 frames"),
    (dict(num_frames=2, poses=[[0, 0]]), "poses must have shape"),
    (dict(num_frames=2, output_type="video"), "output_type"),
    (dict(num_frames=2, memory={"mode": "nope"}), "memory.mode"),
    (dict(num_frames=2, memory={"bucketz": 3}), "unknown memory keys"),
    (dict(num_frames=2, callback_on_step_end_tensor_inputs=["noise"]), "callback_on_step_end_tensor_inputs"),
    (dict(num_frames=2, callback_on_step_end="stop"), "callback_on_step_end must be callable"),
    (dict(num_frames=2, fps=float("nan")), "fps must be a positive finite number"),
    (dict(num_frames=2, fps="8"), "fps must be a positive finite number"),
], ids=["height", "width", "chunk-gt-window", "zero-frames", "negative-frames", "unknown-action",
        "actions-length", "poses-shape", "output-type", "memory-mode", "memory-key", "callback-inputs",
        "callback-not-callable", "fps-nan", "fps-str"])
def test_bad_inputs_raise_before_work(tiny_pipe, kwargs, match):
    calls = []
    orig = tiny_pipe.transformer.forward
    tiny_pipe.transformer.forward = lambda *a, **k: calls.append(1) or orig(*a, **k)
    try:
        with pytest.raises(ValueError, match=match):
            tiny_pipe(generator=gen(), **{**FAST, "num_inference_steps": 1, **kwargs})
    finally:
        del tiny_pipe.transformer.forward
    assert not calls  # nothing was computed


@pytest.mark.parametrize("kwargs,match", [
    (dict(window_frames=16), "window_frames: state 8, here 16"),
    (dict(height=32), "height: state 64, here 32"),
    (dict(memory={"num_buckets": 32}), "memory.num_buckets: state 64, here 32"),
    (dict(memory=MemorySettings(num_buckets=64, policy="merge")), "memory.policy: state 'fifo', here 'merge'"),
], ids=["window", "height", "memory-size", "memory-policy"])
def test_state_from_another_generation_config(tiny_pipe, saved_state, kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_pipe(num_frames=4, state=VidHashState.load(saved_state), **{**FAST, **kwargs})


def test_state_from_another_model_config(saved_state):
    other = VidHashPipeline.random("tiny", seed=0)
    other = VidHashPipeline(type(other.transformer)(hidden_dim=64, num_heads=2, num_layers=3), other.scheduler)
    with pytest.raises(ValueError, match="another model or generation config.*model.hidden_dim: state 128, here 64"):
        other(num_frames=4, state=VidHashState.load(saved_state), **FAST)


def test_read_settings_are_per_call_not_state(tiny_pipe, saved_state):
    """top_k is a read setting: given per call on resume (default: the pipeline's generation_config),
    it changes the frames that read a non-empty memory and never the state's fingerprint or file."""
    default = tiny_pipe(num_frames=4, state=VidHashState.load(saved_state), **FAST)
    narrow = tiny_pipe(num_frames=4, state=VidHashState.load(saved_state), memory={"top_k": 1}, **FAST)
    every = tiny_pipe(num_frames=4, state=VidHashState.load(saved_state), memory={"top_k": None}, **FAST)
    assert narrow.state.frame_index == 16 and narrow.state.fingerprint == default.state.fingerprint
    assert not np.array_equal(default.frames, narrow.frames) and not np.array_equal(narrow.frames, every.frames)
    assert not hasattr(narrow.state, "top_k") and not hasattr(narrow.state, "mass_cap")
    assert tiny_pipe.generation_config.memory.top_k == 32  # the default read: the tiny preset's
    explicit = tiny_pipe(num_frames=4, state=VidHashState.load(saved_state), memory={"top_k": 32}, **FAST)
    np.testing.assert_array_equal(default.frames, explicit.frames)


def test_top_k_of_every_entry_is_none(tiny_pipe, saved_state):
    """A top_k of at least the capacity (how presets wrote "every entry" before None) reads what None reads."""
    capacity = VidHashState.load(saved_state).memory_size.capacity
    every = tiny_pipe(num_frames=8, state=VidHashState.load(saved_state), memory={"top_k": None}, **FAST)
    big = tiny_pipe(num_frames=8, state=VidHashState.load(saved_state), memory={"top_k": capacity}, **FAST)
    np.testing.assert_array_equal(every.frames, big.frames)


@pytest.mark.parametrize("cut", [0, 10, 200, -1000], ids=["empty", "header-only", "cut-early", "cut-late"])
def test_truncated_state_file(saved_state, tmp_path, cut):
    data = saved_state.read_bytes()
    bad = tmp_path / "bad.pt"
    bad.write_bytes(data[:cut] if cut >= 0 else data[:cut])
    with pytest.raises(ValueError, match="truncated"):
        VidHashState.load(bad)


def test_state_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        VidHashState.load(tmp_path / "missing.pt")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="not a VidHashState"):
        VidHashState.load(tmp_path / "other.safetensors")


def test_state_save_is_atomic(tiny_pipe, tmp_path, monkeypatch):
    """A failing save leaves the previous file intact and no temp file behind."""
    state = tiny_pipe(num_frames=4, generator=gen(), **FAST).state
    path = state.save(tmp_path / "s.pt")
    before = path.read_bytes()
    import vidhash.pipelines.state as state_module

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(state_module, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        state.save(path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["s.pt"]


def test_mass_cap_is_a_read_setting(tiny_pipe, tmp_path):
    """mass_cap changes what a long memory contributes (not a no-op), a cap above the memory's
    mass changes nothing, and like top_k it is a per-call read setting: not part of the state's
    fingerprint or file, and a loaded state continues with the cap it is given."""
    mem = dict(num_buckets=64, slots=16, policy="merge", top_k=1024)
    base = tiny_pipe(num_frames=24, generator=gen(), memory=mem, output_type="pt", **FAST)
    over = tiny_pipe(num_frames=24, generator=gen(), memory={**mem, "mass_cap": 10**6}, output_type="pt", **FAST)
    capped = tiny_pipe(num_frames=24, generator=gen(), memory={**mem, "mass_cap": 16}, output_type="pt", **FAST)
    assert torch.equal(base.frames, over.frames)
    assert not torch.equal(base.frames, capped.frames)
    assert torch.equal(base.frames[:, :12], capped.frames[:, :12])  # nothing in memory yet: same frames
    assert capped.state.fingerprint == base.state.fingerprint
    first = tiny_pipe(num_frames=16, generator=gen(), memory={**mem, "mass_cap": 16}, output_type="pt", **FAST)
    first.state.save(tmp_path / "s.pt")
    loaded = tiny_pipe(num_frames=8, state=VidHashState.load(tmp_path / "s.pt"), memory={**mem, "mass_cap": 16},
                       output_type="pt", **FAST)
    assert torch.equal(capped.frames[:, 16:], loaded.frames)  # resumed with the same read: the straight run
    uncapped = tiny_pipe(num_frames=8, state=VidHashState.load(tmp_path / "s.pt"), memory=mem, output_type="pt", **FAST)
    assert not torch.equal(uncapped.frames, loaded.frames)


def test_memory_select_is_a_read_setting(tiny_pipe, monkeypatch):
    """``memory.select`` (which CUDA kernel finds the top-k) reaches every memory read as given, is
    not part of the state's fingerprint, and changes nothing on a CPU (the same entries either way)."""
    from vidhash.memory import HashedMemory

    seen = []
    attend = HashedMemory.attend

    def spy(self, q, top_k=None, **kw):
        seen.append(kw.get("select"))
        return attend(self, q, top_k, **kw)

    monkeypatch.setattr(HashedMemory, "attend", spy)
    mem = dict(num_buckets=64, slots=16, policy="merge", top_k=8)
    base = tiny_pipe(num_frames=16, generator=gen(), memory=mem, output_type="pt", **FAST)
    assert seen and set(seen) == {"candidates"}
    seen.clear()
    levels = tiny_pipe(num_frames=16, generator=gen(), memory={**mem, "select": "levels"}, output_type="pt", **FAST)
    assert seen and set(seen) == {"levels"}
    assert torch.equal(base.frames, levels.frames) and levels.state.fingerprint == base.state.fingerprint
