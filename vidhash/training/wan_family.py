"""wan-mini: diffusers' own ``WanTransformer3DModel`` trained on pixel clips — the pieces a trainer needs.

    python -m vidhash.training.wan_standalone configs/train/wan_mini.yaml --out /tmp/wan --minutes 8 --resume

* ``WanTrainConfig`` — the run (``configs/train/wan_mini.yaml``): ``model`` (the Wan class's own
  arguments; ``in_channels`` / ``out_channels`` / ``text_dim`` follow from ``condition``),
  ``condition`` (:class:`~vidhash.pipelines.pipeline_wan_mini.WanMiniConditioning`), ``data``
  (:class:`~vidhash.data.wan_clips.WanClipConfig`), ``noise``, ``optim``, ``ema``, schedule.
* :func:`build` — the model, seeded, with Wan's own initialisation (:func:`wan_init`).
* :class:`WanSamples` — sample ``index`` = clip + σ + context-frame count + noise seed, a pure
  function of ``(data.seed, index)`` (so a run's data position is one integer).
* :func:`loss` — the rectified-flow loss of a batch: ``x_σ = (1 − σ)·x0 + σ·noise``, timestep
  ``σ·1000``, velocity target ``noise − x0`` (for ``prediction: sample`` the velocity the network's
  x̂0 implies, i.e. x-prediction with a velocity loss), no loss on context frames.
* :func:`export` — a ``WanMiniPipeline`` folder (fp16, safetensors shards ≤ ``shard_mb``) whose
  ``transformer/`` loads with ``WanTransformer3DModel.from_pretrained``.

**Noise levels: one σ per clip**, as Wan trains (its ``timestep`` is one value per sample; Wan 2.2's
per-token timesteps would cost a (tokens, 6, dim) modulation tensor per block). σ is drawn
logit-normal (``noise.logit_mean`` / ``logit_std``), then shifted (``noise.shift``). On a share
``noise.context_prob`` of the clips the first 1..``max_context_frames`` frames are also given clean
through the context channels (frame prompts, as Wan I2V gives its first frame), with no loss there.

The standalone loop (:mod:`vidhash.training.wan_standalone`) runs these until ``vidhash train``
takes model families.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from vidhash.config import _structured, apply_overrides
from vidhash.data.wan_clips import WanClipConfig, WanClips, check_clip_config, clip_frames
from vidhash.data.world import ACTIONS

SIGMA_SAMPLING = ("uniform", "logit_normal")
PRECISIONS = ("no", "bf16")


@dataclass
class WanModelConfig:
    """``WanTransformer3DModel`` arguments (diffusers' names); channels and ``text_dim`` come from ``condition``."""

    patch_size: list[int] = field(default_factory=lambda: [1, 8, 8])
    num_attention_heads: int = 3
    attention_head_dim: int = 128
    freq_dim: int = 256
    ffn_dim: int = 1024
    num_layers: int = 5
    cross_attn_norm: bool = True
    qk_norm: str = "rms_norm_across_heads"
    eps: float = 1e-6
    rope_max_seq_len: int = 1024


@dataclass
class WanConditionConfig:
    """``WanMiniConditioning`` fields (saved in the pipeline's ``model_index.json``)."""

    num_actions: int = len(ACTIONS) + 1  # the world's actions and the null id
    time_freqs: int = 8
    action_planes: bool = True
    context_planes: bool = True
    prediction: str = "sample"  # sample (x̂0, velocity loss) | velocity
    sigma_min: float = 0.05


@dataclass
class WanNoiseConfig:
    sigma_sampling: str = "logit_normal"  # logit_normal | uniform
    logit_mean: float = 0.8
    logit_std: float = 0.8
    shift: float = 1.0  # σ ← shift·σ / (1 + (shift − 1)·σ) after drawing
    context_prob: float = 0.5  # share of clips whose first frames are given clean
    max_context_frames: int = 8


@dataclass
class WanOptimConfig:
    lr: float = 3e-4
    min_lr_ratio: float = 0.1  # cosine decays to lr · min_lr_ratio at max_steps
    warmup_steps: int = 300
    rewarm_steps: int = 100  # after a warm start from an export (new optimizer moments): linear ramp
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    weight_decay: float = 0.01
    eps: float = 1e-8
    grad_clip: float = 1.0  # 0 = off
    fused: bool = True  # AdamW's fused kernel on CUDA


@dataclass
class WanEMAConfig:
    decay: float = 0.999
    warmup: bool = True  # decay = min(decay, (1 + step) / (10 + step))


@dataclass
class WanTrainConfig:
    family: str = "wan"
    seed: int = 0  # model initialisation
    max_steps: int = 6000
    # > 0: the first run measures its step time after fit_after steps and sets max_steps so the
    # cosine schedule ends after this many minutes of training in all (kept in the checkpoint)
    budget_minutes: float = 0.0
    fit_after: int = 40
    batch_size: int = 8  # clips per optimizer step
    grad_accum: int = 1  # micro-batches per optimizer step
    mixed_precision: str = "bf16"  # bf16 (autocast) | no
    gradient_checkpointing: bool = False
    compile: bool = False  # torch.compile of the repeated blocks (regional)
    log_every: int = 10
    val_every: int = 250  # validation loss (model and EMA, held-out worlds) at log rows of these steps, and last
    val_clips: int = 8  # clips of the fixed validation batch (0: none)
    checkpoint_every: int = 500
    checkpoint_keep: int = 1
    shard_mb: float = 15.0  # largest file of a checkpoint or export (files over 16 MiB do not come back from GPU runs)
    sample_shift: float = 3.0  # the exported scheduler's shift (FlowMatchEulerDiscreteScheduler)
    num_workers: int = 6
    prefetch_factor: int = 4
    model: WanModelConfig = field(default_factory=WanModelConfig)
    condition: WanConditionConfig = field(default_factory=WanConditionConfig)
    data: WanClipConfig = field(default_factory=WanClipConfig)
    noise: WanNoiseConfig = field(default_factory=WanNoiseConfig)
    optim: WanOptimConfig = field(default_factory=WanOptimConfig)
    ema: WanEMAConfig = field(default_factory=WanEMAConfig)


def load_wan_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> WanTrainConfig:
    """YAML ``path`` (or the defaults) + ``key=value`` overrides, checked; ValueError naming a bad key."""
    from omegaconf import OmegaConf

    data: Any = {}
    what = "wan config"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"wan config {path} not found")
        data, what = OmegaConf.load(str(p)), str(p)
    cfg = apply_overrides(_structured(WanTrainConfig, data, what), overrides or [])
    check_wan_config(cfg)
    return cfg


