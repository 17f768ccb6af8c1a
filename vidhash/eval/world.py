"""World-model memory on held-out worlds: see a place, wander away for a horizon, come back.

    vidhash eval world PIPELINE_DIR|random-tiny [--seeds 1000000,1000001] [--horizons 10,60,300] [--fps 8]
        [--modes hashed,window,full,random-sig] [--json out.json] [--plot out.png] [--device auto]
        [--dtype float32|bfloat16] [--full-max-seconds 60]

For every held-out world seed (worlds ≥ 1,000,000 are never used in training) and horizon, the
camera follows a loop (:mod:`vidhash.eval.trajectory`): a **first visit** of a landmark (a
straight path of ``--visit-seconds``), **away** for the horizon (out of view of everything the
visit saw, except the first and last ``view/step`` frames that leave and approach along the
visit line), and a **return** over the visit poses in reverse. Every generated frame is at a
known pose, so the world renders its ground truth.

Two runs per (seed, horizon, mode), with the same noise in every mode:

* ``given`` — the first visit is given: its ground-truth frames are a frame prompt
  (``context_frames``), committed into the window and then the memory exactly as generated
  frames are; the model generates away + return. Metrics: return vs ground truth
  (``return_psnr``, ``return_ssim``) and away vs ground truth (``away_psnr``, a sanity number:
  the model cannot know unseen places, so this is its floor).
* ``self`` — nothing is given: the model generates the first visit too. Metrics: each return
  frame vs the model's own first-visit frame at the same pose (``self_psnr``, ``self_ssim``: the
  fair test where the first visit was invented), plus visit/return/away vs ground truth.

Modes (memory config of the state; same model): ``hashed`` — window + ``HashedMemory`` read
with the model's signatures (learned ``LearnedHash`` when the model has them, else SimHash);
``window`` — the window only (the no-memory baseline); ``full`` — every past frame attended
densely, skipped beyond ``--full-max-seconds`` of horizon or when its K/V would not fit;
``random-sig`` — hashed memory read with untrained random SimHash signatures of the same bit
width (for a model without learned signatures this is ``hashed`` itself, reported once and
copied, marked ``same_as``).

PSNR is per frame on RGB uint8 (dB, capped at 100), SSIM on luma (Gaussian σ 1.5), both from
:mod:`vidhash.metrics.short_range`, averaged over the frames of the segment, then over seeds.

Realism (both settings, no reference: does invented ground look like a world at all?):
``away_realism`` is the mean normalised distance of the away frames' 8×8 patches to a bank of
real patches of other worlds at the model's world size, ``away_real_share`` the share of them
within the distance that covers 95 % of real patches (:mod:`vidhash.metrics.realism`; real
frames ≈ 0.85 and 0.95, lower distance = more real; docs/realism.md).

JSON (``--json``; stable keys, ``"schema": "vidhash-eval-world/1"``): ``complete`` (false in the copy
rewritten after every seed × horizon while the run goes on), ``model``, ``learned_signatures``,
``device``, ``dtype``, ``fps``, ``seeds``, ``horizons_s``, ``modes``, ``generation`` (resolved
settings), ``trajectory`` (visit/leave frames, step, view, world size), ``rows`` (one per
seed × horizon × mode × setting: ``seed``, ``horizon_s``, ``mode``, ``setting``, ``status``
``ok|skipped``, ``note``, ``same_as``, ``gap_frames``, ``frames``, ``seconds`` and the metric keys
above, null where not measured), ``summary[mode][horizon]`` (means over seeds:
``return_psnr``, ``return_ssim``, ``away_psnr``, ``away_ssim`` of ``given``; ``self_psnr``,
``self_ssim``, ``self_return_psnr`` of ``self``; ``away_realism``, ``away_real_share`` of ``given`` and
``self_away_realism``, ``self_away_real_share`` of ``self``; ``n_seeds``; ``self_psnr_vs_window``), ``targets``
(issue 5's checks on self-consistency PSNR) and ``timing`` (``frames`` generated, ``seconds``,
``frames_per_s``, the warm-up's rate and the estimate). ``--plot`` draws the metrics against
the horizon, one line per mode; ``--from-json`` redraws table and plot from a saved JSON.

Deterministic: seeds fix worlds, loops and noise (bitwise on CPU).
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

SCHEMA = "vidhash-eval-world/1"
HELDOUT_WORLD_SEED = 1_000_000  # world seeds >= this are never used in training (vidhash.training)
DEFAULT_SEEDS = (1_000_000, 1_000_001)
DEFAULT_HORIZONS = (10.0, 60.0, 300.0)
MODES = ("hashed", "window", "full", "random-sig")
SETTINGS = ("given", "self")
GIVEN_KEYS = ("return_psnr", "return_ssim", "away_psnr", "away_ssim")
SELF_KEYS = ("self_psnr", "self_ssim", "visit_psnr", "visit_ssim", "return_psnr", "return_ssim", "away_psnr", "away_ssim")
REALISM_KEYS = ("away_realism", "away_real_share")  # both settings; vidhash.metrics.realism
TIME_PARTS = ("setup", "ground_truth", "generation", "metrics", "realism")
METRIC_KEYS = tuple(dict.fromkeys(GIVEN_KEYS + SELF_KEYS + REALISM_KEYS))


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
    extra: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------- CLI


def _csv(kind, name: str):
    def parse(text: str):
        try:
            values = tuple(kind(x) for x in text.split(",") if x.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a comma-separated list of {kind.__name__}s, got {text!r}")
        if not values:
            raise argparse.ArgumentTypeError(f"{name} is empty")
        return values
    return parse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default=None,
                   help="saved pipeline folder (VidHashPipeline.save_pretrained), or random-tiny / random-small / random-base")
    p.add_argument("--memory", type=_csv(str, "--memory"), default=(),
                   help="comma-separated key=value overrides of the preset's memory config, "
                        "e.g. num_buckets=1024,slots=16,top_k=64 (every memory mode uses them)")
    p.add_argument("--seeds", type=_csv(int, "--seeds"), default=DEFAULT_SEEDS,
                   help=f"held-out world seeds (default {','.join(map(str, DEFAULT_SEEDS))}; training uses seeds below {HELDOUT_WORLD_SEED:,})")
    p.add_argument("--horizons", type=_csv(float, "--horizons"), default=DEFAULT_HORIZONS,
                   help="seconds of video between leaving the place and coming back (default 10,60,300)")
    p.add_argument("--fps", type=int, default=8, help="frames per second of video (default 8)")
    p.add_argument("--modes", type=_csv(str, "--modes"), default=MODES, help=f"comma-separated: {', '.join(MODES)}")
    p.add_argument("--visit-seconds", type=float, default=2.0, help="length of the first visit (default 2 s)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps per chunk (default: the model's generation preset)")
    p.add_argument("--guidance-scale", type=float, default=None,
                   help="context guidance scale (default: the model's generation preset; 1 = off)")
    p.add_argument("--guidance-steps", type=int, default=None,
                   help="guide the first N denoising steps of each chunk (default: the preset's)")
    p.add_argument("--frame-size", type=int, default=None, help="frame side in pixels (default: the preset's; smaller only for smoke tests)")
    p.add_argument("--full-max-seconds", type=float, default=60.0,
                   help="longest horizon the dense full-context baseline runs (default 60)")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="model dtype (bfloat16: CUDA only)")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--plot", default=None, help="write a PNG of metric against horizon here")
    p.add_argument("--from-json", default=None, nargs="+", metavar="JSON",
                   help="no run: print the table (and --plot) of a saved result; several results of the same model "
                        "and settings (e.g. runs cut by a time limit, or one per horizon) are merged")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=None,
                   help="replay steady chunks from CUDA graphs (VidHashPipeline.enable_cuda_graphs; same frames; "
                        "default: on for a CUDA device)")


def options_from_args(args: argparse.Namespace) -> WorldEvalOptions:
    return WorldEvalOptions(model=args.model, seeds=tuple(args.seeds), horizons=tuple(args.horizons), fps=args.fps,
                            modes=tuple(args.modes), visit_seconds=args.visit_seconds, steps=args.steps,
                            guidance_scale=args.guidance_scale, guidance_steps=args.guidance_steps,
                            frame_size=args.frame_size, full_max_seconds=args.full_max_seconds, device=args.device,
                            dtype=args.dtype, json=args.json, plot=args.plot, progress=not args.quiet,
                            memory=tuple(args.memory), cuda_graphs=getattr(args, "cuda_graphs", None))


def run(args: argparse.Namespace) -> int:
    if args.from_json:
        result = merge_results([_load_result(path) for path in args.from_json])
        if args.json:
            _write_atomic(args.json, lambda tmp: Path(tmp).write_text(json.dumps(result, indent=1)))
        print(format_table(result))
        if args.plot:
            _check_plot(args.plot)
            print(f"wrote {plot_result(result, args.plot)}")
        return 0
    if args.model is None:
        raise ValueError("give a model: a saved pipeline folder, or random-tiny")
    result = evaluate(options_from_args(args))
    print(format_table(result))
    return 0


def _load_result(path: str) -> dict:
    try:
        result = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"--from-json {path}: no such file") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"--from-json {path}: not JSON ({err})") from None
    if result.get("schema") != SCHEMA:
        raise ValueError(f"--from-json {path}: not a {SCHEMA} file")
    return result


MERGE_SAME = ("model", "learned_signatures", "dtype", "fps", "generation", "trajectory")


def merge_results(results: list[dict]) -> dict:
    """One result from several saved runs of the same model and settings (``MERGE_SAME`` equal):
    rows concatenated (a (seed, horizon, mode, setting) measured twice is an error), seeds,
    horizons and modes united, summary and targets recomputed; ``complete`` only if all were."""
    if len(results) == 1:
        return results[0]
    first = results[0]
    for r in results[1:]:
        diff = [k for k in MERGE_SAME if r.get(k) != first.get(k)]
        if diff:
            raise ValueError(f"--from-json: the results differ in {', '.join(diff)}; only runs of one model and "
                             f"settings merge")
    rows, seen = [], set()
    for r in results:
        for row in r["rows"]:
            key = (row["seed"], row["horizon_s"], row["mode"], row["setting"])
            if key in seen:
                raise ValueError(f"--from-json: seed {key[0]}, {key[1]:g} s, {key[2]} ({key[3]}) is in two results")
            seen.add(key)
            rows.append(row)

    def union(key):
        out = []
        for r in results:
            out += [x for x in r[key] if x not in out]
        return out

    merged = dict(first)
    merged.update(rows=rows, seeds=union("seeds"), horizons_s=sorted(union("horizons_s")),
                  modes=[m for m in MODES if m in union("modes")], complete=all(r.get("complete") for r in results),
                  merged_from=len(results))
    merged["full_max_seconds"] = max(r.get("full_max_seconds", 0) for r in results)
    merged["summary"] = summarize(rows, merged["modes"], merged["horizons_s"])
    merged["targets"] = targets(merged["summary"])
    if all("timing" in r for r in results):
        frames = sum(r["timing"].get("frames", 0) for r in results)
        seconds = round(sum(r["timing"].get("seconds", 0) for r in results), 3)
        merged["timing"] = {"frames": frames, "seconds": seconds, "frames_per_s": frames / seconds if seconds else 0.0}
        if all(r["timing"].get("parts_s") for r in results):  # older results have no parts: then none
            merged["timing"]["parts_s"] = {k: round(sum(r["timing"]["parts_s"].get(k, 0.0) for r in results), 3)
                                           for k in TIME_PARTS}
    return merged


def main(argv: list[str] | None = None) -> int:
    from vidhash.cli import main as cli_main

    return cli_main(["eval", "world", *(sys.argv[1:] if argv is None else argv)])


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
    from vidhash.config import check_guidance

    try:
        check_guidance(1.0 if o.guidance_scale is None else o.guidance_scale, o.guidance_steps)
    except ValueError as err:
        raise ValueError(f"--{str(err).replace('_', '-')}") from None
    if o.frame_size is not None and o.frame_size <= 0:
        raise ValueError(f"--frame-size must be positive, got {o.frame_size}")
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
    for flag, path in (("--json", o.json), ("--plot", o.plot)):
        if path:
            folder = Path(path).resolve().parent
            if not folder.is_dir():
                raise FileNotFoundError(f"{flag} {path}: folder {folder} does not exist")
            if not os.access(folder, os.W_OK):
                raise PermissionError(f"{flag} {path}: folder {folder} is not writable")
    if o.plot:
        _check_plot(o.plot)


def _check_plot(path: str) -> None:
    if not path.lower().endswith(".png"):
        raise ValueError(f"--plot {path} must end in .png")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ValueError("--plot needs matplotlib (pip install matplotlib), or redraw later with --from-json") from None


# ---------------------------------------------------------------------------------- model


def load_pipeline(model: str, device, dtype):
    """The pipeline of ``model`` (folder or ``random-<preset>``) on ``device`` in ``dtype``, and its preset name."""
    import torch

    from vidhash.config import preset_for_model
    from vidhash.pipelines import VidHashPipeline

    pipe, preset = VidHashPipeline.load(model), preset_for_model(model)
    pipe = pipe.to(device)
    if dtype != torch.float32:
        pipe.transformer.to(dtype)
        for _, module in learned_hashers(pipe.transformer):
            module.to(torch.float32)  # signatures stay float32 (the model keeps them so)
    pipe.set_progress_bar_config(disable=True)
    return pipe, preset


def learned_hashers(transformer) -> list[tuple[str, object]]:
    """(name, module) of every ``LearnedHash`` inside the transformer (the memory's learned signatures)."""
    from vidhash.hashing import LearnedHash

    return [(name, m) for name, m in transformer.named_modules() if isinstance(m, LearnedHash)]


def with_random_signatures(pipe, n_bits: int):
    """A pipeline sharing ``pipe``'s weights whose memories read untrained SimHash signatures of ``n_bits``:
    a copy of the transformer without its ``LearnedHash`` modules and with ``memory_hash_bits = 0``."""
    from vidhash.pipelines import VidHashPipeline

    model = copy.copy(pipe.transformer)  # shallow: shares parameters; module dicts copied below where changed
    model._modules = dict(model._modules)
    for name, _ in learned_hashers(pipe.transformer):
        parent_path, _, attr = name.rpartition(".")
        parent = model
        for part in parent_path.split(".") if parent_path else []:
            child = parent._modules[part]
            clone = copy.copy(child)
            clone._modules = dict(child._modules)
            parent._modules[part] = clone
            parent = clone
        parent._modules[attr] = None
    if "memory_hash_bits" in model.config:
        internal = dict(model._internal_dict)
        internal["memory_hash_bits"] = 0
        from diffusers.configuration_utils import FrozenDict

        model._internal_dict = FrozenDict(internal)
    out = VidHashPipeline(transformer=model, scheduler=pipe.scheduler)
    out.set_progress_bar_config(disable=True)
    return out


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


def _resolve(o: WorldEvalOptions, pipe, preset: str) -> dict:
    from vidhash.config import generation_config

    gen = generation_config(preset, [f"memory.{kv}" for kv in o.memory])
    size = o.frame_size or gen.height
    if gen.height != gen.width and o.frame_size is None:
        raise ValueError(f"the {preset} preset's frames are {gen.height}×{gen.width}; the world view is square")
    pipe.transformer.tokens_per_frame(size, size)
    steps = o.steps or gen.num_inference_steps
    scale = gen.guidance_scale if o.guidance_scale is None else o.guidance_scale
    guided = gen.guidance_steps if o.guidance_steps is None else o.guidance_steps
    g = {"preset": preset, "height": size, "width": size, "chunk_frames": gen.chunk_frames,
         "window_frames": gen.window_frames, "num_inference_steps": steps, "action_step": gen.action_step,
         "memory": asdict(gen.memory), "world_size": int(pipe.transformer.config.pos_period)}
    if scale != 1:  # results without guidance keep the settings (and the merge key) they had before it existed
        g.update(guidance_scale=scale, guidance_steps=guided)
    return g


def _guidance(g: dict) -> dict:
    """The pipeline's guidance keywords for resolved settings ``g`` (none recorded: off)."""
    return {"guidance_scale": g.get("guidance_scale", 1.0), "guidance_steps": g.get("guidance_steps")}


def _full_bytes(pipe, g: dict, frames: int, dtype) -> int:
    cfg = pipe.transformer.config
    tokens = pipe.transformer.tokens_per_frame(g["height"], g["width"])
    return 2 * cfg.num_layers * cfg.hidden_dim * tokens * frames * dtype.itemsize


def _available_bytes(device) -> int:
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
    from .trajectory import min_gap_frames

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


# ---------------------------------------------------------------------------------- metrics


def _gray(frames: np.ndarray) -> np.ndarray:
    import cv2

    return np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames])


