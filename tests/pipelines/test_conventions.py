"""diffusers conventions of ``VidHashPipeline`` (issue 19 point 3): an explicit, documented
signature; ``return_dict=False``; schedulers (kwargs by signature, refusal of the wrong family);
``output_type="latent"`` and ``latents=``; batches; the global callback step; resized frame prompts."""
import inspect

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import (
    DDPMScheduler,
    DEISMultistepScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
    UniPCMultistepScheduler,
)
from diffusers.utils.torch_utils import randn_tensor

from vidhash.pipelines import VidHashPipeline
from vidhash.pipelines.pipeline_vidhash import check_scheduler, resize_frames


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


FAST = dict(num_inference_steps=1, chunk_frames=4, window_frames=8)


def _with_scheduler(pipe, scheduler):
    other = VidHashPipeline(pipe.transformer, scheduler, pipe.generation_config)
    other.set_progress_bar_config(disable=True)
    return other


def _no_forward(pipe):
    """A context in which a forward of the transformer fails the test (errors come before work)."""
    class Guard:
        def __enter__(self):
            def boom(*a, **k):
                raise AssertionError("the transformer ran before the error")
            pipe.transformer.forward = boom

        def __exit__(self, *exc):
            del pipe.transformer.forward

    return Guard()


# ---------------------------------------------------------------------------------------- signature
@pytest.mark.parametrize("name", ["__call__", "stream"])
def test_signature_is_explicit_and_documented(name):
    fn = getattr(VidHashPipeline, name)
    params = list(inspect.signature(fn).parameters.values())[1:]
    assert not [p.name for p in params if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    doc = inspect.getdoc(fn)
    missing = [p.name for p in params if f"{p.name}:" not in doc and f"{p.name}," not in doc]
    assert not missing, f"{name} does not document {missing}"
    if name == "__call__":  # every argument of stream is one of __call__'s, with the same default
        call = inspect.signature(VidHashPipeline.__call__).parameters
        for p in list(inspect.signature(VidHashPipeline.stream).parameters.values())[1:]:
            assert p.name in call and call[p.name].default == p.default, p.name
        assert {"num_videos_per_prompt", "return_dict", "latents"} <= set(call)


def test_return_dict_false_is_frames_then_state(tiny_pipe):
    out = tiny_pipe(num_frames=4, generator=gen(), **FAST)
    tup = tiny_pipe(num_frames=4, generator=gen(), return_dict=False, **FAST)
    assert isinstance(tup, tuple) and len(tup) == 2
    np.testing.assert_array_equal(tup[0], out.frames)  # pipe(...)[0] is the frames, as in diffusers
    assert tup[1].frame_index == 4 and torch.equal(tup[1].generator.get_state(), out.state.generator.get_state())


def test_guidance_scale_property(tiny_pipe):
    tiny_pipe(num_frames=1, generator=gen(), guidance_scale=1.5, guidance_steps=1, **FAST)
    assert tiny_pipe.guidance_scale == 1.5 and tiny_pipe.interrupt is False
    tiny_pipe(num_frames=1, generator=gen(), **FAST)
    assert tiny_pipe.guidance_scale == tiny_pipe.generation_config.guidance_scale


# ---------------------------------------------------------------------------------------- schedulers
FLOW_SCHEDULERS = {
    "flow-euler": lambda: FlowMatchEulerDiscreteScheduler(),
    "flow-euler-shift3": lambda: FlowMatchEulerDiscreteScheduler(shift=3.0),
    "flow-heun": lambda: FlowMatchHeunDiscreteScheduler(),
    "unipc-flow": lambda: UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True),
    "dpm-flow": lambda: DPMSolverMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True),
}