def check_wan_config(cfg: WanTrainConfig) -> None:
    """Values a type check cannot catch; ValueError naming the key."""
    for key in ("max_steps", "batch_size", "grad_accum", "log_every", "checkpoint_every", "checkpoint_keep",
                "shard_mb", "fit_after", "prefetch_factor", "val_every"):
        if getattr(cfg, key) <= 0:
            raise ValueError(f"{key} must be positive, got {getattr(cfg, key)}")
    if cfg.family != "wan":
        raise ValueError(f"family must be wan for this config, got {cfg.family!r}")
    if cfg.batch_size % cfg.grad_accum:
        raise ValueError(f"batch_size ({cfg.batch_size}) must be divisible by grad_accum ({cfg.grad_accum})")
    if cfg.mixed_precision is False or cfg.mixed_precision == "False":  # YAML 1.1 reads a bare `no` as false
        cfg.mixed_precision = "no"
    if cfg.mixed_precision not in PRECISIONS:
        raise ValueError(f"mixed_precision must be one of {', '.join(PRECISIONS)}, got {cfg.mixed_precision!r}")
    if cfg.budget_minutes < 0 or cfg.num_workers < 0 or cfg.val_clips < 0:
        raise ValueError(f"budget_minutes, num_workers and val_clips must be >= 0, got {cfg.budget_minutes}, "
                         f"{cfg.num_workers}, {cfg.val_clips}")
    check_clip_config(cfg.data)
    m = cfg.model
    if len(m.patch_size) != 3 or min(m.patch_size) <= 0:
        raise ValueError(f"model.patch_size must be three positive ints (t, h, w), got {list(m.patch_size)}")
    if cfg.data.num_frames % m.patch_size[0] or cfg.data.frame_size % m.patch_size[1] or cfg.data.frame_size % m.patch_size[2]:
        raise ValueError(f"data.num_frames / data.frame_size ({cfg.data.num_frames}, {cfg.data.frame_size}) must be "
                         f"multiples of model.patch_size {list(m.patch_size)}")
    if m.attention_head_dim % 2 or m.attention_head_dim < 6:
        raise ValueError(f"model.attention_head_dim must be even and >= 6 (Wan's 3-D rope), got {m.attention_head_dim}")
    grid = max(cfg.data.num_frames // m.patch_size[0], cfg.data.frame_size // m.patch_size[1])
    if grid > m.rope_max_seq_len:
        raise ValueError(f"model.rope_max_seq_len ({m.rope_max_seq_len}) must be >= the token grid's longest side ({grid})")
    conditioning(cfg)  # prediction, sigma_min
    n = cfg.noise
    if n.sigma_sampling not in SIGMA_SAMPLING:
        raise ValueError(f"noise.sigma_sampling must be one of {', '.join(SIGMA_SAMPLING)}, got {n.sigma_sampling!r}")
    if n.shift <= 0 or not 0 <= n.context_prob <= 1 or not 0 <= n.max_context_frames < cfg.data.num_frames:
        raise ValueError(f"noise.shift must be > 0, noise.context_prob in [0, 1], noise.max_context_frames in "
                         f"[0, data.num_frames); got {n.shift}, {n.context_prob}, {n.max_context_frames}")
    if n.context_prob > 0 and (n.max_context_frames == 0 or not cfg.condition.context_planes):
        raise ValueError("noise.context_prob > 0 needs noise.max_context_frames > 0 and condition.context_planes")
    if not 0 <= cfg.ema.decay < 1 or not 0 <= cfg.optim.min_lr_ratio <= 1 or cfg.optim.lr <= 0:
        raise ValueError(f"ema.decay must be in [0, 1), optim.min_lr_ratio in [0, 1], optim.lr > 0; got "
                         f"{cfg.ema.decay}, {cfg.optim.min_lr_ratio}, {cfg.optim.lr}")


def conditioning(cfg: WanTrainConfig):
    """The run's :class:`WanMiniConditioning`."""
    from vidhash.pipelines.pipeline_wan_mini import WanMiniConditioning

    return WanMiniConditioning(channels=3, **asdict(cfg.condition))


def model_kwargs(cfg: WanTrainConfig) -> dict:
    """The ``WanTransformer3DModel`` constructor arguments of the run."""
    cond = conditioning(cfg)
    kw = asdict(cfg.model)
    kw["patch_size"] = tuple(kw["patch_size"])
    return {**kw, "in_channels": cond.in_channels, "out_channels": cond.channels, "text_dim": cond.text_dim}


# ------------------------------------------------------------------------------------ model


@torch.no_grad()
def wan_init(model: nn.Module) -> None:
    """Wan's own initialisation (the original Wan code's ``init_weights``; diffusers' class keeps
    PyTorch's defaults): Xavier-uniform linears with zero biases, Xavier patch embedding, N(0, 0.02)
    for the text and time embedders, and a zero output projection."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    nn.init.xavier_uniform_(model.patch_embedding.weight.flatten(1))
    emb = model.condition_embedder
    for part in (emb.text_embedder, emb.time_embedder):
        for m in part.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
    nn.init.zeros_(model.proj_out.weight)
    nn.init.zeros_(model.proj_out.bias)


def build(cfg: WanTrainConfig):
    """A fresh ``WanTransformer3DModel`` of the run (seeded with ``cfg.seed``; global RNG untouched)."""
    from diffusers import WanTransformer3DModel

    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(cfg.seed)
        model = WanTransformer3DModel(**model_kwargs(cfg))
        wan_init(model)
    finally:
        torch.random.set_rng_state(state)
    return model


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices and the patch embedding; none on biases, norms and modulation tables."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 and "scale_shift_table" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# -------------------------------------------------------------------------------------- data


def draw_sigma(n: WanNoiseConfig, rng: np.random.Generator) -> float:
    """One clip's σ in (0, 1]: logit-normal or uniform, then shifted."""
    if n.sigma_sampling == "uniform":
        s = 1.0 - rng.random()
    else:
        s = 1.0 / (1.0 + np.exp(-(n.logit_mean + n.logit_std * rng.standard_normal())))
    return float(n.shift * s / (1.0 + (n.shift - 1.0) * s))


class WanSamples(Dataset):
    """``samples[index]``: a :class:`WanClips` clip + ``sigma`` () float32, ``context`` () int64 (leading
    clean frames), ``noise_seed`` () int64 (:func:`vidhash.training.data.sample_noise` draws the
    noise on the training device); deterministic in ``(data.seed, index)``."""

    def __init__(self, cfg: WanTrainConfig):
        self.cfg = cfg
        self.clips = WanClips(cfg.data)

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        n = self.cfg.noise
        item = dict(self.clips[index])
        rng = np.random.default_rng([self.cfg.data.seed, 5, int(index)])
        item["sigma"] = torch.tensor(draw_sigma(n, rng), dtype=torch.float32)
        k = int(rng.integers(1, n.max_context_frames + 1)) if rng.random() < n.context_prob else 0
        item["context"] = torch.tensor(k, dtype=torch.int64)
        item["noise_seed"] = torch.tensor(int(rng.integers(1 << 62)), dtype=torch.int64)
        return item


VALIDATION_WORLD_SEED = 1_500_000  # validation worlds: held out (>= HELDOUT_WORLD_SEED), apart from eval's


def validation_batch(cfg: WanTrainConfig, n: int = 8) -> dict[str, torch.Tensor]:
    """A fixed held-out batch: ``n`` clips of worlds ``VALIDATION_WORLD_SEED + i`` (never trained
    on), σ on the grid ``(i + 0.5) / n``, no context frames, fixed noise seeds. World clips only."""
    import dataclasses

    from torch.utils.data import default_collate

    from vidhash.data.wan_clips import clip_trajectory, render_clip
    from vidhash.data.world import ProceduralWorld

    d = cfg.data
    if d.source != "world":
        raise ValueError("validation_batch needs data.source=world")
    vd = dataclasses.replace(d, trajectory="mixed")
    items = []
    for i in range(n):
        world = ProceduralWorld(seed=VALIDATION_WORLD_SEED + i, size=d.world_size, view=d.view)
        actions, poses = clip_trajectory(vd, i, np.random.default_rng([d.seed, 9, i]))
        items.append({"frames": torch.from_numpy(render_clip(world, poses, d.frame_size)).permute(0, 3, 1, 2),
                      "actions": torch.from_numpy(actions), "sigma": torch.tensor((i + 0.5) / n),
                      "context": torch.tensor(0), "noise_seed": torch.tensor(VALIDATION_WORLD_SEED + i)})
    return default_collate(items)


# -------------------------------------------------------------------------------------- loss


def loss_elements(batch: dict[str, torch.Tensor]) -> int:
    """How many values of ``batch`` carry loss: every channel of every frame after the context."""
    b, f, c, h, w = batch["frames"].shape
    return int((f * b - int(batch["context"].sum())) * c * h * w)


def loss(model: nn.Module, batch: dict[str, torch.Tensor], cond, device: torch.device | str | None = None,
         noise: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """Summed squared velocity error of ``batch`` (float32 scalar) and :func:`loss_elements`.

    ``batch``: frames (b, f, c, h, w) uint8 or float, actions (b, f), sigma (b,), context (b,),
    noise_seed (b,) — or ``noise`` (b, f, c, h, w) given. Divide the sum by the elements of the
    whole optimizer step (accumulation and processes included) for the mean.
    """
    from einops import rearrange

    from vidhash.training.data import sample_noise

    device = torch.device(device) if device is not None else next(model.parameters()).device
    frames = batch["frames"].to(device, non_blocking=True)
    b, f = frames.shape[:2]
    # 1. clean clip, noise, noisy clip (b, c, f, h, w)
    x0 = rearrange(clip_frames(frames), "b f c h w -> b c f h w")
    if noise is None:
        noise = sample_noise(batch["noise_seed"], frames.shape[1:], device)
    noise = rearrange(noise.to(device, torch.float32), "b f c h w -> b c f h w")
    sigma = batch["sigma"].to(device, torch.float32)
    s = sigma.view(b, 1, 1, 1, 1)
    x_t = (1.0 - s) * x0 + s * noise
    # 2. context frames (clean, no loss) and the model's inputs
    context_mask = torch.arange(f, device=device)[None] < batch["context"].to(device)[:, None]  # (b, f)
    actions = batch["actions"].to(device)
    hidden = cond.model_input(x_t, actions, x0, context_mask)
    tokens = cond.action_tokens(actions)
    # 3. velocity error where there is no context
    out = model(hidden, timestep=sigma * 1000.0, encoder_hidden_states=tokens, return_dict=False)[0]
    err = (cond.velocity(out, x_t, sigma) - cond.velocity_target(x_t, x0, noise, sigma)) ** 2
    keep = (~context_mask).to(err.dtype)[:, None, :, None, None]
    return (err * keep).sum(), loss_elements(batch)


# ------------------------------------------------------------------------------------ export


def export(weights: dict[str, torch.Tensor] | nn.Module, cfg: WanTrainConfig, out: str | os.PathLike,
           dtype: torch.dtype = torch.float16, extra: dict[str, Any] | None = None) -> tuple[Path, float]:
    """Save ``weights`` (a state dict, e.g. the EMA's, or a model) as a ``WanMiniPipeline`` folder:
    ``dtype`` tensors (Wan's ``_keep_in_fp32_modules`` in float32) in safetensors shards ≤ ``cfg.shard_mb`` MB, the scheduler with shift
    ``cfg.sample_shift``; ``extra``: JSON files to add (name → object). Atomic (temp folder, then
    rename). Returns (folder, MiB)."""
    from diffusers.schedulers import FlowMatchEulerDiscreteScheduler

    from vidhash.pipelines.pipeline_wan_mini import WanMiniPipeline

    state = weights.state_dict() if isinstance(weights, nn.Module) else weights
    model = build(cfg)
    model.load_state_dict({k: v.detach().float().cpu() for k, v in state.items()})
    keep = tuple(model._keep_in_fp32_modules or ())
    for name, param in model.named_parameters():  # as from_pretrained(torch_dtype=...) does: Wan's fp32 modules stay
        if not any(k in name for k in keep):
            param.data = param.data.to(dtype)
    model.eval()
    pipe = WanMiniPipeline(model, FlowMatchEulerDiscreteScheduler(shift=cfg.sample_shift), channels=3,
                           **asdict(cfg.condition))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        pipe.save_pretrained(str(tmp), max_shard_size=int(cfg.shard_mb * 2**20) - 64 * 1024)  # room for headers
        for name, obj in (extra or {}).items():
            (tmp / name).write_text(json.dumps(obj, indent=1) + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    return out, sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**20
