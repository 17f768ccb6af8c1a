"""Plan of ``vidhash eval world``: options, the checks made before any model loads, the resolved
generation settings and the list of runs (seed × horizon × mode × setting), with the ones skipped.

    from vidhash.eval.world import WorldEvalOptions, check_options, plan_runs
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

SCHEMA = "vidhash-eval-world/1"
DEFAULT_SEEDS = (1_000_000, 1_000_001)
DEFAULT_HORIZONS = (10.0, 60.0, 300.0)
MODES = ("hashed", "window", "full", "random-sig")
SETTINGS = ("given", "self")
GIVEN_KEYS = ("return_psnr", "return_ssim", "away_psnr", "away_ssim")
SELF_KEYS = ("self_psnr", "self_ssim", "visit_psnr", "visit_ssim", "return_psnr", "return_ssim", "away_psnr", "away_ssim")
REALISM_KEYS = ("away_realism", "away_real_share")  # both settings; vidhash.metrics.realism
# the memory reads' selection (vidhash.selection.memory_read): share of the exact top-k kept, mass kept,
# the exact top-k's mass (oracle), their ratio, and the reads measured (None: no top-k read ran eagerly)
MEMORY_KEYS = ("memory_topk_recall", "memory_recall", "memory_oracle", "memory_ratio", "memory_reads")
TIME_PARTS = ("setup", "ground_truth", "generation", "metrics", "realism")
METRIC_KEYS = tuple(dict.fromkeys(GIVEN_KEYS + SELF_KEYS + REALISM_KEYS + MEMORY_KEYS))


@dataclass
class WorldEvalOptions:
    model: str
    seeds: tuple[int, ...] = DEFAULT_SEEDS
    horizons: tuple[float, ...] = DEFAULT_HORIZONS
    fps: int = 8
    modes: tuple[str, ...] = MODES
    visit_seconds: float = 2.0
    steps: int | None = None  # denoising steps per chunk; None: the model's generation preset
    guidance_scale: float | None = None  # context guidance; None: the preset's (1 = off)
    guidance_steps: int | None = None  # guided steps per chunk; None: the preset's
    frame_size: int | None = None  # None: the preset's (smaller only for smoke tests)
    full_max_seconds: float = 60.0
    device: str = "auto"
    dtype: str = "float32"
    json: str | None = None
    plot: str | None = None
    progress: bool = True
    cuda_graphs: bool | None = None  # enable_cuda_graphs (frames unchanged); None: on for CUDA
    memory: tuple[str, ...] = ()  # key=value overrides of the preset's memory config (e.g. "num_buckets=1024")
    recall_every: int = 1  # measure the memory read's recall on every N-th read (the reference is slow on a CPU)
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------- checks


def check_options(o: WorldEvalOptions) -> None:
    """Everything that can be checked before loading a model; ValueError naming the problem."""
    if not o.seeds:
        raise ValueError("--seeds is empty")
    if len(set(o.seeds)) != len(o.seeds):
        raise ValueError(f"--seeds has repeats: {list(o.seeds)}")
    if any(s < 0 for s in o.seeds):
        raise ValueError(f"--seeds must be non-negative, got {list(o.seeds)}")
    if not o.horizons or any(not (h > 0) or not math.isfinite(h) for h in o.horizons):
        raise ValueError(f"--horizons must be positive seconds, got {list(o.horizons)}")
    if len(set(o.horizons)) != len(o.horizons):
        raise ValueError(f"--horizons has repeats: {list(o.horizons)}")
    if o.fps <= 0:
        raise ValueError(f"--fps must be positive, got {o.fps}")
    unknown = [m for m in o.modes if m not in MODES]
    if unknown or not o.modes:
        raise ValueError(f"unknown mode(s) {unknown}; modes: {', '.join(MODES)}")
    if len(set(o.modes)) != len(o.modes):
        raise ValueError(f"--modes has repeats: {list(o.modes)}")
    if not o.visit_seconds > 0 or round(o.visit_seconds * o.fps) < 1:
        raise ValueError(f"--visit-seconds must give at least one frame at {o.fps} fps, got {o.visit_seconds}")
    if o.steps is not None and o.steps <= 0:
        raise ValueError(f"--steps must be positive, got {o.steps}")
    from vidhash.generation_config import check_guidance

    try:
        check_guidance(1.0 if o.guidance_scale is None else o.guidance_scale, o.guidance_steps)
    except ValueError as err:
        raise ValueError(f"--{str(err).replace('_', '-')}") from None
    if o.frame_size is not None and o.frame_size <= 0:
        raise ValueError(f"--frame-size must be positive, got {o.frame_size}")
    if not (isinstance(o.recall_every, int) and o.recall_every >= 1):
        raise ValueError(f"--recall-every must be a positive int, got {o.recall_every!r}")
    if not o.full_max_seconds >= 0:
        raise ValueError(f"--full-max-seconds must be >= 0, got {o.full_max_seconds}")
    if o.dtype not in ("float32", "bfloat16"):
        raise ValueError(f"--dtype must be float32 or bfloat16, got {o.dtype!r}")
    if o.model is None:
        raise ValueError("give a model: a saved pipeline folder, or random-tiny")
    if not o.model.startswith("random-"):
        path = Path(o.model)
        if not path.exists():
            raise FileNotFoundError(f"model folder {path} does not exist")
        if not (path / "model_index.json").is_file():
            raise ValueError(f"model {path}: not a saved pipeline folder (no model_index.json)")
        from vidhash.presets import check_not_wan_mini

        check_not_wan_mini(o.model)
    for flag, path in (("--json", o.json), ("--plot", o.plot)):
        if path:
            folder = Path(path).resolve().parent
            if not folder.is_dir():
                raise FileNotFoundError(f"{flag} {path}: folder {folder} does not exist")
            if not os.access(folder, os.W_OK):
                raise PermissionError(f"{flag} {path}: folder {folder} is not writable")
    if o.plot:
        check_plot(o.plot)


def check_plot(path: str) -> None:
    """``--plot PATH``: a .png, and matplotlib importable."""
    if not path.lower().endswith(".png"):
        raise ValueError(f"--plot {path} must end in .png")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ValueError("--plot needs matplotlib (pip install matplotlib), or redraw later with --from-json") from None


# ---------------------------------------------------------------------------------- plan


@dataclass
class Run:
    seed: int
    horizon_s: float
    mode: str
    setting: str
    gap_frames: int
    frames: int  # generated frames
    context: int  # given (committed) frames
    skip: str | None = None
    same_as: str | None = None


def resolve_settings(o: WorldEvalOptions, pipe, preset: str) -> dict:
    """The generation settings of every run (the JSON's ``generation``): the pipeline's own
    (``pipe.generation_config``: saved with it, else its size's ``preset``), then ``o``'s."""
    from vidhash.config import apply_overrides

    gen = apply_overrides(pipe.generation_config, [f"memory.{kv}" for kv in o.memory])
    size = o.frame_size or gen.height
    if gen.height != gen.width and o.frame_size is None:
        raise ValueError(f"the {preset} preset's frames are {gen.height}×{gen.width}; the world view is square")
    pipe.transformer.tokens_per_frame(size, size)
    steps = o.steps or gen.num_inference_steps
    scale = gen.guidance_scale if o.guidance_scale is None else o.guidance_scale
    guided = gen.guidance_steps if o.guidance_steps is None else o.guidance_steps
    memory = asdict(gen.memory)
    if memory.get("select") == "candidates":  # the default read kernel (speed only): results saved before the
        del memory["select"]  # setting existed keep their merge key
    g = {"preset": preset, "height": size, "width": size, "chunk_frames": gen.chunk_frames,
         "window_frames": gen.window_frames, "num_inference_steps": steps, "action_step": gen.action_step,
         "memory": memory, "world_size": int(pipe.transformer.config.pos_period)}
    if scale != 1:  # results without guidance keep the settings (and the merge key) they had before it existed
        g.update(guidance_scale=scale, guidance_steps=guided)
    return g


def kv_bytes(pipe, g: dict, frames: int, dtype) -> int:
    """Bytes of the K/V the ``full`` mode keeps for ``frames`` frames (every layer)."""
    cfg = pipe.transformer.config
    tokens = pipe.transformer.tokens_per_frame(g["height"], g["width"])
    return 2 * cfg.num_layers * cfg.hidden_dim * tokens * frames * dtype.itemsize


def available_bytes(device) -> int:
    """Free memory of ``device`` (CUDA: free device memory; CPU: MemAvailable)."""
    import torch

    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62


def plan_runs(o: WorldEvalOptions, g: dict, visit: int, learned: bool, full_bytes, available: int) -> list[Run]:
    """Every run of ``o`` (horizon, seed, mode, setting), ``full`` ones skipped past ``--full-max-seconds``
    or when ``full_bytes(frames)`` exceeds half of ``available``; ``random-sig`` shares ``hashed``'s run
    when the model has no learned signatures."""
    from ..trajectory import min_gap_frames

    runs = []
    min_gap = min_gap_frames(g["height"], g["action_step"])
    for h in o.horizons:
        gap = int(round(h * o.fps))
        if gap < min_gap:
            raise ValueError(f"horizon {h:g} s is {gap} frames at {o.fps} fps; leaving a {g['height']}-pixel view and "
                             f"coming back needs at least {min_gap} frames ({min_gap / o.fps:g} s)")
        for seed in o.seeds:
            for mode in o.modes:
                for setting in SETTINGS:
                    frames, context = (gap + visit, visit) if setting == "given" else (gap + 2 * visit, 0)
                    run = Run(seed, float(h), mode, setting, gap, frames, context)
                    if mode == "full":
                        need = full_bytes(gap + 2 * visit)
                        if h > o.full_max_seconds:
                            run.skip = f"beyond --full-max-seconds ({o.full_max_seconds:g} s)"
                        elif need > available // 2:
                            run.skip = f"would not fit: {need / 2**30:.1f} GiB of K/V, {available / 2**30:.1f} GiB free"
                    if mode == "random-sig" and not learned:
                        run.same_as = "hashed"
                    runs.append(run)
    return runs
