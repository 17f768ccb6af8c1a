"""wan-mini: diffusers' own ``WanTransformer3DModel`` trained on pixel clips — its config and pieces.

    vidhash train wan_mini out_dir=/tmp/wan --resume auto --max-minutes 8      # model_family: wan

The trainer reaches these through :class:`vidhash.training.families.wan.WanFamily`:

* :class:`WanTrainConfig` — the run (``configs/train/wan_mini.yaml``): ``TrainConfig``'s run keys
  with wan-mini's sections: ``model`` (the Wan class's own arguments; ``in_channels`` /
  ``out_channels`` / ``text_dim`` follow from ``condition``), ``condition``
  (:class:`~vidhash.pipelines.pipeline_wan_mini.WanMiniConditioning`), ``data``
  (:class:`~vidhash.data.wan_clips.WanClipConfig` and the loader's keys), ``noise``,
  ``sample_shift``, ``attention`` (:class:`~vidhash.training.attention.TrainAttentionConfig`:
  dense, or hash attention in every self-attention); checked by :func:`check_wan_sections`.
* :func:`build` — the model with Wan's own initialisation (:func:`wan_init`) and the training
  attention (:func:`~vidhash.training.attention.enable_training_attention`).
* :class:`WanSamples` — sample ``index`` = clip + σ + context-frame count + noise seed, a pure
  function of ``(data.seed, index)`` (so a run's data position is one integer);
  :func:`validation_batch` — a fixed batch of held-out worlds.
* :func:`wan_batch` and :func:`loss` — the rectified-flow loss of a batch: ``x_σ = (1 − σ)·x0 +
  σ·noise``, timestep ``σ·1000``, velocity target ``noise − x0`` (for ``prediction: sample`` the
  velocity the network's x̂0 implies, i.e. x-prediction with a velocity loss), no loss on context frames.
* :func:`cast_keeping_fp32` and :func:`save_pipeline` — the export: a ``WanMiniPipeline`` folder
  (safetensors shards ≤ ``checkpoint.shard_mb``, Wan's fp32 modules kept in float32) whose
  ``transformer/`` loads with ``WanTransformer3DModel.from_pretrained``; :func:`load_transformer`
  reads one back (``init_from``).

**Noise levels: one σ per clip**, as Wan trains (its ``timestep`` is one value per sample; Wan 2.2's
per-token timesteps would cost a (tokens, 6, dim) modulation tensor per block). σ is drawn
logit-normal (``noise.logit_mean`` / ``logit_std``), then shifted (``noise.shift``). On a share
``noise.context_prob`` of the clips the first 1..``max_context_frames`` frames are also given clean
through the context channels (frame prompts, as Wan I2V gives its first frame), with no loss there.

Letters: b batch, f frames, c channels, h w pixel rows and columns.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from diffusers import WanTransformer3DModel
from diffusers.schedulers import FlowMatchEulerDiscreteScheduler
from einops import rearrange
from torch import nn
from torch.utils.data import default_collate

from vidhash.camera import ACTIONS
from vidhash.data.wan_clips import WanClipConfig, WanClips, check_clip_config, clip_frames, clip_trajectory, \
    render_clip
from vidhash.data.world import HELDOUT_WORLD_SEED, ProceduralWorld
from vidhash.pipelines.pipeline_wan_mini import WanMiniConditioning, WanMiniPipeline
from vidhash.presets import config_diff

from .attention import TrainAttentionConfig, check_attention, enable_training_attention, fingerprint_part, is_dense
from .config import TrainConfig
from .data import IndexedSamples, sample_noise

SIGMA_SAMPLING = ("uniform", "logit_normal")
PRECISIONS = ("no", "bf16")
VALIDATION_WORLD_SEED = 1_500_000  # validation worlds: held out (>= HELDOUT_WORLD_SEED), apart from eval's


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
class WanDataConfig(WanClipConfig):
    """The clips (:class:`~vidhash.data.wan_clips.WanClipConfig`) and the trainer's loader keys."""

    num_workers: int = 6  # DataLoader workers per process (0: in the main process)
    prefetch_factor: int = 4  # batches loaded ahead per worker
    pin_memory: bool = True  # pinned host batches (CUDA): asynchronous host-to-device copies
    reserve_cores: int = 0  # physical cores kept for each process's main thread (vidhash.training.affinity)