@pytest.mark.parametrize("name", list(FLOW_SCHEDULERS))
def test_flow_schedulers_land_on_the_target(tiny_pipe, name):
    """With the exact velocity of a straight flow to a target x0 — ``(x_t − x0) / σ``, σ from the
    timestep the model is given — a scheduler the pipeline drives correctly ends each chunk at x0.
    (UniPC's step takes no ``generator``: passing one always failed.)"""
    pipe = _with_scheduler(tiny_pipe, FLOW_SCHEDULERS[name]())
    target = torch.rand(1, 4, 3, 64, 64, generator=gen(9)) * 2 - 1

    def exact_velocity(latents, t, chunk, guided, scale):
        sigma = (t.float() / 1000).view(1, -1, 1, 1, 1)
        return ((latents.float() - target) / sigma).to(latents.dtype)

    pipe._velocity = exact_velocity
    out = pipe(num_frames=4, generator=gen(), output_type="latent", num_inference_steps=6, chunk_frames=4,
               window_frames=8)
    err = (out.frames.float() - target).abs().max().item()
    # UniPC / DPM-Solver give integer timesteps (σ · 1000 rounded down): the velocity is off by that much
    assert err < 1e-2, f"{name} ends {err} from the target"  # a noise-prediction scheduler ends O(1) away
    assert pipe.num_timesteps == len(pipe.scheduler.timesteps) == pipe.steps_per_chunk  # one chunk


def test_flow_scheduler_runs_the_model(tiny_pipe):
    """UniPC (flow) on the real model: frames of the right shape, other than Euler's, same seed same frames."""
    pipe = _with_scheduler(tiny_pipe, FLOW_SCHEDULERS["unipc-flow"]())
    kw = dict(num_frames=4, num_inference_steps=3, chunk_frames=4, window_frames=8, output_type="pt")
    a = pipe(generator=gen(), **kw).frames
    assert a.shape == (1, 4, 3, 64, 64) and torch.isfinite(a).all()
    assert torch.equal(a, pipe(generator=gen(), **kw).frames)
    assert not torch.equal(a, tiny_pipe(generator=gen(), **kw).frames)


@pytest.mark.parametrize("scheduler,match", [
    (lambda: DDPMScheduler(), "DDPMScheduler cannot drive.*'epsilon'"),
    (lambda: EulerDiscreteScheduler(), "EulerDiscreteScheduler cannot drive"),
    (lambda: UniPCMultistepScheduler(), "UniPCMultistepScheduler cannot drive.*'epsilon'"),
    (lambda: UniPCMultistepScheduler(prediction_type="flow_prediction"), "timesteps are not 1000"),
    (lambda: DEISMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True), "to 0 "),
], ids=["ddpm", "euler-eps", "unipc-eps", "unipc-no-flow-sigmas", "deis-final-sigma"])
def test_wrong_family_refused_before_work(tiny_pipe, scheduler, match):
    pipe = _with_scheduler(tiny_pipe, scheduler())
    with _no_forward(pipe), pytest.raises(ValueError, match=match):
        pipe(num_frames=2, generator=gen(), **FAST)
    with pytest.raises(ValueError, match="cannot drive"):
        check_scheduler(pipe.scheduler)


# ---------------------------------------------------------------------------------------- latents
def _drawn_noise(seed, num_frames, chunk):
    """The noise a call with ``gen(seed)`` and a given trajectory draws, chunk after chunk."""
    g = gen(seed)
    return torch.cat([randn_tensor((1, min(chunk, num_frames - s), 3, 64, 64), generator=g, dtype=torch.float32)
                      for s in range(0, num_frames, chunk)], dim=1)


def test_latent_output_is_what_the_frames_come_from(tiny_pipe):
    kw = dict(num_frames=6, generator=gen(), **FAST)
    latent = tiny_pipe(output_type="latent", **kw).frames
    pt = tiny_pipe(output_type="pt", **kw).frames
    assert latent.shape == (1, 6, 3, 64, 64) and latent.dtype == tiny_pipe.transformer.dtype
    assert torch.equal((latent.float() / 2 + 0.5).clamp(0, 1), pt)


def test_latents_replace_the_drawn_noise(tiny_pipe):
    kw = dict(num_frames=7, trajectory_seed=3, output_type="pt", **FAST)
    plain = tiny_pipe(generator=gen(5), **kw)
    noise = _drawn_noise(5, 7, 4)
    given = tiny_pipe(generator=gen(11), latents=noise, **kw)  # every chunk's noise given: the generator draws none
    assert torch.equal(given.frames, plain.frames)
    assert torch.equal(given.state.generator.get_state(), gen(11).get_state())
    first = tiny_pipe(generator=gen(5), latents=noise[:, :4], **kw)  # first chunk given; the second draws first
    assert torch.equal(first.frames[:, :4], plain.frames[:, :4])
    assert not torch.equal(first.frames[:, 4:], plain.frames[:, 4:])
    other = tiny_pipe(generator=gen(5), latents=torch.zeros(1, 4, 3, 64, 64), **kw)
    assert not torch.equal(other.frames[:, :4], plain.frames[:, :4])


