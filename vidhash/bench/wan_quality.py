"""wan-mini models' clips on held-out worlds against the rendered truth: the quality side of
"sparse from the start" (issue 17, point 3) — the dense-trained and the sparse-trained model
sampled alike, each judged against what the world really shows.

    vidhash bench wan-quality models/wan-mini .wan/wan-mini-sparse8 --json quality.json

Letters: f frames, k context frames.

Per clip ``i`` (``--clips``): the held-out world ``WORLD_SEED + i`` (never trained on, apart from
the validation worlds), an out-and-back camera path of the models' data config (so the clip ends
where it began), its frames rendered; every model gets the same first ``--context`` frames as
frame prompts, the same actions and the same initial noise, and samples the clip. A model trained
sparse (its ``train_state.json`` records an ``attention`` section) runs with that attention — the
drop-in in every self-attention, as it trained and as a user would sample it. Rows (means over clips):

* ``psnr`` / ``ssim`` — the generated frames after the context against the true ones (dB over
  all their uint8 pixels; luma SSIM per frame);
* ``psnr_return`` — the same over the *return* frames only: those after the context whose true
  camera pose is a context frame's pose (the clip came back to where its given frames were):
  whether the model brings back what it was shown;
* ``coherence`` — :func:`vidhash.metrics.measure_coherence_frames` of the whole clip, its frames in
  memory (no mp4, no PyAV; means of its summary keys over clips), and ``realism`` / ``real_share`` — the no-reference realism score
  (:func:`vidhash.metrics.realism.realism`, lower is more real) of the generated frames, taken
  at the world's own scale (frames resized to the view, one pixel a world pixel, as the score's
  bank of real frames is);
* ``clip_s`` — seconds per clip (synchronised on CUDA; with several clips the first one is
  sampled twice, the first time as a warm-up, and the second timed).

The ``truth`` row holds the rendered clips' own coherence and realism (the floor to read the
models' against). The data config (frame size, world, step, reach) is the first model's export's
(``train_state.json``), or ``--config`` (a train YAML) for folders without one; every other model
that records one must have been trained on the same frames (size, scale).
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from vidhash.files import write_json

WORLD_SEED = 1_600_000  # held out (>= HELDOUT_WORLD_SEED), apart from validation's 1_500_000 + i and eval's
CLIP_KEYS = ("psnr", "ssim", "psnr_return", "realism", "real_share", "clip_s")


def check_models(models: list[str]) -> None:
    """Every folder a ``WanMiniPipeline`` export, given once — before any sampling."""
    from vidhash.presets import saved_pipeline_class

    for model in models:
        path = Path(model)
        if path.exists() and not path.is_dir():
            raise ValueError(f"MODEL {model} is a file; give a folder (a WanMiniPipeline export, e.g. models/wan-mini)")
        if not path.is_dir():
            raise ValueError(f"MODEL {model}: no such folder (a WanMiniPipeline export, e.g. models/wan-mini)")
        kind = saved_pipeline_class(path)
        if kind != "WanMiniPipeline":
            raise ValueError(f"MODEL {model}: a {kind or 'folder without model_index.json'}, not a WanMiniPipeline export")
    if len({Path(m).resolve() for m in models}) != len(models):
        raise ValueError("the same model folder is given twice")


def data_config(model: str | Path, config: str | None = None):
    """The :class:`~vidhash.data.wan_clips.WanClipConfig` of a model's training (``train_state.json``'s
    config), or of the train YAML ``config``. ValueError when neither gives one."""
    from vidhash.data.wan_clips import WanClipConfig

    if config is not None:
        from vidhash.training import load_train_config

        data = getattr(load_train_config(config), "data", None)
        if not isinstance(data, WanClipConfig):
            raise ValueError(f"--config {config}: not a wan-mini train config (its data section is not wan clips)")
        return dataclasses.replace(data)
    state = Path(model) / "train_state.json"
    if not state.is_file():
        raise ValueError(f"{model}: no train_state.json to read the data config from; pass --config (a train YAML)")
    import yaml

    saved = json.loads(state.read_text())
    if not isinstance(saved, dict) or not isinstance(saved.get("config"), str):
        raise ValueError(f"{state}: holds no training config to read the data config from; pass --config (a train YAML)")
    data = (yaml.safe_load(saved["config"]) or {}).get("data") or {}
    names = {f.name for f in dataclasses.fields(WanClipConfig)}
    return WanClipConfig(**{k: v for k, v in data.items() if k in names})


def truth_clip(d, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clip ``index``: true frames (f, h, w, 3) uint8, actions (f,) and poses (f, 2) of world
    ``WORLD_SEED + index`` on an out-and-back path of the data config ``d``."""
    from vidhash.data.wan_clips import clip_trajectory, render_clip
    from vidhash.data.world import ProceduralWorld

    if d.source != "world":
        raise ValueError(f"the data config's source is {d.source!r}: the truth is rendered from procedural worlds")
    path = dataclasses.replace(d, trajectory="out_and_back")
    world = ProceduralWorld(seed=WORLD_SEED + index, size=d.world_size, view=d.view)
    actions, poses = clip_trajectory(path, index, np.random.default_rng([d.seed, 11, index]))
    return render_clip(world, poses, d.frame_size), actions, poses


