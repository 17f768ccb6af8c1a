"""Host-cheap generation paths: per-chunk frame inputs, no device syncs per pass, compiled blocks."""
import collections

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from vidhash.models import random_model
from vidhash.pipelines import VidHashPipeline

from diffusers.schedulers import FlowMatchEulerDiscreteScheduler

SYNCS = ("_local_scalar_dense", "nonzero", "masked_select")  # .item()/bool()/int(), data-dependent shapes


def _pipe(rope=True, seed=0, **overrides):
    return VidHashPipeline(random_model("tiny", seed=seed, rope=rope, **overrides),
                           FlowMatchEulerDiscreteScheduler()).to("cpu")


def _kwargs(memory):
    return dict(height=32, width=32, chunk_frames=4, window_frames=8, num_inference_steps=2, output_type="pt",
                memory=memory, actions=["right", "up", "left", "down"] * 5)


MEMORIES = {
    "fifo": dict(mode="hashed", num_buckets=8, slots=8, top_k=8),  # selective read
    "merge": dict(mode="hashed", policy="merge", num_buckets=8, slots=4, top_k=64),  # dense read (top_k ≥ capacity)
    # the same read weighing as at most 64 keys (the memory reaches 192 tokens in a 20-frame clip)
    "merge_cap": dict(mode="hashed", policy="merge", num_buckets=8, slots=4, top_k=64, mass_cap=64),
    "window": dict(mode="window"),
}


class _Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("rope", [False, True])
def test_frame_inputs_reused_equal_recomputed(rope):
    model = random_model("tiny", seed=1, rope=rope)
    x = torch.randn(1, 3, 3, 32, 32)
    t = torch.full((1, 3), 500.0)
    act, pos = torch.tensor([[0, 1, 2]]), torch.tensor([[[3.0, 4.0], [7.0, 4.0], [7.0, 8.0]]])
    fi = model.frame_inputs(act, pos, 1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x, t, act, pos).sample, model(x, t, act, pos, frame_inputs=fi).sample)
        assert torch.equal(model(x, t).sample, model(x, t, frame_inputs=model.frame_inputs(None, None, 1, 3, 32, 32)).sample)
        with pytest.raises(ValueError, match="frame_inputs were built for"):
            model(x[:, :2], t[:, :2], act[:, :2], pos[:, :2], frame_inputs=fi)


def test_no_device_sync_per_pass():
    """Window generation with given actions: nothing in the denoising loop asks the device for a
    value (on CUDA each would stall the launch queue)."""
    pipe = _pipe()
    pipe.set_progress_bar_config(disable=True)
    with _Ops() as mode:
        pipe(num_frames=20, generator=torch.Generator().manual_seed(0), **_kwargs(MEMORIES["window"]))
    assert {k: v for k, v in mode.ops.items() if k in SYNCS} == {}


class _RebuiltEveryChunk(FlowMatchEulerDiscreteScheduler):
    """FlowMatchEuler under another class: the pipeline rebuilds its schedule at every chunk."""


def _counting(obj, name):
    """Count calls of ``obj.name`` (an instance attribute wrapping the bound method)."""
    calls, method = [0], getattr(obj, name)

    def counted(*a, **k):
        calls[0] += 1
        return method(*a, **k)

    setattr(obj, name, counted)
    return calls


def test_flow_euler_schedule_built_once_a_call_frames_unchanged():
    """FlowMatchEuler's schedule is built once a call (``set_timesteps``: numpy, two host-to-device
    copies, each a synchronize) and only its step index reset per chunk; the frames are bitwise
    those of a rebuild at every chunk (the same class under another name takes that path)."""
    model = random_model("tiny", seed=0)
    kw = _kwargs(MEMORIES["merge"])
    frames, builds = {}, {}
    for name, sched in (("once", FlowMatchEulerDiscreteScheduler(shift=3.0)), ("rebuilt", _RebuiltEveryChunk(shift=3.0))):
        pipe = VidHashPipeline(model, sched)
        pipe.set_progress_bar_config(disable=True)
        builds[name] = _counting(pipe.scheduler, "set_timesteps")
        frames[name] = pipe(num_frames=20, generator=torch.Generator().manual_seed(0), **kw).frames
    # before the chunks: the call's checks and _begin; then the rebuilt one again at each of the 5 chunks
    assert builds["rebuilt"][0] == builds["once"][0] + 5 and builds["once"][0] <= 2, builds
    assert torch.equal(frames["once"], frames["rebuilt"])


