"""Fit learned memory signatures (one ``LearnedHash`` per layer) on a model's own queries and keys.

    vidhash calibrate PIPELINE_DIR [--out DIR] [--bits 32] [--clips 8] [--top-k 32] [--steps 300] [--json report.json]

What generation does with the memory, recorded on procedural-world clips from the training world
(``WorldClipDataset``; trajectory seeds ``(--seed, i)``, validation clips ``(--seed + 1, i)``):

1. a clean chunk-causal pass over each clip gives every frame's temporal keys (the K/V a commit
   pass leaves behind, with the whole history as context);
2. the clip's last chunk is noised to each of the scheduler's ``--inference-steps`` levels and
   run against those keys as its context, as a denoising step sees them: its temporal queries;
3. the keys the memory would hold for that chunk are those older than the window
   (``--window-frames`` before the chunk).

Per layer, a ``LearnedHash`` (per head, ``--hidden`` wide MLPs) is fitted with HashAttention's
weighted-BCE recipe (:meth:`vidhash.hashing.LearnedHash.fit`: positives are each query's exact
top-``--top-k`` keys). The report gives, per layer, recall of those exact top-k keys within the
top-k by signature similarity, before (the SimHash of the same bits a memory would use) and
after, on the fitting clips and on validation clips, and the share of the exact softmax mass
over the older keys that the signature top-k keeps. The model with its learned hashes is written
as a pipeline folder (``VidHashPipeline.from_pretrained`` loads it; generation then reads its
memories with them): to ``--out`` (default ``PIPELINE_DIR-calibrated``), through a temporary
folder renamed at the end; ``--overwrite`` replaces only a saved pipeline folder (:func:`check_out`).

``PIPELINE_DIR`` may also be ``random-tiny`` / ``random-small`` / ``random-base`` (then ``--out``
is required). Runs on CPU for the tiny model in seconds with ``--clips 2 --frames 16 --steps 50``.
"""
from __future__ import annotations

import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .files import nearest_existing, umask
from .hashing import MAX_BITS, LearnedHash, SimHash, hamming_similarity, signature_topk_recall


@dataclass
class CalibrateConfig:
    bits: int = 32
    hidden: int = 128
    clips: int = 8
    val_clips: int = 2
    frames: int = 48
    top_k: int = 32
    steps: int = 300
    lr: float = 3e-3
    pos_weight: float = 20.0
    batch_queries: int = 1024
    chunk_frames: int = 4
    window_frames: int = 8
    inference_steps: int = 4
    memory_seed: int = 0  # the SimHash baseline is the one a memory of this seed would use (seed + layer)
    world_seed: int = 0
    seed: int = 0

    def check(self) -> None:
        """Every setting, before any model loads or clip is recorded; ValueError naming the
        ``vidhash calibrate`` flag (``--bits``)."""
        for key in ("bits", "hidden", "clips", "frames", "top_k", "steps", "chunk_frames", "window_frames",
                    "inference_steps", "batch_queries"):
            if getattr(self, key) <= 0:
                raise ValueError(f"--{key.replace('_', '-')} must be positive, got {getattr(self, key)}")
        if self.bits > MAX_BITS:
            raise ValueError(f"--bits must be at most {MAX_BITS} (signatures are packed into at most "
                             f"{MAX_BITS // 32} int32 words), got {self.bits}")
        for key in ("lr", "pos_weight"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"--{key.replace('_', '-')} must be a positive finite number, got {value}")
        for key in ("val_clips", "world_seed", "seed"):
            if getattr(self, key) < 0:
                raise ValueError(f"--{key.replace('_', '-')} must be ≥ 0, got {getattr(self, key)}")
        older = self.frames - self.chunk_frames - self.window_frames
        if older <= 0:
            raise ValueError(
                f"--frames ({self.frames}) must exceed chunk-frames + window-frames ({self.chunk_frames} + {self.window_frames}): "
                "the memory only holds frames older than the window"
            )