@dataclass
class WanNoiseConfig:
    sigma_sampling: str = "logit_normal"  # logit_normal | uniform
    logit_mean: float = 0.8
    logit_std: float = 0.8
    shift: float = 1.0  # σ ← shift·σ / (1 + (shift − 1)·σ) after drawing
    context_prob: float = 0.5  # share of clips whose first frames are given clean
    max_context_frames: int = 8


@dataclass
class WanTrainConfig(TrainConfig):
    """``model_family: wan``: the trainer's run keys (``TrainConfig``) with wan-mini's sections.
    ``temporal_mode`` must stay ``dense`` and ``selection`` is not read (vidhash's model only)."""

    out_dir: str = "out/wan-mini"
    mixed_precision: str = "bf16"  # bf16 (autocast) | no
    model_family: str = "wan"
    model: WanModelConfig = field(default_factory=WanModelConfig)
    data: WanDataConfig = field(default_factory=WanDataConfig)
    noise: WanNoiseConfig = field(default_factory=WanNoiseConfig)
    condition: WanConditionConfig = field(default_factory=WanConditionConfig)
    sample_shift: float = 3.0  # the exported scheduler's shift (FlowMatchEulerDiscreteScheduler)
    attention: TrainAttentionConfig = field(default_factory=TrainAttentionConfig)  # dense unless density < 1