def compare(a: np.ndarray, b: np.ndarray) -> tuple[float | None, float | None]:
    """Mean per-frame PSNR (dB) and SSIM of uint8 frame stacks ``(T, h, w, 3)``; None for none."""
    from vidhash.metrics.short_range import psnr, ssim

    if len(a) == 0:
        return None, None
    ga, gb = _gray(a), _gray(b)
    return (float(np.mean([psnr(x, y) for x, y in zip(a, b)])),
            float(np.mean([ssim(x, y) for x, y in zip(ga, gb)])))


def _metrics(setting: str, plan, frames: np.ndarray, truth: np.ndarray) -> dict:
    """``frames``: uint8 generated frames aligned with the whole loop (given: the visit is ground truth)."""
    out = dict.fromkeys(METRIC_KEYS)
    ret, away = plan.frames("return"), slice(plan.segments["visit"][1], plan.segments["return"][0])
    out["return_psnr"], out["return_ssim"] = compare(frames[ret], truth[ret])
    out["away_psnr"], out["away_ssim"] = compare(frames[away], truth[away])
    if setting == "self":
        vis = plan.frames("visit")
        out["visit_psnr"], out["visit_ssim"] = compare(frames[vis], truth[vis])
        out["self_psnr"], out["self_ssim"] = compare(frames[plan.pairs[:, 0]], frames[plan.pairs[:, 1]])
    return out


