"""``TrainConfig``: one ``vidhash train`` run, as an OmegaConf structured dataclass.

    python -c "from vidhash.training import load_train_config; print(load_train_config('configs/train/world_tiny.yaml'))"

:func:`vidhash.training.recipes.load_train_config` reads one: a YAML file (``configs/train/*.yaml``) is merged onto the dataclass, then ``key=value``
overrides; an unknown key or a value of the wrong type is a ValueError naming the key.

``model_family`` names the model the trainer builds, trains and exports
(:mod:`vidhash.training.families`; ``vidhash``, the default, is ``VidHashTransformer3DModel``) and
with it the config class: ``TrainConfig`` here, a subclass with the family's own sections for
another (``wan``: :class:`vidhash.training.wan_family.WanTrainConfig`). :func:`check_train_config`
checks the run's keys and asks the family to check its sections.

``vidhash``'s sections: ``model`` (``VidHashTransformer3DModel``'s constructor arguments: a
dataclass made from its signature, :func:`vidhash.presets.model_arguments`, so names, types and
defaults are the constructor's), ``data`` (world pool or mp4 folder, clip length, trajectories),
``noise`` (rectified-flow noise levels per chunk), ``temporal_mode``, ``selection``. Every
family's: ``optim`` (AdamW, warmup + cosine, clipping), ``ema``, ``checkpoint``, the loader's
``data.num_workers`` … and the run itself (steps, batch, precision, output folder, time budget,
validation).

World seeds: training draws worlds from ``data.world_seed_start`` .. ``+ data.num_worlds - 1``,
which must stay below ``HELDOUT_WORLD_SEED`` (1,000,000); seeds ≥ 1,000,000 are held out for
evaluation (``vidhash eval world``) and never trained on.
"""
from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from vidhash.data.world import HELDOUT_WORLD_SEED  # world seeds >= this are evaluation-only
from vidhash.memory import MemoryRead, MemorySignature
from vidhash.models.transformer_vidhash import VidHashTransformer3DModel
from vidhash.presets import model_arguments, model_defaults

DATA_SOURCES = ("world", "video")
TRAJECTORIES = ("out_and_back", "random", "mixed")
SIGMA_SAMPLING = ("uniform", "logit_normal")
TEMPORAL_MODES = ("dense", "selected")
PRECISIONS = ("no", "bf16", "fp16")


@dataclass
class DataConfig:
    source: str = "world"  # world | video
    num_frames: int = 48  # frames per training clip (a multiple of noise.chunk_frames)
    seed: int = 0  # base of every per-sample seed (world choice, trajectory, noise)
    # -- procedural world
    world_seed_start: int = 0
    num_worlds: int = 100_000  # training worlds: world_seed_start .. world_seed_start + num_worlds - 1
    pool_size: int = 32  # worlds alive at once (one build of ~60 ms at size 512, shared by the machine: world_cache)
    clips_per_world: int = 16  # average clips per world before the pool moves on
    world_size: int = 512
    view: int = 64  # frame side (= model frame size)
    step: int = 4  # camera pixels per move
    trajectory: str = "mixed"  # out_and_back | random | mixed (half each)
    revisit: float = 0.8  # RandomTrajectory's probability of walking back to an earlier waypoint
    reach: int = 48  # RandomTrajectory waypoints within ± reach pixels
    # -- folders of mp4
    video_root: Optional[str] = None
    frame_stride: int = 1
    # -- loading
    num_workers: int = 2  # DataLoader workers per process (0: in the main process)
    prefetch_factor: int = 4  # batches loaded ahead per worker (with num_workers > 0)
    pin_memory: bool = True  # pinned host batches (CUDA only): asynchronous host-to-device copies
    # physical cores kept for each process's main thread (Linux; vidhash.training.affinity): the data
    # workers of all processes run on the other cores. 0: no pinning
    reserve_cores: int = 0
    # built worlds shared by all workers and processes on the machine (vidhash.data.world_cache):
    # "auto" (/dev/shm/vidhash-worlds-<uid>, else the temp dir), a folder, or "off" (each worker builds)
    world_cache: str = "auto"


@dataclass
class NoiseConfig:
    chunk_frames: int = 4  # frames sharing one noise level (= generation chunk_frames)
    sigma_sampling: str = "uniform"  # uniform | logit_normal
    logit_mean: float = 0.0
    logit_std: float = 1.0
    clean_prob: float = 0.35  # share of chunks kept clean (sigma = 0, no loss): context for later chunks
    first_clean_prob: float = 0.5  # the first chunk is clean with this probability instead
    window_frames: int = 8  # generation window, only used to measure revisits beyond it