def check_wan_sections(cfg: WanTrainConfig) -> None:
    """Values a type check cannot catch in wan-mini's sections; ValueError naming the key."""
    check_clip_config(cfg.data)
    m, d = cfg.model, cfg.data
    if len(m.patch_size) != 3 or min(m.patch_size) <= 0:
        raise ValueError(f"model.patch_size must be three positive ints (t, h, w), got {list(m.patch_size)}")
    if d.num_frames % m.patch_size[0] or d.frame_size % m.patch_size[1] or d.frame_size % m.patch_size[2]:
        raise ValueError(f"data.num_frames / data.frame_size ({d.num_frames}, {d.frame_size}) must be "
                         f"multiples of model.patch_size {list(m.patch_size)}")
    if m.attention_head_dim % 2 or m.attention_head_dim < 6:
        raise ValueError(f"model.attention_head_dim must be even and >= 6 (Wan's 3-D rope), got {m.attention_head_dim}")
    grid = max(d.num_frames // m.patch_size[0], d.frame_size // m.patch_size[1])
    if grid > m.rope_max_seq_len:
        raise ValueError(f"model.rope_max_seq_len ({m.rope_max_seq_len}) must be >= the token grid's longest side ({grid})")
    conditioning(cfg)  # condition.prediction, condition.sigma_min, ...
    n = cfg.noise
    if n.sigma_sampling not in SIGMA_SAMPLING:
        raise ValueError(f"noise.sigma_sampling must be one of {', '.join(SIGMA_SAMPLING)}, got {n.sigma_sampling!r}")
    if n.shift <= 0 or not 0 <= n.context_prob <= 1 or not 0 <= n.max_context_frames < d.num_frames:
        raise ValueError(f"noise.shift must be > 0, noise.context_prob in [0, 1], noise.max_context_frames in "
                         f"[0, data.num_frames); got {n.shift}, {n.context_prob}, {n.max_context_frames}")
    if n.context_prob > 0 and (n.max_context_frames == 0 or not cfg.condition.context_planes):
        raise ValueError("noise.context_prob > 0 needs noise.max_context_frames > 0 and condition.context_planes")
    if cfg.mixed_precision not in PRECISIONS:
        raise ValueError(f"mixed_precision must be one of {', '.join(PRECISIONS)} for wan-mini, got {cfg.mixed_precision!r}")
    if cfg.temporal_mode != "dense":
        raise ValueError(f"temporal_mode must be dense for wan-mini (vidhash's model only selects), got {cfg.temporal_mode!r}")
    if cfg.val_every and d.source != "world":
        raise ValueError("val_every needs data.source=world (the validation batch is of held-out worlds)")
    if cfg.sample_shift <= 0:
        raise ValueError(f"sample_shift must be > 0, got {cfg.sample_shift}")
    check_attention(cfg.attention)
    if not is_dense(cfg.attention) and not cfg.export_train_state:
        raise ValueError("attention.density < 1 needs export_train_state: true (train_state.json records the "
                         "training attention, which a sampler of the export must use)")


def conditioning(cfg: WanTrainConfig) -> WanMiniConditioning:
    """The run's :class:`WanMiniConditioning` (ValueError naming the ``condition.`` key)."""
    try:
        return WanMiniConditioning(channels=3, **asdict(cfg.condition))
    except ValueError as err:
        raise ValueError(f"condition.{err}") from None


def model_kwargs(cfg: WanTrainConfig) -> dict:
    """The ``WanTransformer3DModel`` constructor arguments of the run."""
    cond = conditioning(cfg)
    kw = asdict(cfg.model)
    kw["patch_size"] = tuple(kw["patch_size"])
    return {**kw, "in_channels": cond.in_channels, "out_channels": cond.channels, "text_dim": cond.text_dim}


def fingerprint(cfg: WanTrainConfig) -> str:
    """Hash of what the weights depend on: the model's constructor arguments (as the stand-in loop
    hashed them, so its exports and checkpoints keep their fingerprint) and, when it is sparse, the
    training attention (a sparse run does not continue a dense one's checkpoint, nor the reverse)."""
    blob = json.dumps({**model_kwargs(cfg), **fingerprint_part(cfg.attention)}, sort_keys=True, default=list)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def tokens_per_clip(cfg: WanTrainConfig) -> int:
    p_t, p_h, p_w = cfg.model.patch_size
    return (cfg.data.num_frames // p_t) * (cfg.data.frame_size // p_h) * (cfg.data.frame_size // p_w)


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


def build(cfg: WanTrainConfig) -> WanTransformer3DModel:
    """A fresh ``WanTransformer3DModel`` of the run, initialised from the global torch RNG
    (:func:`vidhash.training.families.build_model` seeds it with ``cfg.seed``), with hash attention
    in every self-attention when ``attention.density < 1`` (its SimHash is seeded apart: the same
    initial weights as dense)."""
    model = WanTransformer3DModel(**model_kwargs(cfg))
    wan_init(model)
    return enable_training_attention(model, cfg.attention)


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


class WanSamples(IndexedSamples):
    """``samples[index]``: a :class:`WanClips` clip + ``sigma`` () float32, ``context`` () int64 (leading
    clean frames), ``noise_seed`` () int64 (:func:`vidhash.training.data.sample_noise` draws the
    noise on the training device); deterministic in ``(data.seed, index)``."""

    def __init__(self, cfg: WanTrainConfig):
        self.cfg = cfg
        self.clips = WanClips(cfg.data)

    def describe(self) -> str:
        d = self.cfg.data
        where = (f"worlds {d.world_seed_start}..{d.world_seed_start + d.num_worlds - 1} (seeds >= "
                 f"{HELDOUT_WORLD_SEED} held out), {d.trajectory} trajectories" if d.source == "world"
                 else f"videos under {d.video_root}")
        return (f"data: clips of {d.num_frames} frames of {d.frame_size}×{d.frame_size} = {tokens_per_clip(self.cfg)} "
                f"tokens per clip; {where}")

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        n = self.cfg.noise
        item = dict(self.clips[index])
        rng = np.random.default_rng([self.cfg.data.seed, 5, int(index)])
        item["sigma"] = torch.tensor(draw_sigma(n, rng), dtype=torch.float32)
        k = int(rng.integers(1, n.max_context_frames + 1)) if rng.random() < n.context_prob else 0
        item["context"] = torch.tensor(k, dtype=torch.int64)
        item["noise_seed"] = torch.tensor(int(rng.integers(1 << 62)), dtype=torch.int64)
        return item


def validation_batch(cfg: WanTrainConfig, n: int = 8) -> dict[str, torch.Tensor]:
    """A fixed held-out batch: ``n`` clips of worlds ``VALIDATION_WORLD_SEED + i`` (never trained
    on), σ on the grid ``(i + 0.5) / n``, no context frames, fixed noise seeds. World clips only."""
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


@dataclass
class WanBatch:
    """One micro-batch on the training device: ``x0`` and ``noise`` (b, c, f, h, w) float32,
    ``sigma`` (b,) float32, ``context`` (b,) leading clean frames, ``actions`` (b, f) ids."""

    x0: torch.Tensor
    noise: torch.Tensor
    sigma: torch.Tensor
    context: torch.Tensor
    actions: torch.Tensor


def wan_batch(item: dict[str, torch.Tensor], device: torch.device | str,
              noise: torch.Tensor | None = None) -> WanBatch:
    """A loader batch of :class:`WanSamples` on ``device``: frames scaled there, noise drawn there
    from its seeds (or ``noise`` (b, f, c, h, w) given)."""
    frames = item["frames"].to(device, non_blocking=True)
    if noise is None:
        noise = sample_noise(item["noise_seed"], frames.shape[1:], device)
    return WanBatch(x0=rearrange(clip_frames(frames), "b f c h w -> b c f h w"),
                    noise=rearrange(noise.to(device, torch.float32), "b f c h w -> b c f h w"),
                    sigma=item["sigma"].to(device, torch.float32), context=item["context"].to(device, non_blocking=True),
                    actions=item["actions"].to(device, non_blocking=True))


def loss_elements(items: list[dict[str, torch.Tensor]], device: torch.device | str = "cpu") -> torch.Tensor:
    """How many values of ``items`` (loader batches) carry loss, on ``device`` (no host wait):
    every channel of every frame after the context."""
    total = torch.zeros((), dtype=torch.int64, device=device)
    for item in items:
        b, f, c, h, w = item["frames"].shape
        total = total + (b * f - item["context"].to(device, non_blocking=True).sum()) * (c * h * w)
    return total.float()


def loss(model: nn.Module, batch: WanBatch, cond: WanMiniConditioning) -> torch.Tensor:
    """Summed squared velocity error of ``batch`` (float32 scalar), none on context frames. Divide by
    :func:`loss_elements` of the whole optimizer step (accumulation and processes included)."""
    b, _, f = batch.x0.shape[:3]
    # 1. the noisy clip
    s = batch.sigma.view(b, 1, 1, 1, 1)
    x_t = (1.0 - s) * batch.x0 + s * batch.noise
    # 2. context frames (clean, no loss) and the model's inputs
    context_mask = torch.arange(f, device=x_t.device)[None] < batch.context[:, None]  # (b, f)
    hidden = cond.model_input(x_t, batch.actions, batch.x0, context_mask)
    tokens = cond.action_tokens(batch.actions)
    # 3. velocity error where there is no context
    out = model(hidden, timestep=batch.sigma * 1000.0, encoder_hidden_states=tokens, return_dict=False)[0]
    err = (cond.velocity(out, x_t, batch.sigma) - cond.velocity_target(x_t, batch.x0, batch.noise, batch.sigma)) ** 2
    keep = (~context_mask).to(err.dtype)[:, None, :, None, None]
    return (err * keep).sum()


# ------------------------------------------------------------------------------- export, load


def cast_keeping_fp32(model: WanTransformer3DModel, dtype: torch.dtype) -> WanTransformer3DModel:
    """``model``'s parameters in ``dtype`` except Wan's ``_keep_in_fp32_modules`` (float32), as
    ``from_pretrained(torch_dtype=...)`` loads them."""
    keep = tuple(model._keep_in_fp32_modules or ())
    for name, param in model.named_parameters():
        if not any(k in name for k in keep):
            param.data = param.data.to(dtype)
    return model


def save_pipeline(model: WanTransformer3DModel, folder: Path, cfg: WanTrainConfig) -> None:
    """A ``WanMiniPipeline`` folder: ``model``, the scheduler with shift ``sample_shift``, the
    conditioning; safetensors shards ≤ ``checkpoint.shard_mb`` MiB (headers included)."""
    pipe = WanMiniPipeline(model, FlowMatchEulerDiscreteScheduler(shift=cfg.sample_shift), channels=3,
                           **asdict(cfg.condition))
    limit = int(cfg.checkpoint.shard_mb * 2**20)
    pipe.save_pretrained(str(folder), max_shard_size=limit - min(64 * 1024, limit // 8))  # room for the headers


def load_transformer(model: nn.Module, folder: Path, cfg: WanTrainConfig) -> None:
    """The weights of a saved wan-mini pipeline folder (``folder/transformer``) into ``model``, as
    float32; ValueError when it is not one or was saved for another model config."""
    sub = folder / "transformer"
    if not (sub / "config.json").is_file():
        raise ValueError(f"init_from={cfg.init_from}: not a saved wan-mini pipeline folder (no transformer/config.json)")
    saved = json.loads((sub / "config.json").read_text())
    want = {k: (list(v) if isinstance(v, tuple) else v) for k, v in model_kwargs(cfg).items()}
    diff = config_diff({k: saved.get(k) for k in want}, want, "there", "model.")
    if diff:
        raise ValueError(f"init_from={cfg.init_from} was saved for another model config: {diff}")
    weights = WanTransformer3DModel.from_pretrained(str(sub)).state_dict()
    model.load_state_dict({k: v.float() for k, v in weights.items()})