def _realism(plan, frames: np.ndarray, world_size: int, device=None) -> dict:
    """``away_realism`` / ``away_real_share`` of the away frames (:mod:`vidhash.metrics.realism`; the
    nearest-patch search on ``device``: on a GPU the 5-minute rows no longer spend minutes here)."""
    from vidhash.metrics.realism import realism

    away = frames[plan.segments["visit"][1]: plan.segments["return"][0]]
    if len(away) == 0:
        return dict.fromkeys(REALISM_KEYS)
    r = realism(away, world_size=int(world_size), device=device)
    return {"away_realism": r.distance, "away_real_share": r.real_share}


# ---------------------------------------------------------------------------------- run


def _noise_seed(seed: int, gap: int, setting: str) -> int:
    return int(np.random.SeedSequence([seed, gap, SETTINGS.index(setting), 0xE7A1]).generate_state(1, np.uint64)[0] >> 1)


def _memory(g: dict, mode: str, n_bits: int | None):
    from vidhash.config import TemporalMemoryConfig

    mem = dict(g["memory"], mode="hashed" if mode == "random-sig" else mode)
    if mode == "random-sig" and n_bits:
        mem["n_bits"] = n_bits
    return TemporalMemoryConfig(**mem)


def generate_loop(pipe, g: dict, plan, setting: str, mode: str, seed: int, truth: np.ndarray, n_bits=None,
                  on_chunk=None) -> np.ndarray:
    """uint8 frames ``(T, h, w, 3)`` of the whole loop: in ``given`` the visit is ``truth``'s."""
    import torch

    visit = plan.segments["visit"][1]
    start = visit if setting == "given" else 0
    frames = np.empty_like(truth)
    frames[:start] = truth[:start]
    kwargs = dict(height=g["height"], width=g["width"], chunk_frames=g["chunk_frames"], window_frames=g["window_frames"],
                  num_inference_steps=g["num_inference_steps"], action_step=g["action_step"],
                  memory=_memory(g, mode, n_bits), output_type="np", **_guidance(g),
                  generator=torch.Generator().manual_seed(_noise_seed(seed, int(plan.meta["gap_frames"]), setting)))
    if setting == "given":
        kwargs.update(context_frames=truth[:visit], context_poses=plan.poses[:visit], context_actions=plan.actions[:visit])
    for chunk in pipe.stream(len(truth) - start, poses=plan.poses[start:], actions=plan.actions[start:], **kwargs):
        f = chunk.frames[0]
        frames[chunk.frame_start : chunk.frame_start + len(f)] = np.round(f * 255).astype(np.uint8)
        if on_chunk is not None:
            on_chunk(len(f))
    return frames


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"--device {name!r}: {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available here")
    return device