@dataclass
class OptimConfig:
    lr: float = 3e-4
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 200
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.01
    eps: float = 1e-8
    grad_clip: float = 1.0  # max grad norm; 0 = off
    rewarm_steps: int = 100  # init_from continuing an export's run (new AdamW moments): linear LR ramp over these steps
    # AdamW's fused kernel (one launch for all parameters instead of several per group): "auto" = on
    # CUDA, "on", "off" (PyTorch's default foreach path; the only one before 2026-11-30)
    fused: str = "auto"


@dataclass
class EMAConfig:
    decay: float = 0.999
    warmup: bool = True  # decay = min(decay, (1 + step) / (10 + step))


@dataclass
class CheckpointConfig:
    every: int = 500  # steps between checkpoints (also at the end, on SIGTERM / Ctrl-C, at --max-minutes)
    keep: int = 1  # complete checkpoints kept (the newest)
    shard_mb: float = 15.0  # largest file in a checkpoint (files over 16 MB do not come back from GPU runs)
    moments_dtype: str = "fp32"  # fp32 (exact resume) | bf16 (Adam moments halved; resume then not bitwise exact)


@dataclass(frozen=True)
class SelectionConfig(MemorySignature):
    """temporal_mode=selected: the model's training-time selection (``forward(temporal_select=...)``):
    exact over the chunk and ``window_frames`` before it, top-``top_k`` older tokens per query by
    signature — the SimHash of a generation memory (``n_bits``, ``seed``: the
    :class:`~vidhash.memory.MemorySignature` fields; a model's learned hash instead when it has one).
    ``top_k`` is a :class:`~vidhash.memory.MemoryRead` width (here always a number: every older
    token is a candidate)."""

    window_frames: int = 8
    top_k: int = 32
    hash_grad: bool = True

    def __post_init__(self):
        MemorySignature.__post_init__(self)
        MemoryRead(top_k=self.top_k)  # validates top_k
        if not isinstance(self.window_frames, int) or isinstance(self.window_frames, bool) or self.window_frames < 0:
            raise ValueError(f"selection.window_frames must be an int ≥ 0, got {self.window_frames!r}")


ModelArguments = model_arguments()  # the model section: VidHashTransformer3DModel's constructor arguments


@dataclass
class TrainConfig:
    out_dir: str = "out/train"  # checkpoints/, loss.csv, export/, config.yaml
    seed: int = 0
    max_steps: int = 1000
    batch_size: int = 8  # clips per optimizer step, over all processes and accumulation steps
    grad_accum: int = 1  # micro-batches per optimizer step (per process)
    mixed_precision: str = "no"  # no | bf16 | fp16
    temporal_mode: str = "dense"  # dense (chunk-causal over the whole clip) | selected (the inference selection)
    gradient_checkpointing: bool = False
    compile: bool = False  # torch.compile each transformer block (regional compilation; same math, fused elementwise ops)
    log_every: int = 10  # CSV row + progress bar update every this many steps
    export_dir: Optional[str] = None  # EMA pipeline folder at the end (default out_dir/export)
    export_dtype: str = "auto"  # auto (fp32 if it fits export_max_mb, else fp16) | fp32 | fp16 | bf16
    export_max_mb: float = 20.0
    max_minutes: float = 0.0  # stop cleanly with a checkpoint after this much wall time (0 = no limit)
    # with a time limit: re-estimate max_steps from the measured step rate (after 50, 100, 200, ... steps
    # of this run) so the cosine schedule ends at the deadline instead of being cut mid-way. Changes
    # max_steps during the run, so an exact resume needs it off.
    fit_schedule: bool = False
    # -- multi-process (DDP through accelerate's DistributedDataParallelKwargs; defaults = PyTorch's)
    ddp_bucket_cap_mb: float = 25.0  # gradient all-reduce bucket size
    ddp_static_graph: bool = False  # same graph every step: DDP can skip per-step bookkeeping
    ddp_gradient_as_bucket_view: bool = False  # gradients are views into the buckets (no copy in/out)
    ddp_split_compiled: bool = True  # torch._dynamo.config.optimize_ddp: split compiled graphs at bucket bounds
    # fresh start only: a pipeline folder whose transformer weights start the model and EMA; with a
    # train_state.json (export_train_state) its run continues: step, data position, schedule, loss log
    init_from: Optional[str] = None
    model_family: str = "vidhash"  # the model trained and exported: a name in vidhash.training.families.FAMILIES (picks the config class)
    # -- runs chained over several calls (e.g. 10-minute GPU calls), each continuing the last
    # > 0: after fit_after steps of a call, max_steps is set once from the measured step time so that
    # the cosine schedule ends after this much training time over all calls; later calls (resume, or
    # init_from of an export with train_state.json) continue that max_steps while the budget is the same
    # (`vidhash train` calls that name neither budget_minutes nor max_steps keep the run's schedule, whatever the YAML says)
    budget_minutes: float = 0.0
    fit_after: int = 50  # steps of a call after which fit_schedule / budget_minutes measure the step time
    val_every: int = 0  # validation loss of model and EMA on the family's held-out batch at these steps' log rows and each call's end (0: none)
    val_clips: int = 8  # clips of that batch
    export_train_state: bool = False  # train_state.json in the export: init_from= of it continues the run with new AdamW moments
    model: ModelArguments = field(default_factory=ModelArguments)
    data: DataConfig = field(default_factory=DataConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)