def return_frames(poses: np.ndarray, context: int) -> np.ndarray:
    """Indices ``t ≥ context`` whose pose equals a context frame's pose after the camera left the
    context's poses (came back, not merely stayed)."""
    seen = {tuple(np.round(p, 3)) for p in poses[:context]}
    out, left = [], False
    for t in range(context, len(poses)):
        here = tuple(np.round(poses[t], 3)) in seen
        left = left or not here
        if here and left:
            out.append(t)
    return np.array(out, dtype=np.int64)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """dB over all pixels of two uint8 arrays; ``inf`` when equal."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def load_model(path: str, device: str, dtype: str):
    """A ``WanMiniPipeline`` export with the attention it was trained with, and a label of it."""
    from vidhash.bench.dropin import load_pipeline
    from vidhash.training.attention import training_attention

    pipe = load_pipeline(path, device, dtype)
    kw = training_attention(path)
    if kw:
        from vidhash.integrations.diffusers import enable_hash_attention

        enable_hash_attention(pipe.transformer, **kw)
        return pipe, f"hash {kw['density']:g}, key blocks {kw['block_size']}, {kw.get('scorer', 'pooled')}"
    return pipe, "dense"


def sample(pipe, truth: np.ndarray, actions: np.ndarray, context: int, steps: int, seed: int) -> tuple[np.ndarray, float]:
    """One clip (f, h, w, 3) uint8 from the first ``context`` true frames, and its seconds."""
    cuda = pipe.transformer.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    f, h, w, _ = truth.shape
    frames = pipe(actions=actions, num_frames=f, height=h, width=w, num_inference_steps=steps,
                  context_frames=truth[:context] if context else None,
                  generator=torch.Generator().manual_seed(seed)).frames[0]
    if cuda:
        torch.cuda.synchronize()
    return (np.clip(frames, 0, 1) * 255).round().astype(np.uint8), time.perf_counter() - t0


def world_scale(frames: np.ndarray, view: int) -> np.ndarray:
    """Frames resized (area) to ``view`` × ``view``: one pixel a world pixel, the realism bank's scale."""
    import cv2

    if frames.shape[1] == view and frames.shape[2] == view:
        return frames
    return np.stack([cv2.resize(f, (view, view), interpolation=cv2.INTER_AREA) for f in frames])


def clip_scores(clip: np.ndarray, truth: np.ndarray, poses: np.ndarray, context: int, fps: float,
                bank, coherence: bool, view: int, device: str | None = None) -> dict:
    """The row keys of one clip (``truth`` itself: only coherence and realism); the realism score's
    nearest-patch search on ``device``."""
    from vidhash.bench.dropin import clip_ssim, coherence_of

    out: dict = {}
    if clip is not truth:
        back = return_frames(poses, context)
        out["psnr"] = psnr(clip[context:], truth[context:])
        out["ssim"] = clip_ssim(clip[context:], truth[context:])
        out["psnr_return"] = psnr(clip[back], truth[back]) if len(back) else None
    scored = bank.score(world_scale(clip[context:], view), device=device)
    out["realism"], out["real_share"] = scored.distance, scored.real_share
    if coherence:
        out["coherence"] = coherence_of(clip, fps)
    return out


def summarise(rows: list[dict]) -> dict:
    """Means over clips of every number (``inf`` PSNRs and missing values left out of the mean)."""
    out: dict = {}
    for key in CLIP_KEYS:
        vals = [r[key] for r in rows if r.get(key) is not None and math.isfinite(r[key])]
        out[key] = float(np.mean(vals)) if vals else None
    coh = [coherence_means(r["coherence"]) for r in rows if r.get("coherence")]
    if coh:
        out["coherence"] = {k: float(np.mean([c[k] for c in coh if c.get(k) is not None]))
                            for k in COHERENCE_MEANS if any(c.get(k) is not None for c in coh)}
    return out


COHERENCE_MEANS = {"flicker": "mean", "warp_error": "mean", "motion": "mean_px", "ssim_adjacent": "mean",
                   "smoothness": "mean"}  # the coherence summary's sections and the number of each a row averages


