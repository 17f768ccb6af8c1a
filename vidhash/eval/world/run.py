"""Runs of ``vidhash eval world``: the model (and its random-signature twin), one loop generated
per run, its metrics, and :func:`evaluate`, which plans, runs and reports.

    from vidhash.eval.world import WorldEvalOptions, evaluate
    result = evaluate(WorldEvalOptions(model="random-tiny", horizons=(4.0,), steps=1, frame_size=16))
"""
from __future__ import annotations

import copy
import sys
import time
from dataclasses import dataclass, replace

import numpy as np

from vidhash.selection.memory_read import probe_memory_reads
from vidhash.training.config import HELDOUT_WORLD_SEED  # world seeds >= this are never used in training

from .plan import (
    METRIC_KEYS,
    REALISM_KEYS,
    SETTINGS,
    TIME_PARTS,
    Run,
    WorldEvalOptions,
    available_bytes,
    check_options,
    kv_bytes,
    plan_runs,
    resolve_settings,
)
from .report import build_result, hms, plot_result, write_json


def memory_row(summary: dict) -> dict:
    """The ``MEMORY_KEYS`` of a run from :meth:`MemoryReadStats.summary` (None where no top-k read was seen)."""
    return {"memory_topk_recall": summary["topk_recall"], "memory_recall": summary["mass_recall"],
            "memory_oracle": summary["oracle"], "memory_ratio": summary["ratio"],
            "memory_reads": summary["reads"] or None}


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


def memory_config(g: dict, mode: str, n_bits: int | None):
    """The ``MemorySettings`` of ``mode`` under resolved settings ``g`` (``random-sig``: SimHash of ``n_bits``)."""
    from vidhash.generation_config import MemorySettings

    mem = dict(g["memory"], mode="hashed" if mode == "random-sig" else mode)
    if mode == "random-sig" and n_bits:
        mem["n_bits"] = n_bits
    return MemorySettings(**mem)


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
                  memory=memory_config(g, mode, n_bits), output_type="np", **_guidance(g),
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
              num_inference_steps=g["num_inference_steps"], memory=memory_config(g, "hashed", None), output_type="pt",
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


def _guidance(g: dict) -> dict:
    """The pipeline's guidance keywords for resolved settings ``g`` (none recorded: off)."""
    return {"guidance_scale": g.get("guidance_scale", 1.0), "guidance_steps": g.get("guidance_steps")}


# ---------------------------------------------------------------------------------- evaluate


@dataclass
class Setup:
    """What :func:`prepare` decided before the long work: options (CUDA graphs resolved), model and its
    random-signature twin, resolved settings ``g``, the runs and the warm-up's rate."""

    o: WorldEvalOptions
    device: object
    preset: str
    pipe: object
    sim_pipe: object | None
    g: dict
    hashers: list
    n_bits: int
    visit: int  # first-visit frames
    runs: list[Run]
    todo: int  # runs to generate (not skipped, not shared)
    total: int  # frames to generate
    fps_gen: float

    @property
    def learned(self) -> bool:
        return bool(self.hashers)

    @property
    def estimate(self) -> float:
        return self.total / self.fps_gen


def prepare(o: WorldEvalOptions) -> Setup:
    """Step 1 of :func:`evaluate`: checks, model, resolved settings, plan, warm-up throughput."""
    import torch

    from vidhash.pipelines.cuda_graphs import use_cuda_graphs

    check_options(o)
    device = _device(o.device)
    dtype = getattr(torch, o.dtype)
    if dtype == torch.bfloat16 and device.type != "cuda":
        raise ValueError("--dtype bfloat16 is for CUDA devices; use float32 on the CPU")
    low = [s for s in o.seeds if s < HELDOUT_WORLD_SEED]
    if low:
        print(f"warning: world seeds {low} are below {HELDOUT_WORLD_SEED:,}: training may have seen them", file=sys.stderr)
    pipe, preset = load_pipeline(o.model, device, dtype)
    g = resolve_settings(o, pipe, preset)
    hashers = learned_hashers(pipe.transformer)
    n_bits = int(pipe.transformer.config.get("memory_hash_bits", 0) or 0) or g["memory"]["n_bits"]
    sim_pipe = with_random_signatures(pipe, n_bits) if hashers and "random-sig" in o.modes else None
    o = replace(o, cuda_graphs=use_cuda_graphs(o.cuda_graphs, device))  # resolved: the JSON records what ran
    if o.cuda_graphs:
        for p in (pipe, sim_pipe):
            if p is not None:
                p.enable_cuda_graphs()
    visit = int(round(o.visit_seconds * o.fps))
    runs = plan_runs(o, g, visit, bool(hashers), lambda f: kv_bytes(pipe, g, f, dtype), available_bytes(device))
    todo = [r for r in runs if r.skip is None and r.same_as is None]
    return Setup(o=o, device=device, preset=preset, pipe=pipe, sim_pipe=sim_pipe, g=g, hashers=hashers, n_bits=n_bits,
                 visit=visit, runs=runs, todo=len(todo), total=sum(r.frames for r in todo), fps_gen=_throughput(pipe, g))