def _throughput(pipe, g: dict) -> float:
    """Generated frames per second on a short warm-up (hashed memory, frames leaving the window)."""
    import torch

    kw = dict(height=g["height"], width=g["width"], chunk_frames=g["chunk_frames"], window_frames=g["window_frames"],
              num_inference_steps=g["num_inference_steps"], memory=_memory(g, "hashed", None), output_type="pt",
              **_guidance(g))
    n = g["window_frames"] + g["chunk_frames"]  # the last chunk's commit writes to the memory
    poses = np.stack([np.arange(n) * g["action_step"], np.zeros(n)], 1).astype(np.float64)
    sync = torch.cuda.synchronize if pipe.transformer.device.type == "cuda" else (lambda: None)
    for _ in pipe.stream(n, poses=poses, generator=torch.Generator().manual_seed(0), **kw):
        pass  # first pass: kernels compile and autotune (the memory's only once frames leave the window)
    sync()
    t0 = time.perf_counter()
    for _ in pipe.stream(n, poses=poses, generator=torch.Generator().manual_seed(0), **kw):
        pass
    sync()
    return n / max(time.perf_counter() - t0, 1e-9)


def evaluate(o: WorldEvalOptions) -> dict:
    """Run the evaluation of ``o`` (module docstring); returns the JSON-able result, written to
    ``o.json`` / ``o.plot`` when set."""
    import torch
    from tqdm.auto import tqdm

    from vidhash.data.world import ProceduralWorld

    from .trajectory import pick_place, plan_loop

    # 1. checks, model, resolved settings, plan — all before the long work
    t_eval = time.perf_counter()
    parts = dict.fromkeys(TIME_PARTS, 0.0)  # seconds per part of the evaluation (JSON timing.parts_s)
    check_options(o)
    device = _device(o.device)
    dtype = getattr(torch, o.dtype)
    if dtype == torch.bfloat16 and device.type != "cuda":
        raise ValueError("--dtype bfloat16 is for CUDA devices; use float32 on the CPU")
    low = [s for s in o.seeds if s < HELDOUT_WORLD_SEED]
    if low:
        print(f"warning: world seeds {low} are below {HELDOUT_WORLD_SEED:,}: training may have seen them", file=sys.stderr)
    pipe, preset = load_pipeline(o.model, device, dtype)
    g = _resolve(o, pipe, preset)
    hashers = learned_hashers(pipe.transformer)
    learned = bool(hashers)
    n_bits = int(pipe.transformer.config.get("memory_hash_bits", 0) or 0) or g["memory"]["n_bits"]
    sim_pipe = with_random_signatures(pipe, n_bits) if learned and "random-sig" in o.modes else None
    from vidhash.pipelines.cuda_graphs import use_cuda_graphs

    o = replace(o, cuda_graphs=use_cuda_graphs(o.cuda_graphs, device))  # resolved: the JSON records what ran
    if o.cuda_graphs:
        for p in (pipe, sim_pipe):
            if p is not None:
                p.enable_cuda_graphs()
    visit = int(round(o.visit_seconds * o.fps))
    runs = plan_runs(o, g, visit, learned, lambda f: _full_bytes(pipe, g, f, dtype), _available_bytes(device))
    todo = [r for r in runs if r.skip is None and r.same_as is None]
    total = sum(r.frames for r in todo)
    fps_gen = _throughput(pipe, g)
    estimate = total / fps_gen
    guide = f", guidance {g['guidance_scale']:g} on {g['guidance_steps'] or 'all'}" if "guidance_scale" in g else ""
    print(f"vidhash eval world: {o.model} ({preset} preset, {g['num_inference_steps']} steps/chunk{guide}, "
          f"{'learned' if learned else 'SimHash'} signatures) on {device} {o.dtype}\n"
          f"  {len(o.seeds)} seeds × {len(o.horizons)} horizons × {len(o.modes)} modes × 2 settings: {len(todo)} runs "
          f"({len(runs) - len(todo)} skipped or shared), {total:,} frames to generate\n"
          f"  estimate: ~{_hms(estimate)} at {fps_gen:.1f} frames/s (warm-up; full context slows with length)",
          file=sys.stderr, flush=True)

    # 2. runs: per seed the world, per horizon the loop and its ground truth, then every mode
    rows = []

    def make_result(complete: bool, elapsed: float) -> dict:
        return _result(o, complete=complete, elapsed=elapsed, rows=rows, learned=learned, hashers=hashers,
                       device=device, g=g, visit=visit, n_bits=n_bits, total=total, fps_gen=fps_gen,
                       estimate=estimate, parts=parts)

    done = {}
    t_start = time.perf_counter()
    parts["setup"] = t_start - t_eval  # model, warm-up throughput, plans
    bar = tqdm(total=total, unit="frame", disable=not o.progress, dynamic_ncols=True, file=sys.stderr,
               mininterval=0.1 if sys.stderr.isatty() else 30.0)  # logs get a line every 30 s
    try:
        for seed in o.seeds:
            world = ProceduralWorld(seed=seed, size=g["world_size"], view=g["height"])
            place = pick_place(world, g["action_step"], np.random.default_rng([seed, 0x91ACE]))
            for h in o.horizons:
                gap = int(round(h * o.fps))
                plan = plan_loop(gap_frames=gap, visit_frames=visit, view=g["height"], step=g["action_step"],
                                 size=g["world_size"], place=place, rng=np.random.default_rng([seed, gap, 0x100B]))
                t0 = time.perf_counter()
                truth = world.render_many(plan.poses)
                parts["ground_truth"] += time.perf_counter() - t0
                for run in [r for r in runs if r.seed == seed and r.horizon_s == float(h)]:
                    row = {"seed": seed, "horizon_s": run.horizon_s, "mode": run.mode, "setting": run.setting,
                           "status": "ok", "note": None, "same_as": run.same_as, "gap_frames": gap,
                           "frames": run.frames, "context_frames": run.context, "seconds": None,
                           **dict.fromkeys(METRIC_KEYS)}
                    if run.skip:
                        row.update(status="skipped", note=run.skip)
                    elif run.same_as:
                        row.update({k: v for k, v in done[(seed, h, run.same_as, run.setting)].items() if k in METRIC_KEYS},
                                   note="the model has no learned signatures: hashed already reads random SimHash "
                                        "signatures (same run)")
                    else:
                        bar.set_description(f"seed {seed} {h:g}s {run.mode} {run.setting}", refresh=False)
                        t0 = time.perf_counter()
                        frames = generate_loop(sim_pipe if run.mode == "random-sig" else pipe, g, plan, run.setting,
                                               run.mode, seed, truth, n_bits if run.mode == "random-sig" else None,
                                               on_chunk=bar.update)
                        t1 = time.perf_counter()
                        row["seconds"] = round(t1 - t0, 3)
                        row.update(_metrics(run.setting, plan, frames, truth))
                        t2 = time.perf_counter()
                        row.update(_realism(plan, frames, g["world_size"], device))
                        parts["generation"] += t1 - t0
                        parts["metrics"] += t2 - t1
                        parts["realism"] += time.perf_counter() - t2
                    done[(seed, h, run.mode, run.setting)] = row
                    rows.append(row)
                if o.json:  # after every (seed, horizon): a run cut short still leaves its results
                    _write_atomic(o.json, lambda tmp: Path(tmp).write_text(json.dumps(
                        make_result(False, time.perf_counter() - t_start), indent=1)))
    finally:
        bar.close()
    result = make_result(True, time.perf_counter() - t_start)
    if o.json:
        _write_atomic(o.json, lambda tmp: Path(tmp).write_text(json.dumps(result, indent=1)))
        print(f"wrote {o.json}", file=sys.stderr)
    if o.plot:
        plot_result(result, o.plot)
        print(f"wrote {o.plot}", file=sys.stderr)
    return result


