"""wan-mini's training pieces (build, samples, loss, export) in a plain loop: the loss falls and the
export loads with WanTransformer3DModel.from_pretrained and samples through WanMiniPipeline."""
import json

import numpy as np
import pytest
import torch
from diffusers import WanTransformer3DModel
from torch.utils.data import default_collate

from vidhash.pipelines.pipeline_wan_mini import WanMiniPipeline
from vidhash.training.wan_family import WanSamples, build, conditioning, export, load_wan_config, loss, \
    loss_elements, model_kwargs


def batch_of(cfg, indices):
    ds = WanSamples(cfg)
    return default_collate([ds[i] for i in indices])


def mean_loss(model, batch, cond):
    with torch.no_grad():
        err, n = loss(model, batch, cond)
    return float(err) / n


def test_samples_are_deterministic_and_carry_sigma_context_noise(tiny_cfg):
    cfg = tiny_cfg("noise.context_prob=0.5")
    ds = WanSamples(cfg)
    items = [ds[i] for i in range(16)]
    for k, v in WanSamples(cfg)[5].items():
        assert torch.equal(v, items[5][k]), k
    sig = torch.stack([it["sigma"] for it in items])
    ctx = torch.stack([it["context"] for it in items])
    assert torch.all((sig > 0) & (sig <= 1)) and len(set(sig.tolist())) == 16
    assert ctx.min() == 0 and 0 < ctx.max() <= cfg.noise.max_context_frames
    b = default_collate(items[:4])
    assert loss_elements(b) == (4 * 8 - int(ctx[:4].sum())) * 3 * 32 * 32


def test_context_frames_carry_no_loss(tiny_cfg):
    cfg = tiny_cfg()
    model = build(cfg)
    torch.nn.init.normal_(model.proj_out.weight, std=0.1)
    b = batch_of(cfg, [0, 1])
    noise = torch.randn(2, 8, 3, 32, 32)
    b["context"] = torch.tensor([3, 0])
    with torch.no_grad():
        base, n = loss(model, b, conditioning(cfg), noise=noise)
    assert n == (16 - 3) * 3 * 32 * 32
    b2 = dict(b, frames=b["frames"].clone())
    b2["frames"][1, :3] = 255 - b2["frames"][1, :3]  # sample 1 has no context: its first frames count
    with torch.no_grad():
        assert float(loss(model, b2, conditioning(cfg), noise=noise)[0]) != float(base)


def test_plain_loop_trains_exports_and_samples(tiny_cfg, tmp_path):
    cfg = tiny_cfg("model.num_layers=2", "data.num_frames=16")
    torch.manual_seed(0)
    model, cond = build(cfg), conditioning(cfg)
    assert model_kwargs(cfg)["in_channels"] == model.config.in_channels == cond.in_channels
    train = [batch_of(cfg, [2 * k, 2 * k + 1]) for k in range(4)]
    held = batch_of(cfg, [0, 1])  # seen in training (the first batch): the fit must improve on it
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    before = mean_loss(model, held, cond)
    for step in range(20):
        b = train[step % len(train)]
        err, n = loss(model, b, cond)
        (err / n).backward()
        opt.step()
        opt.zero_grad()
    after = mean_loss(model, held, cond)
    assert after < 0.7 * before, (before, after)
    # export: a WanMiniPipeline folder; the transformer loads with diffusers' own class
    folder, mib = export(model, cfg, tmp_path / "wan-mini", extra={"note.json": {"step": 20}})
    assert json.loads((folder / "note.json").read_text()) == {"step": 20} and mib < 1
    loaded = WanTransformer3DModel.from_pretrained(str(folder / "transformer"))
    for k, v in model.state_dict().items():
        assert torch.allclose(loaded.state_dict()[k], v, atol=2e-3, rtol=2e-3), k  # fp16 round trip
    pipe = WanMiniPipeline.from_pretrained(str(folder))
    pipe.set_progress_bar_config(disable=True)
    frames = pipe(actions=["down"] * 16, num_frames=16, height=32, width=32, num_inference_steps=3,
                  generator=torch.Generator().manual_seed(0)).frames
    assert frames.shape == (1, 16, 32, 32, 3) and np.isfinite(frames).all() and frames.std() > 0


def test_export_is_fp16_with_wans_fp32_modules(tiny_cfg, tmp_path):
    from safetensors.torch import load_file

    cfg = tiny_cfg()
    folder, _ = export(build(cfg).state_dict(), cfg, tmp_path / "e")
    tensors = load_file(str(folder / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert tensors["blocks.0.attn1.to_q.weight"].dtype == torch.float16
    assert tensors["blocks.0.scale_shift_table"].dtype == torch.float32
    assert not list(tmp_path.glob(".*"))  # no temp folder left behind


@pytest.mark.parametrize("override, key", [
    ("noise.max_context_frames=8", "noise.max_context_frames"),
    ("model.patch_size=[1,8]", "model.patch_size"),
    ("data.frame_size=36", "data.frame_size"),
    ("grad_accum=3", "batch_size"),
    ("mixed_precision=fp16", "mixed_precision"),
    ("condition.prediction=eps", "prediction"),
    ("noise.sigma_sampling=beta", "noise.sigma_sampling"),
    ("model.rope_max_seq_len=2", "model.rope_max_seq_len"),
    ("nosuchkey=1", "nosuchkey"),
])
def test_config_errors_name_the_key(tiny_cfg, override, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        tiny_cfg(override)


def test_shipped_configs_load():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "configs" / "train"
    cfg = load_wan_config(str(root / "wan_mini.yaml"))
    kw = model_kwargs(cfg)
    tokens = cfg.data.num_frames * (cfg.data.frame_size // 8) ** 2
    assert tokens == 33_792 and kw["attention_head_dim"] == 128
    with torch.device("meta"):
        n = sum(p.numel() for p in WanTransformer3DModel(**kw).parameters())
    assert n <= 12_000_000  # fp16 export ≤ 25 MB