def _print_plan(s: Setup) -> None:
    o, g = s.o, s.g
    guide = f", guidance {g['guidance_scale']:g} on {g['guidance_steps'] or 'all'}" if "guidance_scale" in g else ""
    print(f"vidhash eval world: {o.model} ({s.preset} preset, {g['num_inference_steps']} steps/chunk{guide}, "
          f"{'learned' if s.learned else 'SimHash'} signatures) on {s.device} {o.dtype}\n"
          f"  {len(o.seeds)} seeds × {len(o.horizons)} horizons × {len(o.modes)} modes × 2 settings: {s.todo} runs "
          f"({len(s.runs) - s.todo} skipped or shared), {s.total:,} frames to generate\n"
          f"  estimate: ~{hms(s.estimate)} at {s.fps_gen:.1f} frames/s (warm-up; full context slows with length)",
          file=sys.stderr, flush=True)


def _run_row(s: Setup, run: Run, plan, truth: np.ndarray, done: dict, parts: dict, bar) -> dict:
    """One row of the result: ``run`` generated and measured (or skipped, or copied from its twin)."""
    row = {"seed": run.seed, "horizon_s": run.horizon_s, "mode": run.mode, "setting": run.setting,
           "status": "ok", "note": None, "same_as": run.same_as, "gap_frames": run.gap_frames,
           "frames": run.frames, "context_frames": run.context, "seconds": None,
           **dict.fromkeys(METRIC_KEYS)}
    if run.skip:
        row.update(status="skipped", note=run.skip)
    elif run.same_as:
        row.update({k: v for k, v in done[(run.seed, run.horizon_s, run.same_as, run.setting)].items() if k in METRIC_KEYS},
                   note="the model has no learned signatures: hashed already reads random SimHash "
                        "signatures (same run)")
    else:
        bar.set_description(f"seed {run.seed} {run.horizon_s:g}s {run.mode} {run.setting}", refresh=False)
        random_sig = run.mode == "random-sig"
        t0 = time.perf_counter()
        with probe_memory_reads(every=s.o.recall_every) as reads:  # the reads' top-k against exact scores; frames unchanged
            frames = generate_loop(s.sim_pipe if random_sig else s.pipe, s.g, plan, run.setting, run.mode, run.seed,
                                   truth, s.n_bits if random_sig else None, on_chunk=bar.update)
        t1 = time.perf_counter()
        row["seconds"] = round(t1 - t0, 3)
        row.update(_metrics(run.setting, plan, frames, truth))
        row.update(memory_row(reads.summary()))
        t2 = time.perf_counter()
        row.update(_realism(plan, frames, s.g["world_size"], s.device))
        parts["generation"] += t1 - t0
        parts["metrics"] += t2 - t1
        parts["realism"] += time.perf_counter() - t2
    return row


def evaluate(o: WorldEvalOptions) -> dict:
    """Run the evaluation of ``o`` (:mod:`vidhash.eval.world`); returns the JSON-able result, written
    to ``o.json`` / ``o.plot`` when set."""
    from tqdm.auto import tqdm

    from vidhash.data.world import ProceduralWorld

    from ..trajectory import pick_place, plan_loop

    # 1. checks, model, resolved settings, plan — all before the long work
    t_eval = time.perf_counter()
    parts = dict.fromkeys(TIME_PARTS, 0.0)  # seconds per part of the evaluation (JSON timing.parts_s)
    s = prepare(o)
    o, g = s.o, s.g
    _print_plan(s)

    # 2. runs: per seed the world, per horizon the loop and its ground truth, then every mode
    rows, done = [], {}

    def make_result(complete: bool, elapsed: float) -> dict:
        return build_result(o, complete=complete, elapsed=elapsed, rows=rows, learned=s.learned, hashers=s.hashers,
                            device=s.device, g=g, visit=s.visit, n_bits=s.n_bits, total=s.total, fps_gen=s.fps_gen,
                            estimate=s.estimate, parts=parts)

    t_start = time.perf_counter()
    parts["setup"] = t_start - t_eval  # model, warm-up throughput, plans
    bar = tqdm(total=s.total, unit="frame", disable=not o.progress, dynamic_ncols=True, file=sys.stderr,
               mininterval=0.1 if sys.stderr.isatty() else 30.0)  # logs get a line every 30 s
    try:
        for seed in o.seeds:
            world = ProceduralWorld(seed=seed, size=g["world_size"], view=g["height"])
            place = pick_place(world, g["action_step"], np.random.default_rng([seed, 0x91ACE]))
            for h in o.horizons:
                gap = int(round(h * o.fps))
                plan = plan_loop(gap_frames=gap, visit_frames=s.visit, view=g["height"], step=g["action_step"],
                                 size=g["world_size"], place=place, rng=np.random.default_rng([seed, gap, 0x100B]))
                t0 = time.perf_counter()
                truth = world.render_many(plan.poses)
                parts["ground_truth"] += time.perf_counter() - t0
                for run in [r for r in s.runs if r.seed == seed and r.horizon_s == float(h)]:
                    row = _run_row(s, run, plan, truth, done, parts, bar)
                    done[(seed, run.horizon_s, run.mode, run.setting)] = row
                    rows.append(row)
                if o.json:  # after every (seed, horizon): a run cut short still leaves its results
                    write_json(o.json, make_result(False, time.perf_counter() - t_start))
    finally:
        bar.close()

    # 3. the result, written to --json and drawn to --plot
    result = make_result(True, time.perf_counter() - t_start)
    if o.json:
        write_json(o.json, result)
        print(f"wrote {o.json}", file=sys.stderr)
    if o.plot:
        plot_result(result, o.plot)
        print(f"wrote {o.plot}", file=sys.stderr)
    return result