def _result(o: WorldEvalOptions, *, complete: bool, elapsed: float, rows: list[dict], learned: bool, hashers,
            device, g: dict, visit: int, n_bits: int, total: int, fps_gen: float, estimate: float,
            parts: dict | None = None) -> dict:
    """The JSON-able result (``complete`` False while runs are still to come)."""
    import torch

    frames = sum(r["frames"] for r in rows if r["seconds"] is not None)
    result = {
        "schema": SCHEMA,
        "complete": complete,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": o.model, "learned_signatures": learned, "learned_hashers": [n for n, _ in hashers],
        "device": _device_name(device), "dtype": o.dtype,
        "cuda_graphs": bool(o.cuda_graphs), "fps": o.fps, "seeds": list(o.seeds),
        "horizons_s": [float(h) for h in o.horizons], "modes": list(o.modes),
        "full_max_seconds": o.full_max_seconds, "generation": g,
        "trajectory": {"visit_frames": visit, "leave_frames": math.ceil(g["height"] / g["action_step"]),
                       "step": g["action_step"], "view": g["height"], "world_size": g["world_size"],
                       "random_sig_bits": n_bits},
        "rows": rows,
        "summary": summarize(rows, o.modes, o.horizons),
        "timing": {"frames": frames, "planned_frames": total, "seconds": round(elapsed, 3),
                   "frames_per_s": round(frames / max(elapsed, 1e-9), 2), "warmup_frames_per_s": round(fps_gen, 2),
                   "estimate_s": round(estimate, 1),
                   "parts_s": {k: round(v, 3) for k, v in (parts or {}).items()}},
        "host": {"python": platform.python_version(), "torch": torch.__version__, "machine": platform.machine()},
    }
    result["targets"] = targets(result["summary"])
    return result


