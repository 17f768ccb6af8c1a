"""wan-mini's training pieces (config, samples, loss, export) in a plain loop: the loss falls and the
export loads with WanTransformer3DModel.from_pretrained and samples through WanMiniPipeline."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import WanTransformer3DModel
from safetensors.torch import load_file
from torch.utils.data import default_collate

from vidhash.pipelines.pipeline_wan_mini import WanMiniPipeline
from vidhash.training import load_train_config
from vidhash.training.ema import EMA
from vidhash.training.families import build_model, get_family
from vidhash.training.trainer import export_ema
from vidhash.training.wan_family import WanSamples, WanTrainConfig, conditioning, loss, loss_elements, model_kwargs, \
    wan_batch

RECIPES = Path(__file__).resolve().parents[2] / "configs" / "train"


def batch_of(cfg, indices):
    ds = WanSamples(cfg)
    return default_collate([ds[i] for i in indices])


def mean_loss(model, item, cond):
    with torch.no_grad():
        return float(loss(model, wan_batch(item, "cpu"), cond)) / float(loss_elements([item]))


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
    assert float(loss_elements([b])) == (4 * 8 - int(ctx[:4].sum())) * 3 * 32 * 32
    assert float(loss_elements([b, b])) == 2 * float(loss_elements([b]))  # an optimizer step's micro-batches


def test_context_frames_carry_no_loss(tiny_cfg):
    cfg = tiny_cfg()
    model = build_model(cfg)
    torch.nn.init.normal_(model.proj_out.weight, std=0.1)
    b = batch_of(cfg, [0, 1])
    noise = torch.randn(2, 8, 3, 32, 32)
    b["context"] = torch.tensor([3, 0])
    with torch.no_grad():
        base = loss(model, wan_batch(b, "cpu", noise), conditioning(cfg))
    assert float(loss_elements([b])) == (16 - 3) * 3 * 32 * 32
    b2 = dict(b, frames=b["frames"].clone())
    b2["frames"][1, :3] = 255 - b2["frames"][1, :3]  # sample 1 has no context: its first frames count
    with torch.no_grad():
        assert float(loss(model, wan_batch(b2, "cpu", noise), conditioning(cfg))) != float(base)


def test_plain_loop_trains_exports_and_samples(tiny_cfg, tmp_path):
    cfg = tiny_cfg("model.num_layers=2", "data.num_frames=16")
    family = get_family("wan")
    model, cond = build_model(cfg, family), conditioning(cfg)
    assert model_kwargs(cfg)["in_channels"] == model.config.in_channels == cond.in_channels
    train = [batch_of(cfg, [2 * k, 2 * k + 1]) for k in range(4)]
    held = train[0]  # seen in training (the first batch): the fit must improve on it
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    before = mean_loss(model, held, cond)
    for step in range(20):
        b = train[step % len(train)]
        (loss(model, wan_batch(b, "cpu"), cond) / loss_elements([b])).backward()
        opt.step()
        opt.zero_grad()
    after = mean_loss(model, held, cond)
    assert after < 0.7 * before, (before, after)
    # the trainer's export of these weights: a WanMiniPipeline folder; the transformer loads with diffusers' own class
    ema = EMA(model, decay=0.0, warmup=False)
    folder, dtype, mb = export_ema(cfg, family, ema, tmp_path / "wan-mini", "fp16", extra={"note.json": {"step": 20}})
    assert json.loads((folder / "note.json").read_text()) == {"step": 20} and dtype == "fp16" and mb < 1
    loaded = WanTransformer3DModel.from_pretrained(str(folder / "transformer"))
    for k, v in model.state_dict().items():
        assert torch.allclose(loaded.state_dict()[k].float(), v, atol=2e-3, rtol=2e-3), k  # fp16 round trip
    pipe = WanMiniPipeline.from_pretrained(str(folder))
    pipe.set_progress_bar_config(disable=True)
    assert pipe.scheduler.config.shift == cfg.sample_shift
    frames = pipe(actions=["down"] * 16, num_frames=16, height=32, width=32, num_inference_steps=3,
                  generator=torch.Generator().manual_seed(0)).frames
    assert frames.shape == (1, 16, 32, 32, 3) and np.isfinite(frames).all() and frames.std() > 0


def test_export_is_fp16_with_wans_fp32_modules_in_shards(tiny_cfg, tmp_path):
    cfg = tiny_cfg("checkpoint.shard_mb=0.06")
    family = get_family("wan")
    model = build_model(cfg, family)
    torch.nn.init.normal_(model.proj_out.weight, std=0.1)
    folder, _, _ = export_ema(cfg, family, EMA(model), tmp_path / "e", "fp16")
    shards = sorted((folder / "transformer").glob("*.safetensors"))
    assert len(shards) > 1 and all(p.stat().st_size <= 0.06 * 2**20 for p in shards)
    tensors = {k: v for p in shards for k, v in load_file(str(p)).items()}
    assert tensors.keys() == model.state_dict().keys()
    assert tensors["blocks.0.attn1.to_q.weight"].dtype == torch.float16
    assert tensors["blocks.0.scale_shift_table"].dtype == torch.float32  # Wan's _keep_in_fp32_modules
    assert torch.equal(tensors["blocks.0.scale_shift_table"], model.state_dict()["blocks.0.scale_shift_table"])
    assert torch.equal(tensors["proj_out.weight"], model.state_dict()["proj_out.weight"].half())
    assert not list(tmp_path.glob(".*"))  # no temp folder left behind


@pytest.mark.parametrize("override, key", [
    ("noise.max_context_frames=8", "noise.max_context_frames"),
    ("model.patch_size=[1,8]", "model.patch_size"),
    ("data.frame_size=36", "data.frame_size"),
    ("mixed_precision=fp16", "mixed_precision"),
    ("condition.prediction=eps", "condition.prediction"),
    ("noise.sigma_sampling=beta", "noise.sigma_sampling"),
    ("model.rope_max_seq_len=2", "model.rope_max_seq_len"),
    ("temporal_mode=selected", "temporal_mode"),
    ("val_every=3", "val_every"),  # log_every 5: validations go into log rows
    ("budget_minutes=-1", "budget_minutes"),
    ("fit_schedule=true", "fit_schedule and budget_minutes"),
    ("optim.rewarm_steps=-1", "optim.rewarm_steps"),
    ("model.hidden_dim=8", "model.hidden_dim"),  # vidhash's model key: not in wan's model section
    ("nosuchkey=1", "nosuchkey"),
])
def test_config_errors_name_the_key(tiny_cfg, override, key):
    extra = ["budget_minutes=1"] if override.startswith("fit_schedule") else []
    with pytest.raises(ValueError, match=key.replace(".", r"\.").replace("[", r"\[")):
        tiny_cfg(*extra, override)


def test_the_config_class_follows_model_family():
    cfg = load_train_config(str(RECIPES / "wan_mini.yaml"))
    assert type(cfg) is WanTrainConfig and cfg.model_family == "wan"
    with pytest.raises(ValueError, match=r"cpu_test.yaml: bad key 'model\.patch_size'"):  # vidhash's recipe read as wan's
        load_train_config("cpu_test", ["model_family=wan"])
    with pytest.raises(ValueError, match="wan_mini.yaml: bad key 'sample_shift'.*not in 'TrainConfig'"):  # and wan's as vidhash's
        load_train_config(str(RECIPES / "wan_mini.yaml"), ["model_family=vidhash"])


def test_shipped_configs_load():
    cfg = load_train_config(str(RECIPES / "wan_mini.yaml"))
    kw = model_kwargs(cfg)
    tokens = cfg.data.num_frames * (cfg.data.frame_size // 8) ** 2
    assert tokens == 33_792 and kw["attention_head_dim"] == 128
    with torch.device("meta"):
        n = sum(p.numel() for p in WanTransformer3DModel(**kw).parameters())
    assert n <= 12_000_000  # fp16 export ≤ 25 MB
    # the export the wan-mini runs warm-start from (.wan/wan-mini, step 705; models/wan-mini) was
    # written for this fingerprint: a change of the recipe's model would refuse it
    assert get_family("wan").fingerprint(cfg) == "dcf9d5678e18c711"
