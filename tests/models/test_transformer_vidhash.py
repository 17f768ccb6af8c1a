"""VidHashTransformer3DModel: shapes, exactness of window/memory context, save/load, errors."""
import pytest
import torch

from vidhash.memory import HashedMemory, MemoryRead
from vidhash.models import TemporalContext, VidHashTransformer3DModel, random_model


@pytest.fixture(scope="module", params=[False, True], ids=["abs-pos", "rope"])
def model(request):
    return random_model("tiny", seed=0, rope=request.param)


def _inputs(b=1, f=4, h=64, w=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, f, 3, h, w, generator=g)
    t = torch.rand(b, f, generator=g) * 1000
    actions = torch.randint(0, 6, (b, f), generator=g)
    poses = torch.rand(b, f, 2, generator=g) * 1024
    return x, t, actions, poses


def test_tiny_preset_size(model):
    assert 0.5e6 < model.num_parameters() < 2e6
    assert model.num_parameters() == random_model("tiny").num_parameters()  # rope adds no weights
    assert model.config.patch_size == 8 and model.tokens_per_frame(64, 64) == 64


@pytest.mark.parametrize("b,f,h,w", [(1, 4, 64, 64), (2, 3, 48, 80), (1, 1, 8, 8)], ids=["B1-F4-64", "B2-F3-48x80", "B1-F1-8"])
def test_shapes(model, b, f, h, w):
    x, t, a, p = _inputs(b, f, h, w)
    out = model(x, t, a, p, return_kv=True)
    assert out.sample.shape == (b, f, 3, h, w)
    n = (h // 8) * (w // 8)
    assert len(out.kv) == 3 and out.kv[0][0].shape == (b, 4, f * n, 32)
    assert model(x, t).sample.shape == x.shape  # no actions, no poses


def test_zero_init_then_randomized():
    fresh = VidHashTransformer3DModel(hidden_dim=32, num_heads=2, num_layers=1)
    x, t, a, p = _inputs()
    assert fresh(x, t, a, p).sample.abs().max() == 0  # adaLN-Zero / zero output layer (DiT init)
    assert fresh.randomize_(0)(x, t, a, p).sample.abs().max() > 0


def test_conditioning_matters(model):
    x, t, a, p = _inputs()
    base = model(x, t, a, p).sample
    assert not torch.allclose(base, model(x, t.flip(-1), a, p).sample)
    assert not torch.allclose(base, model(x, t, (a + 1) % 5, p).sample)
    assert not torch.allclose(base, model(x, t, a, p + 64).sample)


@torch.no_grad()
def test_chunked_with_window_equals_chunk_causal_pass(model):
    x, _, a, p = _inputs(f=12)
    t = torch.zeros(1, 12)
    full = model(x, t, a, p, causal_frames=4).sample
    kvs, outs = [], []
    for i in range(3):
        s = slice(4 * i, 4 * i + 4)
        ctx = None if i == 0 else [
            TemporalContext(k=torch.cat([kv[l][0] for kv in kvs], 2), v=torch.cat([kv[l][1] for kv in kvs], 2))
            for l in range(3)
        ]
        o = model(x[:, s], t[:, s], a[:, s], p[:, s], context=ctx, return_kv=True)
        kvs.append(o.kv)
        outs.append(o.sample)
    torch.testing.assert_close(torch.cat(outs, 1), full, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_window_plus_big_memory_equals_full_context(model):
    """Frames 0-3 in a memory that holds them all (top_k ≥ entries) + frames 4-7 in the window
    == frames 0-7 all in the window (exact attention over the whole history)."""
    x, _, a, p = _inputs(f=12)
    t = torch.zeros(1, 12)
    kv_a = model(x[:, :4], t[:, :4], a[:, :4], p[:, :4], return_kv=True).kv
    ctx_a = [TemporalContext(k=kv_a[l][0], v=kv_a[l][1]) for l in range(3)]
    kv_b = model(x[:, 4:8], t[:, 4:8], a[:, 4:8], p[:, 4:8], context=ctx_a, return_kv=True).kv
    full_ctx = [TemporalContext(k=torch.cat([kv_a[l][0], kv_b[l][0]], 2), v=torch.cat([kv_a[l][1], kv_b[l][1]], 2))
                for l in range(3)]
    reference = model(x[:, 8:], t[:, 8:], a[:, 8:], p[:, 8:], context=full_ctx).sample
    mems = []
    for l in range(3):
        mem = HashedMemory(1, 256, heads=4, head_dim=32, seed=l)  # capacity 256: every token fits
        mem.write(kv_a[l][0], kv_a[l][1], 0)
        mems.append(mem)
    ctx = [TemporalContext(k=kv_b[l][0], v=kv_b[l][1], memory=mems[l], read=MemoryRead(256)) for l in range(3)]
    torch.testing.assert_close(model(x[:, 8:], t[:, 8:], a[:, 8:], p[:, 8:], context=ctx).sample, reference,
                               rtol=1e-5, atol=1e-5)
    # and a memory read with few keys is an approximation, not the same thing
    ctx_small = [TemporalContext(k=kv_b[l][0], v=kv_b[l][1], memory=mems[l], read=MemoryRead(4)) for l in range(3)]
    assert not torch.allclose(model(x[:, 8:], t[:, 8:], a[:, 8:], p[:, 8:], context=ctx_small).sample, reference)


def test_save_and_load_pretrained(model, tmp_path):
    model.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").exists()
    loaded = VidHashTransformer3DModel.from_pretrained(tmp_path)
    x, t, a, p = _inputs()
    with torch.no_grad():
        assert torch.equal(loaded(x, t, a, p).sample, model(x, t, a, p).sample)


def test_backward_and_gradient_checkpointing():
    m = random_model("tiny", seed=1, num_layers=2).train()
    x, t, a, p = _inputs(f=4)
    m(x, t, a, p, causal_frames=2).sample.square().mean().backward()
    grads = {n: q.grad.clone() for n, q in m.named_parameters() if q.grad is not None}
    assert len(grads) == sum(1 for _ in m.parameters())
    m.zero_grad()
    m.enable_gradient_checkpointing()
    m(x, t, a, p, causal_frames=2).sample.square().mean().backward()
    for n, q in m.named_parameters():
        torch.testing.assert_close(q.grad, grads[n], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("call,match", [
    (lambda m: m(torch.zeros(1, 2, 3, 60, 64), torch.zeros(1, 2)), "divisible by the patch size 8"),
    (lambda m: m(torch.zeros(1, 2, 3, 64, 64), torch.zeros(1, 3)), r"timestep must be \(batch, frames\)"),
    (lambda m: m(torch.zeros(1, 2, 3, 64, 64), torch.zeros(1, 2), context=[TemporalContext()]), "one entry per layer"),
    (lambda m: VidHashTransformer3DModel(hidden_dim=30, num_heads=4), "divisible by num_heads"),
], ids=["height-not-multiple-of-patch", "timestep-shape", "context-length", "heads-divide-dim"])
def test_bad_inputs(model, call, match):
    with pytest.raises(ValueError, match=match):
        call(model)


def test_rope_scores_depend_on_offsets_and_wrap_on_the_torus():
    from vidhash.models.transformer_vidhash import apply_rope, rope_angles

    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 2, 5, 32, generator=g), torch.randn(1, 2, 7, 32, generator=g)
    pq, pk = torch.rand(1, 1, 5, 2, generator=g) * 512, torch.rand(1, 1, 7, 2, generator=g) * 512

    def scores(pq, pk):
        aq, ak = rope_angles(pq, 32, 512.0), rope_angles(pk, 32, 512.0)
        return apply_rope(q, aq.cos(), aq.sin()) @ apply_rope(k, ak.cos(), ak.sin()).transpose(-1, -2)

    base = scores(pq, pk)
    shift = torch.tensor([37.0, -200.0])
    torch.testing.assert_close(scores(pq + shift, pk + shift), base, rtol=1e-4, atol=1e-4)  # relative only
    torch.testing.assert_close(scores(pq, pk + torch.tensor([512.0, -1024.0])), base, rtol=1e-4, atol=1e-4)  # torus
    assert not torch.allclose(scores(pq, pk + torch.tensor([8.0, 0.0])), base, atol=1e-2)
    ang = rope_angles(pq, 32, 512.0)
    torch.testing.assert_close(apply_rope(q, ang.cos(), ang.sin()).norm(dim=-1), q.norm(dim=-1))  # a rotation
    with pytest.raises(ValueError, match="divisible by 4"):
        VidHashTransformer3DModel(hidden_dim=36, num_heads=2, rope=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_without_gradients_is_bitwise_the_rotation_formula(dtype):
    """The inference path (x·[cos, cos] + swap(x)·[−sin, sin], cached tables) gives bitwise what
    ``x1·cos − x2·sin, x1·sin + x2·cos`` gives, signed zeros and infinities included (a NaN may
    differ in its sign bit only); with gradients the formula itself runs. A table is rebuilt when
    cos/sin change in place."""
    from vidhash.models.transformer_vidhash import apply_rope

    def formula(x, cos, sin):
        x1, x2 = x.float().chunk(2, dim=-1)
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)

    g = torch.Generator().manual_seed(0)
    x = (torch.randn(2, 1, 3, 37, 16, generator=g) * 1e3).to(dtype)
    ang = torch.randn(1, 1, 37, 8, generator=g) * 50
    cos, sin = ang.cos(), ang.sin()
    x.view(-1)[:40] = torch.tensor([0.0, -0.0, float("inf"), float("-inf"), 1e-30] * 8, dtype=dtype)
    cos.view(-1)[:4], sin.view(-1)[:4] = torch.tensor([0.0, -0.0, 1.0, -1.0]), torch.tensor([-0.0, 0.0, 0.0, -0.0])
    bits = torch.int32 if dtype == torch.float32 else torch.int16
    for _ in range(2):  # the second time through the kept tables
        with torch.no_grad():
            a, b = apply_rope(x, cos, sin), formula(x, cos, sin)
        assert torch.equal(a.isnan(), b.isnan())
        assert torch.equal(a.view(bits)[~a.isnan()], b.view(bits)[~b.isnan()])
        cos.mul_(-1)  # in place: the next call sees the new values
    xg = x.float().requires_grad_()
    apply_rope(xg, cos, sin).sum().backward()
    assert xg.grad is not None


def test_rope_model_is_translation_covariant_in_attention_only():
    """With rope, moving the whole clip changes the output only through the additive position
    embedding and the pose condition: zeroing those makes the model translation invariant."""
    m = random_model("tiny", seed=2, rope=True)
    with torch.no_grad():
        m.pos_embed.weight.zero_()
        m.pose_embed[-1].weight.zero_()
        m.pose_embed[-1].bias.zero_()
    x, t, a, p = _inputs(f=4)
    base = m(x, t, a, p, causal_frames=2).sample
    torch.testing.assert_close(m(x, t, a, p + torch.tensor([40.0, -16.0]), causal_frames=2).sample, base,
                               rtol=1e-4, atol=1e-4)
    m2 = random_model("tiny", seed=2, rope=False)
    with torch.no_grad():
        m2.pos_embed.weight.zero_()
        m2.pose_embed[-1].weight.zero_()
        m2.pose_embed[-1].bias.zero_()
    # without rope nothing positional is left: also invariant, but blind to where tokens are
    assert torch.allclose(m2(x, t, a, p + 40.0, causal_frames=2).sample, m2(x, t, a, p, causal_frames=2).sample, atol=1e-5)
    # rope still sees the layout: permuting the positions of tokens changes its output
    perm = p.flip(1)
    assert not torch.allclose(m(x, t, a, perm, causal_frames=2).sample, base, atol=1e-3)


# ------------------------------------------------------------------ prediction="sample" (x0 out, velocity returned)


def _twins(sigma_min=0.05):
    """The same weights as a velocity model (its output is the raw last layer: x̂0 for the twin)
    and as a prediction="sample" model."""
    vel = random_model("tiny", seed=3)
    smp = VidHashTransformer3DModel(**{**vel.config, "prediction": "sample", "sigma_min": sigma_min}).eval()
    smp.load_state_dict(vel.state_dict())
    return vel, smp


@torch.no_grad()
def test_sample_prediction_returns_the_velocity_to_its_x0():
    vel, smp = _twins()
    x, _, a, p = _inputs(f=4)
    t = torch.tensor([[0.0, 20.0, 250.0, 900.0]])  # σ 0 and 0.02 fall under sigma_min = 0.05
    x0_hat = vel(x, t, a, p).sample
    out = smp(x, t, a, p).sample
    sigma = torch.tensor([0.05, 0.05, 0.25, 0.9]).view(1, 4, 1, 1, 1)
    torch.testing.assert_close(out, (x - x0_hat) / sigma)
    # the K/V (what windows and memories keep) do not depend on the output parameterisation
    kv_v, kv_s = vel(x, t, a, p, return_kv=True).kv, smp(x, t, a, p, return_kv=True).kv
    assert all(torch.equal(kv_v[i][j], kv_s[i][j]) for i in range(len(kv_v)) for j in range(2))


@torch.no_grad()
def test_sample_prediction_last_euler_step_lands_on_x0():
    """The pipeline's scheduler, last step σ → 0: the sample is the model's x̂0 itself (no residual noise)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    vel, smp = _twins()
    sched = FlowMatchEulerDiscreteScheduler()
    sched.set_timesteps(sigmas=[1.0, 0.75, 0.5, 0.25])
    sched.set_begin_index(3)  # σ 0.25 → 0 (≥ sigma_min: the conversion divides by σ itself)
    t_last = sched.timesteps[3]
    x, _, a, p = _inputs(f=2)
    t = t_last.expand(1, 2)
    landed = sched.step(smp(x, t, a, p).sample, t_last, x, return_dict=False)[0]
    torch.testing.assert_close(landed, vel(x, t, a, p).sample, atol=1e-5, rtol=1e-5)


def test_velocity_target_weights_the_x0_error():
    """What the trainer regresses: for prediction="sample", (pred − target) = (x0 − x̂0) / max(σ, sigma_min)
    — the flow velocity noise − x0 above sigma_min, and a loss that is zero for a perfect x̂0 below it.
    For prediction="velocity" it is noise − x0, as before."""
    vel, smp = _twins()
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(1, 4, 3, 64, 64, generator=g), torch.randn(1, 4, 3, 64, 64, generator=g)
    s = torch.tensor([0.0, 0.02, 0.25, 0.9]).view(1, 4, 1, 1, 1)
    x_t = (1 - s) * x0 + s * noise
    assert torch.equal(vel.velocity_target(x_t, x0, noise, s), noise - x0)
    target = smp.velocity_target(x_t, x0, noise, s)
    torch.testing.assert_close(target[:, 2:], (noise - x0)[:, 2:], atol=1e-5, rtol=1e-5)
    _, _, a, p = _inputs(f=4)
    with torch.no_grad():
        pred = smp(x_t, s.view(1, 4) * 1000, a, p).sample
        x0_hat = vel(x_t, s.view(1, 4) * 1000, a, p).sample
    floor = s.clamp(min=0.05)
    torch.testing.assert_close((pred - target) * floor, x0 - x0_hat, atol=1e-4, rtol=1e-4)


def test_prediction_config_round_trip_and_errors(tmp_path):
    _, smp = _twins(sigma_min=0.1)
    smp.save_pretrained(tmp_path)
    loaded = VidHashTransformer3DModel.from_pretrained(tmp_path)
    assert loaded.config.prediction == "sample" and loaded.config.sigma_min == 0.1
    with pytest.raises(ValueError, match="prediction must be one of velocity, sample"):
        VidHashTransformer3DModel(prediction="epsilon")
    with pytest.raises(ValueError, match="sigma_min"):
        VidHashTransformer3DModel(sigma_min=0.0)


@pytest.mark.parametrize("need_lse", [False, True], ids=["no-lse", "lse"])
@pytest.mark.parametrize("context", [0, 7], ids=["C0", "C7"])
def test_fused_exact_paths_equal_the_reference(need_lse, context):
    """TemporalAttention's exact part: the fused forms CUDA takes by default (SDPA without lse,
    fused attention with it) == the float32 reference, here on CPU; odd sizes, a context of
    leading keys every chunk sees."""
    from vidhash.models.transformer_vidhash import TemporalAttention as TA

    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, 3, 5 * 7, 16, generator=g)  # 5 chunks of 7 query tokens (the third run: 30, a short last chunk)
    k, v = (torch.randn(2, 3, context + 35, 16, generator=g) for _ in range(2))
    with torch.no_grad():  # fused attention with lse is inference-only (with gradients it is the reference)
        for run in (lambda f: TA._full(q, k, v, 0.3, need_lse, fused=f),
                    lambda f: TA._chunk_causal(q, k, v, 7, 0.3, need_lse, fused=f),
                    lambda f: TA._chunk_causal(q[:, :, :30], k[:, :, :-5], v[:, :, :-5], 7, 0.3, need_lse, fused=f)):
            (ref, ref_lse), (out, lse) = run(False), run(True)
            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
            if need_lse:
                torch.testing.assert_close(lse, ref_lse, rtol=1e-5, atol=1e-5)
            else:
                assert lse is None
    # chunk-causal: chunk i sees the context and chunks 0..i only
    out, _ = TA._chunk_causal(q, k, v, 7, 0.3, fused=False)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, context + 14:], v2[:, :, context + 14:] = 0.0, 0.0  # change chunks 2.. only
    out2, _ = TA._chunk_causal(q, k2, v2, 7, 0.3, fused=False)
    assert torch.equal(out[:, :, :14], out2[:, :, :14]) and not torch.allclose(out[:, :, 14:], out2[:, :, 14:])


def test_kv_only_gives_the_same_kv_without_the_last_blocks_attention(model, monkeypatch):
    """A commit pass (``kv_only``): bitwise the K/V of the full forward, with window and memory in
    the context; the last layer reads no memory and nothing is returned as sample."""
    x, _, a, p = _inputs(f=8)
    t = torch.zeros(1, 8)
    kv_a = model(x[:, :4], t[:, :4], a[:, :4], p[:, :4], return_kv=True).kv
    mems = []
    for l in range(3):
        mem = HashedMemory(4, 8, heads=4, head_dim=32, seed=l)
        mem.write(kv_a[l][0], kv_a[l][1], 0)
        mems.append(mem)
    ctx = [TemporalContext(k=kv_a[l][0], v=kv_a[l][1], memory=mems[l], read=MemoryRead(6)) for l in range(3)]
    with torch.no_grad():
        full = model(x[:, 4:], t[:, 4:], a[:, 4:], p[:, 4:], context=ctx, return_kv=True)
        reads = []
        monkeypatch.setattr(HashedMemory, "attend", lambda self, *args, _real=HashedMemory.attend, **kw:
                            reads.append(mems.index(self)) or _real(self, *args, **kw))
        only = model(x[:, 4:], t[:, 4:], a[:, 4:], p[:, 4:], context=ctx, return_kv=True, kv_only=True)
    assert only.sample is None and reads == [0, 1]
    for (k1, v1), (k2, v2) in zip(full.kv, only.kv):
        assert torch.equal(k1, k2) and torch.equal(v1, v2)
    with pytest.raises(ValueError, match="return_kv"):
        model(x[:, 4:], t[:, 4:], a[:, 4:], p[:, 4:], kv_only=True)


def test_cpu_generation_attends_fused_and_training_with_the_reference(monkeypatch):
    """On a CPU without gradients (generation) both attentions run PyTorch's fused kernels; with
    gradients, or with CPU_REFERENCE_ATTENTION, the float32 reference; the two agree to ~1e-6,
    and a tiny pipeline's frames (memory read, 3 chunks) to ~1e-5."""
    from vidhash.models import transformer_vidhash as tv

    calls = []
    real = tv.dense_attention
    monkeypatch.setattr(tv, "dense_attention", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    q = torch.randn(1, 2, 10, 8)
    with torch.no_grad():
        assert tv._fused_default(q)
        out, lse = tv.TemporalAttention._full(q, q, q, 0.3, need_lse=True)
        assert not calls and lse is not None
        monkeypatch.setattr(tv, "CPU_REFERENCE_ATTENTION", True)
        assert not tv._fused_default(q)
        ref, ref_lse = tv.TemporalAttention._full(q, q, q, 0.3, need_lse=True)
        assert calls
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(lse, ref_lse, rtol=1e-5, atol=1e-6)
    monkeypatch.setattr(tv, "CPU_REFERENCE_ATTENTION", False)
    assert not tv._fused_default(q.requires_grad_(True))  # gradients enabled: the reference
    from vidhash.pipelines import VidHashPipeline

    pipe = VidHashPipeline.random("tiny")
    pipe.set_progress_bar_config(disable=True)
    kw = dict(num_frames=6, height=16, width=16, chunk_frames=2, window_frames=2, num_inference_steps=2,
              memory=dict(num_buckets=4, slots=2), output_type="pt")
    fused = pipe(generator=torch.Generator().manual_seed(0), **kw).frames
    monkeypatch.setattr(tv, "CPU_REFERENCE_ATTENTION", True)
    ref = pipe(generator=torch.Generator().manual_seed(0), **kw).frames
    assert not torch.equal(fused, ref)  # another numerical path...
    torch.testing.assert_close(fused, ref, rtol=0, atol=1e-4)  # ...with the same frames