def _device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _hms(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


# ---------------------------------------------------------------------------------- summary


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def summarize(rows: list[dict], modes, horizons) -> dict:
    """``summary[mode][f"{horizon:g}"]``: means over seeds (None where skipped)."""
    out = {}
    for mode in modes:
        out[mode] = {}
        for h in horizons:
            mine = [r for r in rows if r["mode"] == mode and r["horizon_s"] == float(h) and r["status"] == "ok"]
            given = [r for r in mine if r["setting"] == "given"]
            own = [r for r in mine if r["setting"] == "self"]
            skipped = [r["note"] for r in rows if r["mode"] == mode and r["horizon_s"] == float(h) and r["status"] == "skipped"]
            out[mode][f"{h:g}"] = {
                "return_psnr": _mean(r["return_psnr"] for r in given),
                "return_ssim": _mean(r["return_ssim"] for r in given),
                "away_psnr": _mean(r["away_psnr"] for r in given),
                "away_ssim": _mean(r["away_ssim"] for r in given),
                "self_psnr": _mean(r["self_psnr"] for r in own),
                "self_ssim": _mean(r["self_ssim"] for r in own),
                "self_return_psnr": _mean(r["return_psnr"] for r in own),
                "away_realism": _mean(r.get("away_realism") for r in given),  # .get: results saved before realism
                "away_real_share": _mean(r.get("away_real_share") for r in given),
                "self_away_realism": _mean(r.get("away_realism") for r in own),
                "self_away_real_share": _mean(r.get("away_real_share") for r in own),
                "n_seeds": len({r["seed"] for r in mine}),
                "note": skipped[0] if skipped else None,
            }
    for mode in modes:
        for h, cell in out[mode].items():
            base = out.get("window", {}).get(h, {}).get("self_psnr")
            cell["self_psnr_vs_window"] = None if base is None or cell["self_psnr"] is None else cell["self_psnr"] - base
    return out


def targets(summary: dict) -> list[dict]:
    """Issue 5's targets on self-consistency PSNR at 1 min (and 5 min), where measured."""
    checks = []

    def get(mode, h, key="self_psnr"):
        return summary.get(mode, {}).get(h, {}).get(key)

    for h, label in (("60", "1 min"), ("300", "5 min")):
        hashed, window, full = get("hashed", h), get("window", h), get("full", h)
        if hashed is not None and window is not None:
            checks.append({"horizon_s": float(h), "check": f"{label}: hashed ≥ window + 3 dB", "value": hashed - window,
                           "target": 3.0, "met": hashed - window >= 3.0})
        if h == "60" and hashed is not None and full is not None:
            checks.append({"horizon_s": float(h), "check": f"{label}: hashed ≥ full − 1 dB", "value": hashed - full,
                           "target": -1.0, "met": hashed - full >= -1.0})
    return checks


def _f(v, fmt=".2f") -> str:
    return "—" if v is None else format(v, fmt)


def _realism_cell(c: dict) -> str:
    d, share = c.get("away_realism"), c.get("away_real_share")
    return "—" if d is None else f"{d:.3f} ({share:.0%})" if share is not None else f"{d:.3f}"


def format_table(result: dict) -> str:
    """Terminal table: per horizon and mode, return vs ground truth (given), self-consistency, away."""
    head = ("horizon", "mode", "return PSNR", "return SSIM", "self PSNR", "self SSIM", "vs window", "away PSNR",
            "away realism", "seeds")
    lines = [f"world memory: {result['model']} on {result['device']}, {result['dtype']}; seeds {result['seeds']}; "
             f"{'learned' if result['learned_signatures'] else 'SimHash'} signatures",
             "  return = first visit given (ground truth), return vs ground truth; self = first visit generated, "
             "return vs the model's own first visit; away = given run, frames away vs ground truth (dB / SSIM); "
             "away realism = given run, no-reference patch distance (real ≈ 0.85) and share of real-looking patches "
             "(real ≈ 95%)"]
    body = []
    for h in result["horizons_s"]:
        for mode in result["modes"]:
            c = result["summary"][mode][f"{h:g}"]
            if c["n_seeds"] == 0:
                body.append((f"{h:g} s", mode, "skipped: " + c["note"] if c["note"] else "skipped: not run (yet)",
                             "", "", "", "", "", "", ""))
                continue
            vs = c["self_psnr_vs_window"]
            body.append((f"{h:g} s", mode, _f(c["return_psnr"]), _f(c["return_ssim"], ".3f"), _f(c["self_psnr"]),
                         _f(c["self_ssim"], ".3f"), "—" if vs is None or mode == "window" else f"{vs:+.2f}",
                         _f(c["away_psnr"]), _realism_cell(c), str(c["n_seeds"])))
    widths = [max(len(head[i]), *(len(r[i]) for r in body if not r[2].startswith("skipped"))) if body else len(head[i])
              for i in range(len(head))]
    lines.append("  ".join(h.ljust(w) for h, w in zip(head, widths)))
    for r in body:
        if r[2].startswith("skipped"):
            lines.append("  ".join([r[0].ljust(widths[0]), r[1].ljust(widths[1]), r[2]]))
        else:
            lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    for t in result.get("targets", []):
        lines.append(f"target {t['check']}: {t['value']:+.2f} dB — {'met' if t['met'] else 'NOT met'}")
    tm = result["timing"]
    lines.append(f"{tm['frames']:,} frames generated in {_hms(tm['seconds'])} ({tm['frames_per_s']:.1f} frames/s)")
    if tm.get("parts_s"):  # absent from results made before 2026-11-30 (evening 2) and merges with them
        p = tm["parts_s"]
        other = max(0.0, p.get("setup", 0.0) + tm["seconds"] - sum(p.values()))
        lines.append("time: " + ", ".join(f"{k.replace('_', ' ')} {v:.1f} s" for k, v in p.items())
                     + f", other {other:.1f} s")
    return "\n".join(lines)


def plot_result(result: dict, path: str) -> str:
    """PNG: self-consistency PSNR, return-vs-ground-truth PSNR and SSIM against horizon, one line per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    panels = [("self_psnr", "self-consistency PSNR (dB)\nreturn vs own first visit"),
              ("return_psnr", "return vs ground truth PSNR (dB)\nfirst visit given"),
              ("return_ssim", "return vs ground truth SSIM\nfirst visit given")]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), constrained_layout=True)
    hs = result["horizons_s"]
    for ax, (key, title) in zip(axes, panels):
        for mode in result["modes"]:
            ys = [result["summary"][mode][f"{h:g}"][key] for h in hs]
            pts = [(h, y) for h, y in zip(hs, ys) if y is not None]
            if pts:
                ax.plot(*zip(*pts), "o-", label=mode, ms=4)
        if key == "return_psnr":
            away = [result["summary"].get("window", {}).get(f"{h:g}", {}).get("away_psnr") for h in hs]
            pts = [(h, y) for h, y in zip(hs, away) if y is not None]
            if pts:
                ax.plot(*zip(*pts), ":", color="grey", label="away vs GT (window)")
        if len(hs) > 1 and min(hs) > 0:
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
            ax.set_xticks(hs)
        ax.set_xlabel("horizon (s of video away)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(f"vidhash world memory — {os.path.basename(str(result['model']).rstrip('/'))}, seeds {result['seeds']}",
                 fontsize=10)
    _write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=90, format="png"))
    plt.close(fig)
    return path


def _write_atomic(path: str, write) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.splitext(path)[1])
    os.close(fd)
    try:
        write(tmp)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