@pytest.mark.parametrize("latents,match", [
    (torch.zeros(1, 4, 3, 32, 64), r"latents must have shape .* = \(1, n, 3, 64, 64\)"),
    (torch.zeros(2, 4, 3, 64, 64), "batch sizes disagree: generator 1, latents 2"),
    (torch.zeros(1, 3, 3, 64, 64), "multiple of chunk_frames"),
    (torch.zeros(1, 12, 3, 64, 64), "multiple of chunk_frames"),
    (torch.zeros(4, 3, 64, 64), "latents must be a tensor"),
    (torch.full((1, 4, 3, 64, 64), float("nan")), "NaN"),
], ids=["size", "batch", "part-chunk", "too-long", "ndim", "nan"])
def test_bad_latents_refused_before_work(tiny_pipe, latents, match):
    with _no_forward(tiny_pipe), pytest.raises(ValueError, match=match):
        tiny_pipe(num_frames=8, generator=[gen()], latents=latents, **FAST)


# ---------------------------------------------------------------------------------------- batches
def test_generator_list_gives_each_clip_its_single_run(tiny_pipe):
    kw = dict(num_frames=6, output_type="pt", **FAST)
    batch = tiny_pipe(generator=[gen(1), gen(2)], **kw)
    assert batch.frames.shape == (2, 6, 3, 64, 64) and batch.poses.shape == (2, 6, 2) and batch.actions.shape == (2, 6)
    assert isinstance(batch.state, list) and [s.frame_index for s in batch.state] == [6, 6]
    for b, seed in enumerate((1, 2)):
        one = tiny_pipe(generator=gen(seed), **kw)
        assert torch.equal(batch.frames[b : b + 1], one.frames)
        np.testing.assert_array_equal(batch.poses[b], one.poses)
    # the states continue each clip as a list
    more = tiny_pipe(state=batch.state, **kw)
    assert more.frames.shape[0] == 2 and [s.frame_index for s in more.state] == [12, 12]


def test_one_generator_serves_the_clips_in_turn(tiny_pipe):
    kw = dict(num_frames=5, output_type="pt", **FAST)
    batch = tiny_pipe(generator=gen(4), num_videos_per_prompt=2, **kw)
    first = tiny_pipe(generator=gen(4), **kw)
    second = tiny_pipe(generator=first.state.generator, **kw)  # where the first clip stopped drawing
    assert torch.equal(batch.frames, torch.cat([first.frames, second.frames]))
    assert not torch.equal(first.frames, second.frames)


def test_latents_batch_and_callback_step_over_clips(tiny_pipe):
    seen = []

    def record(pipe, step, t, kwargs):
        seen.append((pipe.clip_index, pipe.chunk_index, step, pipe.num_timesteps))
        return kwargs

    noise = torch.cat([_drawn_noise(1, 8, 4), _drawn_noise(2, 8, 4)])
    out = tiny_pipe(num_frames=8, latents=noise, trajectory_seed=0, callback_on_step_end=record, output_type="pt",
                    num_inference_steps=2, chunk_frames=4, window_frames=8)
    assert [s[2] for s in seen] == list(range(8)) and {s[3] for s in seen} == {8}
    assert [(s[0], s[1]) for s in seen] == [(0, 0), (0, 0), (0, 1), (0, 1), (1, 0), (1, 0), (1, 1), (1, 1)]
    single = tiny_pipe(num_frames=8, generator=gen(2), trajectory_seed=0, output_type="pt", num_inference_steps=2,
                       chunk_frames=4, window_frames=8)
    assert torch.equal(out.frames[1:], single.frames)


def test_stopped_batch_keeps_the_finished_frames(tiny_pipe):
    def stop(pipe, step, t, kwargs):
        if pipe.clip_index == 1 and pipe.chunk_index == 1:
            pipe._interrupt = True
        return kwargs

    out = tiny_pipe(num_frames=8, generator=[gen(1), gen(2), gen(3)], callback_on_step_end=stop, **FAST)
    assert out.frames.shape[:2] == (2, 4) and [s.frame_index for s in out.state] == [8, 4]