def resolve_config_path(path: str) -> Path:
    """A YAML path, or a preset name under configs/train/ (``world_tiny``)."""
    p = Path(path)
    if p.is_file():
        return p
    if not p.suffix and "/" not in path:
        try:
            from importlib.resources import files

            cand = files("vidhash.configs").joinpath("train", path + ".yaml")
            if cand.is_file():
                return Path(str(cand))
        except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError):
            pass
        repo = Path(__file__).resolve().parents[2] / "configs" / "train" / (path + ".yaml")
        if repo.is_file():
            return repo
    raise FileNotFoundError(f"training config {path} not found (a YAML file or a name in configs/train/)")


def model_supports_selection() -> str | None:
    """The ``VidHashTransformer3DModel.forward`` keyword for training-time selection, or None."""
    from vidhash.models.transformer_vidhash import VidHashTransformer3DModel

    params = inspect.signature(VidHashTransformer3DModel.forward).parameters
    for name in ("temporal_select",):
        if name in params:
            return name
    return None


def fused_mode(setting) -> str:
    """``optim.fused`` as "auto", "on" or "off" (YAML and overrides may turn on/off into booleans)."""
    s = str(setting).lower()
    mode = {"true": "on", "false": "off"}.get(s, s)
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"optim.fused must be auto, on or off, got {setting!r}")
    return mode


def check_train_config(cfg: TrainConfig, family) -> None:
    """Values a type check cannot catch; ValueError naming the key. The run's keys here; the model
    family's sections (``model``, ``data``, ``noise`` …) by its ``check`` (``family``: the
    ``ModelFamily`` of ``cfg.model_family``; :func:`vidhash.training.recipes.load_train_config`
    passes it — this module does not import the families, which import it)."""
    for key in ("max_steps", "batch_size", "grad_accum", "log_every"):
        _positive(key, getattr(cfg, key))
    _positive("data.prefetch_factor", cfg.data.prefetch_factor)
    _positive("ddp_bucket_cap_mb", cfg.ddp_bucket_cap_mb)
    if cfg.data.num_workers < 0:
        raise ValueError(f"data.num_workers must be >= 0, got {cfg.data.num_workers}")
    fused_mode(cfg.optim.fused)  # raises on a value that is not auto, on or off
    if cfg.data.reserve_cores < 0:
        raise ValueError(f"data.reserve_cores must be >= 0, got {cfg.data.reserve_cores}")
    _positive("checkpoint.every", cfg.checkpoint.every)
    _positive("checkpoint.keep", cfg.checkpoint.keep)
    _positive("checkpoint.shard_mb", cfg.checkpoint.shard_mb)
    _positive("optim.lr", cfg.optim.lr)
    if cfg.max_minutes < 0:
        raise ValueError(f"max_minutes must be >= 0, got {cfg.max_minutes}")
    if cfg.mixed_precision is False or cfg.mixed_precision == "False":  # YAML 1.1 reads a bare `no` as false
        cfg.mixed_precision = "no"
    if cfg.mixed_precision not in PRECISIONS:
        raise ValueError(f"mixed_precision must be one of {', '.join(PRECISIONS)}, got {cfg.mixed_precision!r}")
    if cfg.export_dtype not in ("auto", "fp32", "fp16", "bf16"):
        raise ValueError(f"export_dtype must be auto, fp32, fp16 or bf16, got {cfg.export_dtype!r}")
    if not 0 <= cfg.ema.decay < 1:
        raise ValueError(f"ema.decay must be in [0, 1), got {cfg.ema.decay}")
    if not 0 <= cfg.optim.min_lr_ratio <= 1:
        raise ValueError(f"optim.min_lr_ratio must be in [0, 1], got {cfg.optim.min_lr_ratio}")
    if cfg.checkpoint.moments_dtype not in ("fp32", "bf16"):
        raise ValueError(f"checkpoint.moments_dtype must be fp32 or bf16, got {cfg.checkpoint.moments_dtype!r}")
    check_chained_runs(cfg)
    family.check(cfg)