def test_stateful_scheduler_rebuilt_every_chunk():
    """A multistep scheduler keeps outputs between steps: its schedule (and state) is rebuilt per chunk."""
    from diffusers.schedulers import UniPCMultistepScheduler

    pipe = VidHashPipeline(random_model("tiny", seed=0),
                           UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True))
    pipe.set_progress_bar_config(disable=True)
    builds = _counting(pipe.scheduler, "set_timesteps")
    kw = _kwargs(MEMORIES["window"])
    pipe(num_frames=4, generator=torch.Generator().manual_seed(0), **{**kw, "actions": kw["actions"][:4]})
    one = builds[0]
    pipe(num_frames=12, generator=torch.Generator().manual_seed(0), **{**kw, "actions": kw["actions"][:12]})
    assert builds[0] - one == one + 2, (one, builds)  # two chunks more than the 1-chunk call


def test_parameters_walked_per_call_not_per_chunk():
    """The transformer's device, dtype and (with graphs) parameter addresses are looked up once a call:
    diffusers' ``.device`` / ``.dtype`` walk every module, host time between chunks while a GPU waits.
    A 5-chunk call walks the parameters as often as a 2-chunk one."""
    pipe = _pipe()
    pipe.set_progress_bar_config(disable=True)
    pipe.enable_cuda_graphs(emulate=True)
    walks = _counting(pipe.transformer, "parameters")
    counts = []
    kw = _kwargs(MEMORIES["fifo"])
    for frames in (8, 20):
        walks[0] = 0
        pipe(num_frames=frames, generator=torch.Generator().manual_seed(0), **{**kw, "actions": kw["actions"][:frames]})
        counts.append(walks[0])
    assert counts[0] == counts[1] > 0, counts


@pytest.mark.parametrize("memory", list(MEMORIES))
def test_compiled_blocks_match_eager(memory):
    """aot_eager (CPU, fast): compiled and eager give the same frames over window fill, memory
    writes and reads; a second clip (new state, new memories) compiles nothing new."""
    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    pipe = _pipe()
    pipe.set_progress_bar_config(disable=True)
    kw = _kwargs(MEMORIES[memory])
    eager = pipe(num_frames=20, generator=torch.Generator().manual_seed(0), **kw).frames
    assert not pipe.compiled
    pipe.compile_blocks(backend="aot_eager")
    assert pipe.compiled
    compiled = pipe(num_frames=20, generator=torch.Generator().manual_seed(0), **kw).frames
    torch.testing.assert_close(compiled, eager, rtol=0, atol=1e-6)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert 0 < graphs <= 8  # no window, partial window, full window; before/after the memory read
    again = pipe(num_frames=20, generator=torch.Generator().manual_seed(1), **kw).frames
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs
    assert not torch.equal(again, compiled)
    torch._dynamo.reset()


@pytest.mark.gpu
@pytest.mark.parametrize("memory", ["fifo", "merge", "window"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_blocks_match_eager_cuda(memory, dtype):
    """Inductor on the GPU: compiled frames match eager ones (kernels fused: not bitwise)."""
    import torch._dynamo

    torch._dynamo.reset()
    pipe = _pipe().to("cuda")
    pipe.transformer.to(dtype)
    pipe.set_progress_bar_config(disable=True)
    kw = {**_kwargs(MEMORIES[memory]), "height": 64, "width": 64}
    eager = pipe(num_frames=20, generator=torch.Generator().manual_seed(0), **kw).frames
    pipe.compile_blocks()
    compiled = pipe(num_frames=20, generator=torch.Generator().manual_seed(0), **kw).frames
    tol = 2e-3 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(compiled, eager, rtol=0, atol=tol)
    torch._dynamo.reset()


def test_host_chunk_start_script(capsys):
    """scripts/host_chunk_start.py times the host's work before a chunk's first pass and leaves the
    classes it patched as they were."""
    import importlib.util
    from pathlib import Path

    from vidhash.memory import HashedMemory
    from vidhash.pipelines.cuda_graphs import PassGraphs, _Emulated

    script = Path(__file__).resolve().parents[2] / "scripts" / "host_chunk_start.py"
    spec = importlib.util.spec_from_file_location("host_chunk_start", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    before = (PassGraphs._run, _Emulated.replay, HashedMemory.write)
    assert mod.main(["--chunks", "3"]) == 0
    assert (PassGraphs._run, _Emulated.replay, HashedMemory.write) == before
    out = capsys.readouterr().out
    assert "host time from a chunk's request to its first pass, 3 chunks" in out and "median" in out
    for bad in (["--chunks", "0"], ["--model", "no/such/folder"]):
        with pytest.raises(SystemExit):
            mod.main(bad)