@pytest.mark.parametrize("kwargs,match", [
    (dict(generator=[gen(1), gen(2)], num_videos_per_prompt=3), "batch sizes disagree: num_videos_per_prompt 3, generator 2"),
    (dict(num_videos_per_prompt=0), "num_videos_per_prompt must be a positive int"),
    (dict(generator=[]), "empty batch"),
    (dict(generator=[gen(1), 5]), r"generator\[1\] must be a torch.Generator"),
    (dict(state="clip.state.pt"), r"state\[0\] must be a VidHashState or None, got str"),
    (dict(state=[None, "clip.state.pt"]), r"state\[1\] must be a VidHashState or None, got str"),
], ids=["sizes", "zero", "empty", "not-a-generator", "state-path", "state-list-path"])
def test_bad_batches_refused_before_work(tiny_pipe, kwargs, match):
    with _no_forward(tiny_pipe), pytest.raises((ValueError, TypeError), match=match):
        tiny_pipe(num_frames=4, **FAST, **kwargs)


def test_stream_refuses_a_state_that_is_not_one(tiny_pipe):
    with _no_forward(tiny_pipe), pytest.raises(TypeError, match="state must be a VidHashState or None, got str"):
        next(tiny_pipe.stream(num_frames=4, state="clip.state.pt", **FAST))


def test_batch_of_states_checked_before_work(tiny_pipe):
    state = tiny_pipe(num_frames=4, generator=gen(), **FAST).state
    other = tiny_pipe(num_frames=4, generator=gen(), **{**FAST, "window_frames": 12}).state
    with _no_forward(tiny_pipe):
        with pytest.raises(ValueError, match="one state continues one clip"):
            tiny_pipe(num_frames=4, state=state, num_videos_per_prompt=2, **FAST)
        with pytest.raises(ValueError, match=r"state\[1\] is state\[0\]"):
            tiny_pipe(num_frames=4, state=[state, state], **FAST)
        with pytest.raises(ValueError, match=r"state\[1\] was made for another generation config.*window_frames"):
            tiny_pipe(num_frames=4, state=[state, other], **FAST)
        with pytest.raises(ValueError, match="stream generates one clip"):
            next(tiny_pipe.stream(num_frames=4, generator=[gen(1), gen(2)], **FAST))


# ---------------------------------------------------------------------------------------- frame prompts
def _context(n=5, size=64, seed=1):
    return torch.rand(n, 3, size, size, generator=gen(seed))


def _poses(n, start=(100.0, 200.0)):
    return np.array([[start[0] + 4 * i, start[1]] for i in range(n)])


def test_context_of_another_size_is_resized(tiny_pipe):
    """Larger frames are averaged over areas (2× nearest-upsampled frames come back exactly);
    smaller ones are bilinear (antialiased); any size is accepted."""
    kw = dict(num_frames=4, poses=_poses(4, (120.0, 200.0)), generator=gen(), output_type="pt", **FAST)
    small, poses = _context(), _poses(5)
    ref = tiny_pipe(context_frames=small, context_poses=poses, **kw).frames
    big = small.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # 128×128
    assert torch.equal(tiny_pipe(context_frames=big, context_poses=poses, **kw).frames, ref)
    tiny = _context(size=32)
    up = F.interpolate(tiny, size=(64, 64), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
    assert torch.equal(tiny_pipe(context_frames=tiny, context_poses=poses, **kw).frames,
                       tiny_pipe(context_frames=up, context_poses=poses, **kw).frames)
    odd = np.random.default_rng(0).integers(0, 256, (5, 48, 80, 3), dtype=np.uint8)  # numpy, other aspect
    assert tiny_pipe(context_frames=odd, context_poses=poses, **kw).frames.shape == (1, 4, 3, 64, 64)


def test_resize_frames_rules():
    x = _context(2, 16)
    assert resize_frames(x, 16, 16) is x
    assert torch.allclose(resize_frames(x, 8, 8), F.avg_pool2d(x, 2))  # area = block mean
    wide = resize_frames(x, 8, 32)  # one side grows: bilinear
    assert torch.equal(wide, F.interpolate(x, size=(8, 32), mode="bilinear", align_corners=False,
                                           antialias=True).clamp(0, 1))
    assert wide.min() >= 0 and wide.max() <= 1