def check_chained_runs(cfg: TrainConfig) -> None:
    """The keys of runs chained over calls: budget, validation, re-warming."""
    _positive("fit_after", cfg.fit_after)
    for key, value in (("budget_minutes", cfg.budget_minutes), ("val_every", cfg.val_every),
                       ("optim.rewarm_steps", cfg.optim.rewarm_steps)):
        if value < 0:
            raise ValueError(f"{key} must be >= 0, got {value}")
    if cfg.budget_minutes > 0 and cfg.fit_schedule:
        raise ValueError("fit_schedule and budget_minutes both fit max_steps (to this call's time, to the "
                         "budget over all calls): set one")
    if cfg.val_every:
        _positive("val_clips", cfg.val_clips)
        if cfg.val_every % cfg.log_every:
            raise ValueError(f"val_every ({cfg.val_every}) must be a multiple of log_every ({cfg.log_every}): "
                             "validations go into log rows")


def check_vidhash_sections(cfg: TrainConfig) -> None:
    """The ``vidhash`` family's sections (``model``, ``data``, ``noise``, ``temporal_mode``,
    ``selection``); ValueError naming the key."""
    for key in ("num_frames", "pool_size", "clips_per_world", "world_size", "view", "step", "num_worlds", "frame_stride"):
        _positive(f"data.{key}", getattr(cfg.data, key))
    _positive("noise.chunk_frames", cfg.noise.chunk_frames)
    d = cfg.data
    if d.source not in DATA_SOURCES:
        raise ValueError(f"data.source must be one of {', '.join(DATA_SOURCES)}, got {d.source!r}")
    if d.trajectory not in TRAJECTORIES:
        raise ValueError(f"data.trajectory must be one of {', '.join(TRAJECTORIES)}, got {d.trajectory!r}")
    if d.num_frames % cfg.noise.chunk_frames:
        raise ValueError(f"data.num_frames ({d.num_frames}) must be a multiple of noise.chunk_frames "
                         f"({cfg.noise.chunk_frames})")
    if d.source == "world":
        if d.world_seed_start < 0 or d.world_seed_start + d.num_worlds > HELDOUT_WORLD_SEED:
            raise ValueError(f"data.world_seed_start + data.num_worlds must stay in [0, {HELDOUT_WORLD_SEED}): "
                             f"world seeds >= {HELDOUT_WORLD_SEED} are held out for evaluation")
        if d.view != cfg.model.sample_size:
            raise ValueError(f"data.view ({d.view}) must equal model.sample_size ({cfg.model.sample_size})")
        if d.world_size % d.step or d.world_size < 2 * d.view:
            raise ValueError(f"data.world_size ({d.world_size}) must be a multiple of data.step and >= 2·data.view")
    elif d.video_root is None:
        raise ValueError("data.video_root must be set when data.source is video")
    if d.view % cfg.model.patch_size:
        raise ValueError(f"data.view ({d.view}) must be a multiple of model.patch_size ({cfg.model.patch_size})")
    VidHashTransformer3DModel.check_arguments(**asdict(cfg.model), prefix="model.")
    n = cfg.noise
    if n.sigma_sampling not in SIGMA_SAMPLING:
        raise ValueError(f"noise.sigma_sampling must be one of {', '.join(SIGMA_SAMPLING)}, got {n.sigma_sampling!r}")
    for key in ("clean_prob", "first_clean_prob"):
        if not 0 <= getattr(n, key) < 1:
            raise ValueError(f"noise.{key} must be in [0, 1), got {getattr(n, key)}")
    if cfg.temporal_mode not in TEMPORAL_MODES:
        raise ValueError(f"temporal_mode must be one of {', '.join(TEMPORAL_MODES)}, got {cfg.temporal_mode!r}")
    if cfg.temporal_mode == "selected" and model_supports_selection() is None:
        raise ValueError("temporal_mode=selected: this VidHashTransformer3DModel.forward has no training-time "
                         "selection keyword yet; train with temporal_mode=dense (chunk-causal) until it does")


def _positive(key: str, value: float) -> None:
    if value <= 0:
        raise ValueError(f"{key} must be positive, got {value}")


LATER_MODEL_KEYS = ("prediction", "sigma_min")


def model_fingerprint(cfg: TrainConfig) -> str:
    """Hash of what a checkpoint's tensors depend on: the model config (and temporal mode)."""
    import hashlib
    import json

    model = asdict(cfg.model)
    defaults = model_defaults()
    for key in LATER_MODEL_KEYS:  # keys added after checkpoints existed: at their default, fingerprints stay as they were
        if model[key] == defaults[key]:
            del model[key]
    blob = json.dumps({"model": model}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def to_yaml_text(cfg: TrainConfig) -> str:
    from vidhash.config import to_yaml

    return to_yaml(cfg)


def selection_arg(cfg: TrainConfig) -> dict:
    """The ``temporal_select`` dict passed to the model in temporal_mode=selected."""
    return asdict(cfg.selection)