def check_top_k(model, cfg: CalibrateConfig) -> int:
    """``--top-k`` against the keys a clip gives the memory (:func:`record_clip`: the frames older
    than the window, ``tokens_per_frame`` of the model's ``sample_size`` each), once the model is
    loaded and before any clip is recorded; returns that number. At or above it the top-k would be
    every key — recall 1 before and after, no negative to fit — so ValueError naming the flag."""
    view = model.config.sample_size
    older, per_frame = cfg.frames - cfg.chunk_frames - cfg.window_frames, model.tokens_per_frame(view, view)
    keys = older * per_frame
    if cfg.top_k >= keys:
        raise ValueError(f"--top-k ({cfg.top_k}) must be less than the {keys} keys a clip gives the memory ({older} "
                         f"frames older than the window × {per_frame} tokens): its top-k would be every key, recall 1 "
                         "before and after; take a smaller --top-k, or more --frames")
    return keys


# ----------------------------------------------------------------------------------- recording


@torch.no_grad()
def record_clip(pipe, clip: dict, cfg: CalibrateConfig, generator: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer ``(q (1, h, steps·c·n, e), k_old (1, h, old·n, e))`` for one clip: the last chunk's
    queries at every denoising step, and the keys older than its window (see module docstring)."""
    from .models.transformer_vidhash import TemporalContext

    model = pipe.transformer
    device, dtype = model.device, model.dtype
    frames = clip["frames"].unsqueeze(0).to(device, dtype)  # (1, f, c, h, w)
    actions = clip["actions"].unsqueeze(0).to(device).clamp(max=model.config.num_actions)
    poses = clip["poses"].unsqueeze(0).to(device)
    f, c = frames.shape[1], cfg.chunk_frames
    n = model.tokens_per_frame(*frames.shape[-2:])
    start = f - c
    # 1. clean chunk-causal pass: every frame's keys/values with the whole history as context
    kv = model(frames, torch.zeros(1, f, device=device, dtype=dtype), actions, poses, causal_frames=c,
               return_kv=True).kv
    context = [TemporalContext(k=k[:, :, : start * n], v=v[:, :, : start * n]) for k, v in kv]
    # 2. the last chunk at each noise level the sampler visits: its queries
    pipe.scheduler.set_timesteps(cfg.inference_steps, device=device)
    sigmas = pipe.scheduler.sigmas[:-1]
    x0 = frames[:, start:]
    queries = [[] for _ in kv]
    with model.record_temporal_qk() as rec:
        for sigma, t in zip(sigmas, pipe.scheduler.timesteps):
            noise = torch.randn(x0.shape, generator=generator, dtype=torch.float32).to(device, dtype)
            xt = (1 - sigma) * x0 + sigma * noise
            model(xt, t.expand(1, c).to(dtype), actions[:, start:], poses[:, start:], context=context)
    for layer, calls in enumerate(rec):
        queries[layer] = torch.cat([q for q, _ in calls], dim=2)
    # 3. keys the memory holds for this chunk: older than the window
    old = (start - cfg.window_frames) * n
    return [(queries[layer].float(), kv[layer][0][:, :, :old].float()) for layer in range(len(kv))]


def record(pipe, cfg: CalibrateConfig, num_clips: int, seed: int, progress: bool = True, desc: str = "record"):
    """Per layer ``(q (clips, h, nq, e), k (clips, h, nk, e))`` over ``num_clips`` world clips."""
    from tqdm.auto import tqdm

    from .data.clips import WorldClipDataset

    view = pipe.transformer.config.sample_size
    data = WorldClipDataset(num_clips, cfg.frames, seed=seed, world_seed=cfg.world_seed,
                            world_size=int(pipe.transformer.config.pos_period), view=view)
    generator = torch.Generator().manual_seed(seed)
    per_layer = None
    for i in tqdm(range(num_clips), desc=desc, disable=not progress, file=sys.stderr):
        rec = record_clip(pipe, data[i], cfg, generator)
        if per_layer is None:
            per_layer = [([], []) for _ in rec]
        for layer, (q, k) in enumerate(rec):
            per_layer[layer][0].append(q.cpu())
            per_layer[layer][1].append(k.cpu())
    return [(torch.cat(qs), torch.cat(ks)) for qs, ks in per_layer]


# ----------------------------------------------------------------------------------- measures


@torch.no_grad()
def mass_kept(hasher, q: torch.Tensor, k: torch.Tensor, top_k: int, max_queries: int = 1024) -> float:
    """Mean share of each query's exact softmax mass over ``k`` held by its top-``top_k`` keys by
    signature similarity (ties to the lower key index, as a memory read)."""
    nq, nk = q.shape[-2], k.shape[-2]
    sel = torch.arange(min(nq, max_queries), device=q.device) * max(1, nq // max_queries)
    qs = q[..., sel, :]
    p = torch.softmax(qs.float() @ k.float().transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1)
    sim = hamming_similarity(hasher(qs, role="query"), hasher(k, role="key"), hasher.n_bits).to(torch.int64)
    rank = sim * (nk + 1) + (nk - torch.arange(nk, device=q.device))
    top = rank.topk(min(top_k, nk), dim=-1).indices
    return float(p.gather(-1, top).sum(-1).mean())


def _measure(hasher, q, k, top_k) -> dict:
    return {"recall": signature_topk_recall(hasher, q, k, top_k), "mass": mass_kept(hasher, q, k, top_k)}


# ----------------------------------------------------------------------------------- calibrate


def calibrate(pipe, cfg: CalibrateConfig, progress: bool = True) -> tuple[list[LearnedHash], dict]:
    """Record, fit one ``LearnedHash`` per layer, measure; returns ``(hashers, report)``. The
    pipeline's model is not changed (``pipe.transformer.set_memory_hash(..., hashers=...)`` installs them)."""
    from tqdm.auto import tqdm

    cfg.check()
    model = pipe.transformer
    check_top_k(model, cfg)
    heads, head_dim = model.config.num_heads, model.head_dim
    t0 = time.perf_counter()
    train = record(pipe, cfg, cfg.clips, cfg.seed, progress, "record clips")
    val = record(pipe, cfg, cfg.val_clips, cfg.seed + 1, progress, "record validation clips") if cfg.val_clips else None
    t_record = time.perf_counter() - t0
    current = model.memory_hashers()
    device = model.device
    hashers, layers = [], []
    bar = tqdm(range(len(train)), desc="fit LearnedHash per layer", disable=not progress, file=sys.stderr)
    for layer in bar:
        q, k = train[layer][0].to(device), train[layer][1].to(device)
        simhash = SimHash(head_dim, cfg.bits, heads=heads, seed=cfg.memory_seed + layer).to(device)
        learned = LearnedHash(head_dim, cfg.bits, heads, cfg.hidden, seed=cfg.seed + layer).to(device)
        before = _measure(simhash, q, k, cfg.top_k)
        fit = learned.fit(q, k, top_k=min(cfg.top_k, k.shape[-2]), steps=cfg.steps, lr=cfg.lr, pos_weight=cfg.pos_weight,
                          batch_queries=cfg.batch_queries, seed=cfg.seed + layer)
        learned.eval()
        after = _measure(learned, q, k, cfg.top_k)
        row = {"layer": layer, "recall_simhash": before["recall"], "recall_learned": after["recall"],
               "mass_simhash": before["mass"], "mass_learned": after["mass"], "loss": fit["loss"]}
        if current is not None:
            row["recall_current"] = _measure(current[layer], q, k, cfg.top_k)["recall"]
        if val is not None:
            vq, vk = val[layer][0].to(device), val[layer][1].to(device)
            vb, va = _measure(simhash, vq, vk, cfg.top_k), _measure(learned, vq, vk, cfg.top_k)
            row.update(val_recall_simhash=vb["recall"], val_recall_learned=va["recall"],
                       val_mass_simhash=vb["mass"], val_mass_learned=va["mass"])
        layers.append(row)
        hashers.append(learned.cpu())
        bar.set_postfix(recall=f"{before['recall']:.2f}→{after['recall']:.2f}")
    keys = [key for key in layers[0] if key not in ("layer",)]
    report = {
        "config": cfg.__dict__.copy(),
        "queries_per_layer": int(train[0][0].shape[0] * train[0][0].shape[2]),
        "keys_per_clip": int(train[0][1].shape[2]),
        "layers": layers,
        "mean": {key: sum(r[key] for r in layers) / len(layers) for key in keys},
        "seconds": {"record": round(t_record, 2), "total": round(time.perf_counter() - t0, 2)},
    }
    return hashers, report


PIPELINE_MARKER = "model_index.json"  # what makes a folder a saved pipeline (as vidhash.config.model_config_for reads it)


def check_out(out: str | os.PathLike, overwrite: bool = False) -> Path:
    """``--out``, before any work: a path where nothing is, an empty folder, or — with ``overwrite``,
    the only thing it replaces — a saved pipeline folder (one with ``model_index.json``). A file, a
    symlink, a folder that is not a pipeline (with --overwrite or not) or a pipeline without
    ``overwrite`` is refused, and so is a path below a file; ValueError naming --out."""
    out = Path(out)
    if out.is_symlink():
        raise ValueError(f"--out {out} is a symlink; pick another --out")
    if out.exists():
        if not out.is_dir():
            raise ValueError(f"--out {out} is a file, not a pipeline folder; --overwrite replaces only a saved "
                             "pipeline folder: pick another --out")
        if any(out.iterdir()):
            if not (out / PIPELINE_MARKER).is_file():
                raise ValueError(f"--out {out} exists and is not empty, and is not a saved pipeline folder (no "
                                 f"{PIPELINE_MARKER}); --overwrite replaces only a pipeline folder: pick another --out")
            if not overwrite:
                raise ValueError(f"--out {out} exists and is not empty (pass --overwrite to replace it)")
        return out
    parent = nearest_existing(out.parent)  # created if missing: what it builds on must be a folder
    if not parent.is_dir():
        raise ValueError(f"--out {out}: {parent} is not a folder")
    return out


def save_calibrated(pipe, hashers: list[LearnedHash], cfg: CalibrateConfig, out: str | os.PathLike,
                    overwrite: bool = False) -> Path:
    """Install ``hashers`` in the pipeline's model and write the pipeline to ``out`` (through a
    temporary folder next to it, given the usual permissions and renamed at the end). ``out`` is
    checked again first (:func:`check_out`): with ``overwrite`` only a saved pipeline folder is replaced."""
    out = check_out(out, overwrite)
    pipe.transformer.set_memory_hash(cfg.bits, cfg.hidden, hashers=hashers)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    old = None  # the folder replaced, moved aside under a fresh name until the new one is in place
    try:
        pipe.save_pretrained(str(tmp))
        os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes 0700; give the folder the usual permissions
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old)  # (onto the empty folder just made: a name nothing else uses)
        try:
            os.replace(tmp, out)
        except BaseException:
            if old is not None and not out.exists():
                os.replace(old, out)  # put the previous pipeline back
                old = None
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and old.is_dir() and not any(old.iterdir()):
            old.rmdir()
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out


