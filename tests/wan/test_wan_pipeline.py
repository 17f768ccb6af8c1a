"""WanMiniPipeline and its conditioning: inputs, the x̂0 → velocity conversion, outputs, save/load."""
from dataclasses import asdict

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, WanTransformer3DModel

from vidhash.data.world import ACTIONS
from vidhash.pipelines.pipeline_wan_mini import WanMiniConditioning, WanMiniPipeline
from vidhash.training.families import build_model


def make_pipe(cfg, randomize=True):
    model = build_model(cfg)
    if randomize:  # Wan's init zeroes the output projection: give the untrained model an output
        torch.nn.init.normal_(model.proj_out.weight, std=0.2, generator=torch.Generator().manual_seed(1))
    pipe = WanMiniPipeline(model, FlowMatchEulerDiscreteScheduler(shift=3.0), channels=3, **asdict(cfg.condition))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(pipe, **kw):
    args = dict(num_frames=8, height=32, width=32, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    return pipe(**{**args, **kw}).frames


def test_conditioning_layout():
    c = WanMiniConditioning(time_freqs=4)
    assert c.in_channels == 3 + 4 + 6 and c.text_dim == 6 + 8 and c.null_action() == len(ACTIONS)
    b, f, h, w = 2, 5, 4, 4
    x = torch.randn(b, 3, f, h, w)
    ctx = torch.randn(b, 3, f, h, w)
    mask = torch.tensor([[1, 1, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    actions = torch.tensor([[0, 1, 2, 3, 4], [5, 5, 5, 5, 5]])
    inp = c.model_input(x, actions, ctx, mask)
    assert inp.shape == (b, 13, f, h, w)
    assert torch.equal(inp[:, :3], x)
    assert torch.equal(inp[0, 3:6, :2], ctx[0, :, :2]) and torch.all(inp[0, 3:6, 2:] == 0) and torch.all(inp[1, 3:6] == 0)
    assert torch.equal(inp[:, 6, :, 0, 0], mask.float())
    assert torch.equal(inp[:, 7:, :, 0, 0].argmax(1), actions)
    tok = c.action_tokens(actions)
    assert tok.shape == (b, f, 14) and torch.equal(tok[..., :6].argmax(-1), actions)
    assert torch.equal(tok[0, :, 6:], tok[1, :, 6:]) and len({tuple(t.tolist()) for t in tok[0, :, 6:]}) == f


@pytest.mark.parametrize("prediction", ["sample", "velocity"])
def test_velocity_of_the_true_output_is_the_target(prediction):
    c = WanMiniConditioning(prediction=prediction)
    x0, noise = torch.randn(3, 3, 2, 4, 4), torch.randn(3, 3, 2, 4, 4)
    sigma = torch.tensor([0.9, 0.3, 0.02])
    x_t = (1 - sigma.view(-1, 1, 1, 1, 1)) * x0 + sigma.view(-1, 1, 1, 1, 1) * noise
    perfect = x0 if prediction == "sample" else noise - x0
    target = c.velocity_target(x_t, x0, noise, sigma)
    assert torch.allclose(c.velocity(perfect, x_t, sigma), target, atol=1e-5)
    # above sigma_min both parametrisations target the flow velocity noise − x0
    assert torch.allclose(target[:2], (noise - x0)[:2], atol=1e-5)


def test_outputs_determinism_and_types(tiny_cfg):
    pipe = make_pipe(tiny_cfg())
    a = run(pipe, actions=["right"] * 8)
    assert a.shape == (1, 8, 32, 32, 3) and a.dtype == np.float32 and 0 <= a.min() and a.max() <= 1
    assert np.array_equal(a, run(pipe, actions=[4] * 8))  # names and ids
    assert not np.array_equal(a, run(pipe, actions=["left"] * 8))  # actions reach the model
    pt = run(pipe, actions=["right"] * 8, output_type="pt")
    assert pt.shape == (1, 8, 3, 32, 32) and np.allclose(pt.permute(0, 1, 3, 4, 2).numpy(), a)
    lat = run(pipe, actions=["right"] * 8, output_type="latent")
    assert lat.shape == (1, 3, 8, 32, 32)
    assert run(pipe, batch_size=2).shape[0] == 2 and run(pipe, actions=np.zeros((3, 8), int)).shape[0] == 3


def test_context_frames_are_pasted_and_condition_the_rest(tiny_cfg):
    pipe = make_pipe(tiny_cfg())
    ctx = (np.random.default_rng(0).random((2, 32, 32, 3)) * 255).astype(np.uint8)
    out = run(pipe, context_frames=ctx)
    assert np.allclose(out[0, :2], ctx / 255.0, atol=1e-6)
    assert not np.allclose(out[0, 2:], run(pipe)[0, 2:])
    torch_ctx = torch.from_numpy(ctx).permute(0, 3, 1, 2).float() / 127.5 - 1  # (k, 3, h, w) in [-1, 1]
    assert np.allclose(run(pipe, context_frames=torch_ctx), out, atol=1e-5)


@pytest.mark.parametrize("kw, match", [
    (dict(actions=["fly"] * 8), "unknown name"),
    (dict(actions=[0] * 7), "actions must be"),
    (dict(actions=[9] * 8), "ids in 0..5"),
    (dict(actions=torch.full((8,), 0.7)), "integer ids, got 0.7"),  # was cut to 0, silently
    (dict(actions=[1.5] * 8), "integer ids, got 1.5"),
    (dict(actions=[True] * 8), "names or integer ids, got dtype bool"),
    (dict(context_frames=np.zeros((9, 32, 32, 3), np.uint8)), "context_frames"),
    (dict(context_frames=np.zeros((1, 16, 16, 3), np.uint8)), "context_frames"),
    (dict(output_type="gif"), "output_type"),
    (dict(callback_on_step_end=3), "callback_on_step_end must be callable"),
    (dict(callback_on_step_end=lambda *a: {}, callback_on_step_end_tensor_inputs=["noise"]), r"\['noise'\] not in"),
    (dict(height=30), "patch size"),
    (dict(num_inference_steps=0), "num_inference_steps"),
    (dict(num_inference_steps=1.5), "num_inference_steps must be a positive int, got 1.5"),
    (dict(num_frames=None), "num_frames must be a positive int, got None"),
    (dict(batch_size=0), "batch_size must be a positive int"),
    (dict(batch_size=2.0), "batch_size must be a positive int"),
    (dict(generator=[torch.Generator(), torch.Generator()]), "2 generators for a batch of 1"),
    (dict(context_frames=np.full((2, 32, 32, 3), 2.0)), r"must lie in \[0, 1\]"),
    (dict(context_frames=np.full((2, 32, 32, 3), 200)), "uint8 or float"),
    (dict(context_frames=np.full((2, 32, 32, 3), np.nan, np.float32)), "NaN"),
    (dict(context_frames=torch.full((2, 3, 32, 32), 3.0)), r"must lie in \[-1, 1\]"),
    (dict(latents=torch.full((1, 3, 8, 32, 32), float("nan"))), "NaN"),
])
def test_input_errors(tiny_cfg, kw, match):
    pipe = make_pipe(tiny_cfg(), randomize=False)
    with pytest.raises(ValueError, match=match):
        run(pipe, **kw)


def test_actions_by_name_per_clip(tiny_cfg):
    """(batch, num_frames) action names, as the docstring allows, equal the same ids."""
    pipe = make_pipe(tiny_cfg())
    names = run(pipe, actions=[["right"] * 8, ["up"] * 8])
    assert names.shape[0] == 2 and np.array_equal(names, run(pipe, actions=[[4] * 8, [1] * 8]))


def test_pil_frames_are_the_np_frames(tiny_cfg):
    """output_type="pil": a list (clips) of lists (frames) of RGB images, the np frames rounded to uint8."""
    pipe = make_pipe(tiny_cfg())
    arr = run(pipe, batch_size=2)
    pil = run(pipe, batch_size=2, output_type="pil")
    assert len(pil) == 2 and all(len(clip) == 8 for clip in pil) and pil[0][0].mode == "RGB"
    assert pil[1][3].size == (32, 32) and np.array_equal(np.asarray(pil[1][3]), (arr[1, 3] * 255).round().astype(np.uint8))


def test_callback_on_step_end_sees_and_replaces_the_latents(tiny_cfg):
    """diffusers' step callback: called once a step with the clip after it; a returned "latents" is used;
    pipe._interrupt = True skips the remaining steps (as diffusers' pipelines do)."""
    from diffusers.callbacks import PipelineCallback

    pipe = make_pipe(tiny_cfg())
    seen = []

    def record(p, i, t, kw):
        seen.append((i, float(t), tuple(kw["latents"].shape)))
        return {}

    plain = run(pipe, num_inference_steps=3, callback_on_step_end=record)
    assert [s[0] for s in seen] == [0, 1, 2] and seen[0][2] == (1, 3, 8, 32, 32) and seen[0][1] > seen[2][1]
    assert pipe.num_timesteps == 3
    assert np.array_equal(plain, run(pipe, num_inference_steps=3))  # a callback returning nothing changes nothing
    grey = run(pipe, num_inference_steps=3, callback_on_step_end=lambda p, i, t, kw: {"latents": kw["latents"] * 0})
    assert np.allclose(grey, 0.5)  # the last step's latents replaced by zeros: mid grey
    steps = []

    def stop_after_first(p, i, t, kw):
        steps.append(i)
        p._interrupt = True
        return {}

    run(pipe, num_inference_steps=3, callback_on_step_end=stop_after_first)
    assert steps == [0] and pipe.interrupt

    class Zero(PipelineCallback):
        tensor_inputs = ["latents"]

        def callback_fn(self, p, i, t, kw):
            return {"latents": kw["latents"] * 0}

    assert np.allclose(run(pipe, num_inference_steps=3, callback_on_step_end=Zero(cutoff_step_ratio=1.0)), 0.5)


def test_whole_float_action_ids_are_ids(tiny_cfg):
    """Float tensors or lists of whole numbers (e.g. a model's argmax kept as float) are the same ids."""
    pipe = make_pipe(tiny_cfg())
    ids = run(pipe, actions=[4] * 8)
    assert np.array_equal(ids, run(pipe, actions=torch.full((8,), 4.0))) and np.array_equal(ids, run(pipe, actions=[4.0] * 8))


@pytest.mark.parametrize("actions, match", [
    ([[4] * 8, [1] * 4], "every row of one length"),  # ragged rows: numpy's own error from np.ndim before
    ([["right"] * 8, ["up"] * 4], "every row of one length"),
    (np.array([0] * 7 + [2**64 - 1], np.uint64), r"ids in 0\.\.5 .*got 0\.\.18446744073709551615"),  # was "got -1..0"
    (np.array([0] * 7 + [1e30]), r"ids in 0\.\.5 .*got 0\.\.1e\+30"),  # was the wrapped int64 minimum
    (np.array([None] * 8, dtype=object), "names or integer ids, got None"),
])
def test_action_input_errors_name_what_was_given(tiny_cfg, actions, match):
    pipe = make_pipe(tiny_cfg(), randomize=False)
    with pytest.raises(ValueError, match=match):
        run(pipe, actions=actions, num_inference_steps=1)


def test_action_ids_in_any_container_are_the_same_ids(tiny_cfg):
    """Object arrays of ints (were "unknown name 4"), names mixed with ids, lists of bf16 tensors (were
    numpy's TypeError), int8 / uint64 arrays: the same ids as a list of ints."""
    from vidhash.pipelines.pipeline_wan_mini import _action_ids

    want = np.array([4, 4, 1, 1, 0, 5, 2, 3])
    for given in (np.array(want.tolist(), dtype=object), ["right", "right", 1, "up", 0, 5, "down", 3],
                  [torch.tensor(float(a), dtype=torch.bfloat16) for a in want], want.astype(np.int8),
                  want.astype(np.uint64), torch.tensor(want, dtype=torch.float16), np.array(want.astype(float).tolist(), object)):
        ids = _action_ids(given, 5)
        assert ids.dtype == np.int64 and np.array_equal(ids, want), given
    pipe = make_pipe(tiny_cfg())
    assert np.array_equal(run(pipe, actions=np.array(want.tolist(), dtype=object), num_inference_steps=1),
                          run(pipe, actions=want.tolist(), num_inference_steps=1))


def test_transformer_must_fit_the_conditioning(tiny_cfg):
    cfg = tiny_cfg()
    with pytest.raises(ValueError, match="does not fit the conditioning"):
        WanMiniPipeline(build_model(cfg), FlowMatchEulerDiscreteScheduler(), time_freqs=cfg.condition.time_freqs + 1)


def test_save_and_load(tiny_cfg, tmp_path):
    pipe = make_pipe(tiny_cfg(), randomize=True)
    pipe.save_pretrained(str(tmp_path / "p"))
    again = WanMiniPipeline.from_pretrained(str(tmp_path / "p"))
    again.set_progress_bar_config(disable=True)
    assert again.conditioning == pipe.conditioning
    assert np.allclose(run(again, actions=["up"] * 8), run(pipe, actions=["up"] * 8), atol=1e-5)
    model = WanTransformer3DModel.from_pretrained(str(tmp_path / "p" / "transformer"))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), pipe.transformer.state_dict().values()))


def test_the_diffusers_drop_in_runs_on_wan_mini(tiny_cfg):
    """The drop-in study's code path: vidhash's hash attention swapped into the model's self-attention."""
    import vidhash

    pipe = make_pipe(tiny_cfg())
    dense = run(pipe, actions=["up"] * 8)
    vidhash.enable_hash_attention(pipe.transformer, density=1.0, block_size=16)
    assert np.allclose(run(pipe, actions=["up"] * 8), dense, atol=2e-3)
    vidhash.enable_hash_attention(pipe.transformer, density=0.25, block_size=16, query_block_size=16)
    sparse = run(pipe, actions=["up"] * 8)
    vidhash.disable_hash_attention(pipe.transformer)
    assert sparse.shape == dense.shape and not np.array_equal(sparse, dense)
    assert np.array_equal(run(pipe, actions=["up"] * 8), dense)