def coherence_means(report: dict) -> dict:
    """``{section: its mean}`` of one clip's coherence summary (:data:`COHERENCE_MEANS`)."""
    return {k: (report.get(k) or {}).get(sub) for k, sub in COHERENCE_MEANS.items()}


def _fmt(x, spec: str) -> str:
    return "—" if x is None else format(x, spec)


def table(report: dict) -> str:
    """The Markdown table of a report."""
    lines = ["| model | attention | PSNR | SSIM | return PSNR | realism (↓) | real share | flicker | warp error | s / clip |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in report["rows"]:
        c = row.get("coherence") or {}
        lines.append(f"| {row['name']} | {row['attention']} | {_fmt(row.get('psnr'), '.2f')} | {_fmt(row.get('ssim'), '.3f')} "
                     f"| {_fmt(row.get('psnr_return'), '.2f')} | {_fmt(row.get('realism'), '.3f')} "
                     f"| {_fmt(row.get('real_share'), '.3f')} | {_fmt(c.get('flicker'), '.4f')} "
                     f"| {_fmt(c.get('warp_error'), '.4f')} | {_fmt(row.get('clip_s'), '.2f')} |")
    return "\n".join(lines)


def check_reach(models: list[str], frames: int, size: int) -> None:
    """The clip within every model's rotary reach (``rope_max_seq_len`` patches an axis, read from
    its ``transformer/config.json`` before any clip is made); ValueError naming the limit."""
    from types import SimpleNamespace

    from vidhash.bench.dropin import check_clip_size

    for model in models:
        config = Path(model) / "transformer" / "config.json"
        keys = json.loads(config.read_text()) if config.is_file() else {}
        if "patch_size" in keys and "rope_max_seq_len" in keys:  # (else diffusers' defaults: not checked here)
            check_clip_size(SimpleNamespace(config=SimpleNamespace(**keys)), frames, size)


def run(args) -> int:
    from vidhash.bench.dropin import describe_device
    from vidhash.metrics.realism import realism_bank

    check_models(args.models)
    d = data_config(args.models[0], args.config)
    for other in args.models[1:]:
        try:
            o = data_config(other)
        except ValueError:  # records no config: nothing to check it against
            continue
        if (o.frame_size, o.scale, o.source) != (d.frame_size, d.scale, d.source):
            raise ValueError(f"{other} was trained on other frames ({o.source}, {o.frame_size} px, scale {o.scale}) "
                             f"than {args.models[0]} ({d.source}, {d.frame_size} px, scale {d.scale})")
    if args.frames:
        d = dataclasses.replace(d, num_frames=args.frames)
    check_reach(args.models, d.num_frames, d.frame_size)
    if not 0 <= args.context < d.num_frames:
        raise ValueError(f"--context must be in [0, {d.num_frames}) (the clip's frames), got {args.context}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype or ("bf16" if device == "cuda" else "fp32")
    truths = [truth_clip(d, i) for i in range(args.clips)]
    bank = realism_bank(d.world_size)
    report = {"models": [str(m) for m in args.models], "device": describe_device(device), "torch": torch.__version__,
              "dtype": dtype, "clips": args.clips, "context": args.context, "steps": args.steps,
              "frames": d.num_frames, "frame_size": d.frame_size, "world_seed": WORLD_SEED, "rows": []}

    def add(name: str, attention: str, per_clip: list[dict]) -> None:
        report["rows"].append({"name": name, "attention": attention, **summarise(per_clip), "per_clip": per_clip})
        print(table(report).splitlines()[-1], flush=True)
        if args.json:
            write_json(args.json, report, indent=1, default=float)  # (standard JSON: inf/nan as null)

    print("\n".join(table(report).splitlines()[:2]), flush=True)
    add("truth", "—", [clip_scores(t, t, p, args.context, args.fps, bank, not args.no_coherence, d.view, device)
                       for t, _, p in truths])
    names = [Path(m).name for m in args.models]
    for model in args.models:
        pipe, attention = load_model(model, device, dtype)
        rows = []
        for i, (t, a, p) in enumerate(truths):
            clip, seconds = sample(pipe, t, a, args.context, args.steps, args.seed + i)
            if i == 0 and args.clips > 1:  # the first clip warms up (autotuning, allocation): sampled again, timed
                clip, seconds = sample(pipe, t, a, args.context, args.steps, args.seed + i)
            rows.append({**clip_scores(clip, t, p, args.context, args.fps, bank, not args.no_coherence, d.view, device),
                         "clip_s": seconds})
        add(Path(model).name if names.count(Path(model).name) == 1 else str(model), attention, rows)
        del pipe
    return 0