# ----------------------------------------------------------------------------------- report


def format_report(report: dict) -> str:
    val = "val_recall_learned" in report["layers"][0]
    head = f"{'layer':>5}  {'recall SimHash':>14}  {'recall learned':>14}  {'mass SimHash':>12}  {'mass learned':>12}"
    if val:
        head += f"  {'val recall S→L':>16}"
    lines = [head]
    for r in report["layers"] + [dict(report["mean"], layer="mean")]:
        line = (f"{r['layer']:>5}  {r['recall_simhash']:>14.3f}  {r['recall_learned']:>14.3f}  "
                f"{r['mass_simhash']:>12.3f}  {r['mass_learned']:>12.3f}")
        if val:
            line += f"  {r['val_recall_simhash']:>7.3f}→{r['val_recall_learned']:<8.3f}"
        lines.append(line)
    c = report["config"]
    lines.append(f"recall of the exact top-{c['top_k']} keys among the top-{c['top_k']} by {c['bits']}-bit signatures; "
                 f"{report['queries_per_layer']} queries × {report['keys_per_clip']} older keys per clip; "
                 f"{report['seconds']['total']:.1f} s")
    return "\n".join(lines)


def worse_on_validation(report: dict) -> str | None:
    """A sentence when the learned signatures' mean validation recall is below SimHash's, else None."""
    m = report.get("mean", {})
    if "val_recall_learned" not in m:
        return None
    learned, simhash = m["val_recall_learned"], m["val_recall_simhash"]
    if learned >= simhash:
        return None
    return (f"on the validation clips the learned signatures recall {learned:.3f} of the exact top-k keys, "
            f"SimHash {simhash:.3f}")
