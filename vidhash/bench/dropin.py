"""Hash attention dropped into a trained wan-mini: each clip against the dense model's clip, and
FlexAttention on the same blocks.

    vidhash bench dropin --model models/wan-mini --json dropin.json --strip dropin.png

Letters: b batch, h heads, n tokens, d head_dim, f frames.

The model folder is a ``WanMiniPipeline`` (``vidhash train wan_mini``'s export). Every setting
samples the same seeds with the same inputs (per seed: its initial noise from a CPU generator and
a camera path of actions drawn from the seed): first the dense model (diffusers' own attention
processors: dense SDPA), then ``dense (repeat)`` — the same processors again: its frames must
equal the dense ones, the floor of every comparison — then the drop-in
(:func:`vidhash.integrations.diffusers.enable_hash_attention`) at each density × key-block size
(× ``--query-block-sizes``, rows ``… q64``, the drop-in's ``query_block_size`` — by default as large
as the key block, at least 64 tokens —; × scorer × ``--dense-steps`` × ``--dense-layers``: the drop-in's dense warmup, as Sparse VideoGen
and SVG2 keep full attention in the first denoising steps and blocks — ``dense_timestep`` from the
pipeline's scheduler for ``--steps`` steps, ``dense_layers``; rows ``… ds2 dl1``, both 0 by
default, the rows and table then as without them), and the same setting again with ``backend="flex"``: vidhash's selection, PyTorch's
FlexAttention attending to the selected blocks (:mod:`vidhash.integrations.flex`; compiled on
CUDA, eager on the CPU; ``--no-flex`` skips it). One row per setting (SVG2's protocol), in the
JSON and the printed Markdown table:

* ``psnr`` — dB over the whole clip against the dense clip (mean squared error of all frames'
  uint8 RGB; ``inf`` for identical clips — null in the JSON, which has no infinity: the dense rows'
  null means identical), mean over seeds; ``ssim`` — mean over frames and seeds
  (luma, :func:`vidhash.metrics.ssim`);
* ``coherence`` — :func:`vidhash.metrics.measure_coherence_frames` of the first seed's clip (flicker,
  warp error, motion, adjacent SSIM, smoothness, start vs end; the dense row holds the dense clip's),
  measured on the uint8 frames in memory: no mp4 and no PyAV, so no codec loss, and the column is
  filled on the GPU image too (the JSON's ``coherence_source``: ``"frames"``; reports without that key
  measured an H.264 mp4 of the clip, and had the column empty where PyAV was missing);
* ``recall`` — mean over layers of the share of exact attention mass the drop-in's block
  selection keeps, on the dense run's queries and keys at one denoising step (``--recall-step``)
  of the first seed; ``oracle`` — the most any selection of as many blocks can keep; ``error`` —
  the relative error of the layer's sparse attention output (with the setting's remainder) against
  dense attention on the same captured queries, keys and values; per layer in ``layers``. Only what ran sparse counts: a dense layer (``--dense-layers``) is listed as
  ``{"layer": …, "dense": "layer"}`` and left out of the mean, and where the recall step is one of
  the setting's dense steps every layer is ``"dense": "step"`` and ``recall``/``oracle`` are None
  (the recall step is fixed, so rows stay comparable: pick one after the dense steps);
* ``dense_steps``, ``dense_layers``, ``dense_timestep`` — the setting's dense warmup and the
  timestep threshold it ran with (None on the dense rows); the table shows the first two where any
  row has them;
* ``remainder`` — ``--remainders``: ``"none"``, or ``"mean"`` (rows ``… +mean``: the drop-in adds,
  per query, one mean token for each key block the selection did not keep —
  :func:`vidhash.attention.block_mean_remainder`; recall/oracle are of the kept blocks either way);
* ``reuse_delta`` — ``--reuse-delta``: 0, or the drop-in's ``reuse_delta`` with ``delta_half_life`` =
  this (rows ``… delta/<half-life>``, reuse rows without refresh only — other combinations are
  skipped: the last dense step's error of the sparse output, added to every sparse step's);
* ``reuse_mass``, ``mass_refresh`` — ``--reuse-mass`` / ``--mass-refresh``: 0, or the drop-in's
  ``reuse_mass`` with that ``mass_query_stride`` (rows ``… reuse/<stride>``: the sparse steps select
  from the last dense step's exact block mass; recall/oracle/error are not measured for them — the
  scorer's selection is not theirs) and its ``mass_refresh`` (rows ``… r<N>``); None on the dense rows;
* ``transformer_ms`` — median milliseconds of one transformer call (a denoising step), and
  ``clip_s`` — median seconds of one whole clip (the pipeline call from the seed's initial noise,
  drawn beforehand from its CPU generator — the same values as ``generator=`` gives; ``noise_ms`` is
  the median time that drawing took, the same work for every row: before 2026-12-05 it was inside
  ``clip_s``), synchronised on CUDA; the
  first seed's clip warms up (kernel autotuning, Flex's compilation) and is left out (with one
  seed, its clip is sampled twice and the second one kept and timed). ``clip_s_dense`` is the
  dense row's (dense SDPA); ``speedup`` is ``clip_s_dense / clip_s``;
* ``transformer_ms_flex``, ``clip_s_flex``, ``speedup_flex`` — the same with Flex attending;
  with ``--compile`` every setting (dense too) runs with the transformer's blocks compiled
  (``fullgraph=True``; ``--compile-mode``, ``--compile-backend``), as a user of diffusers would
  run a model they care about the speed of: the norms, rotary embedding and projections fused,
  so the attention's share of a step — what the drop-in can cut — is what remains;
  ``--compile-scope model`` compiles the whole forward instead (the one form that takes a CUDA-graph
  ``--compile-mode``, e.g. ``reduce-overhead``: launch overhead gone, see :func:`compile_model`);
  ``flex_psnr`` — PSNR of Flex's clips against ours (the same blocks: only rounding differs, so
  very high, ``inf`` — null in the JSON — when equal); ``flex_error`` where Flex failed (the rest of the row stands).

``--scorers``: the drop-in's scorers (:data:`vidhash.attention.SCORERS`; ``default``: its default,
``pooled``) and two fitted on the model's own queries and keys (:class:`FittedScorers`):
``learned`` — a :class:`~vidhash.selection.learned.LearnedBlockScorer` per self-attention module,
one per key-block size × query-block size × kept count (the densities that keep as many blocks
share it), passed as ``enable_hash_attention(scorer={module: scorer})``; ``calibrated`` —
``scorer="simhash"`` on :class:`~vidhash.hashing.LearnedHash` signatures per module fitted as
``vidhash calibrate`` fits them (:func:`vidhash.integrations.calibrate.fit_hashers`, one fit for every
row), passed as ``hasher={module: hasher}``. Both fit on the dense clips of ``--fit-seeds`` (default:
one seed, ``max(--seeds) + 1``; a measured seed is refused) at the denoising steps ``--fit-denoising-steps``
(default: the first sparse step of each ``--dense-steps``, the ``--recall-step`` and the last step),
recorded once before the first row and only where a row names a fitted scorer; each fit runs when
the first row needing it does, outside its timings. The recording's and fits' seconds are printed,
and the JSON's ``fitted`` holds the seeds, steps, seconds and the fit reports (``learned``: per fit,
the share of the oracle's mass its kept blocks hold, before and after, on the fitted and the
held-out samples; ``calibrated``: per module, recall of each query's exact top-k keys, SimHash →
learned, fitted and held out). ``recall``, ``oracle``, ``error`` and the Flex columns select with
the same fitted module or hashers per layer as the drop-in; the reuse rows enable the drop-in
with them too, but select from the dense step's mass (the same selection as any scorer's reuse rows).

``--profile`` adds ``profile`` to every row (:func:`profile_call`): the first seed's
``--recall-step`` transformer call replayed with the setting still enabled — its synchronised wall
time, and under ``torch.profiler`` the CUDA kernels' time, their share of the wall time (below 1:
the GPU waits on the host), launches per call and milliseconds by kernel category — the measured
cause the issue asks for where a speed-up falls short.

A density that keeps no more key blocks than a query block's forced ones (``sink_blocks``,
``local_blocks``) at the clip's tokens keeps those instead — the drop-in raises ``kept`` to them —
so such densities give the same rows under different names: they are named in a warning on stderr
before the first clip (:func:`forced_fill_warnings`; e.g. 1/2, 1/4 and 1/8 with key blocks of 16 at
8 frames of 32² on the CPU-test model, 128 tokens).

The JSON is rewritten after every row (``"complete": false`` until the end), and so is the strip,
so a run cut off by a time limit keeps what it measured. ``--strip`` writes a PNG of evenly spaced
frames of the first seed: rows dense, 1/8, 1/32 (the first key-block size and scorer), where those
ran; the JSON's ``strip`` names them.

**GPU time** (one H200, bf16; estimated, not measured): the default set — 4 densities × key
blocks 64 and 16, the default scorer, 3 seeds of 33 frames at 256² (33,792 tokens), 30 steps —
samples 7 dense clips (≈ 25 ms a step, ≈ 0.8 s a clip) and 48 sparse ones (≈ 0.3–0.5 s each);
with Flex's two compilations (one per key-block size, ≈ 30–60 s each), the Triton kernels'
autotuning, recall (5 layers per setting) and 17 coherence reports (≈ 1 s each, CPU), about
4–6 minutes after the GPU script's set-up. Each extra scorer adds ≈ 1 minute; ``--block-sizes
64`` or ``--no-flex`` roughly halves the sparse part. The fitted scorers add a dense clip per fit seed
(up to its last ``--fit-denoising-steps`` step; kept in bf16 on the CPU, ≈ 0.4 GB a seed and step on wan-mini at
the default shape) and their fits (not yet timed on a GPU).
"""
from __future__ import annotations

import inspect
import math
import os
import sys
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from vidhash.attention import SCORERS
from vidhash.bench import recorded_flags
from vidhash.files import write_json as write_json_file

STRIP_DENSITIES = (Fraction(1, 8), Fraction(1, 32))
COHERENCE_KEYS = ("flicker", "warp_error", "motion", "ssim_adjacent", "smoothness", "start_end")
FITTED_SCORERS = ("learned", "calibrated")
"""``--scorers`` fitted on the model's own queries and keys (:class:`FittedScorers`), beside
:data:`~vidhash.attention.SCORERS`."""
LEARNED_FIT = {"fit_blocks": 128, "fit_steps": 200}
"""The ``learned`` scorers' fit: query blocks of the recording whose block mass it fits, Adam steps
(``vidhash bench selection``'s ``--fit-blocks`` and ``--fit-steps`` defaults)."""


@dataclass(frozen=True)
class Setting:
    """One row: ``density`` None is the dense model (diffusers' processors). ``dense_steps`` /
    ``dense_layers``: the drop-in's dense warmup (its first denoising steps, its first self-attention
    modules run dense). ``remainder``: the drop-in's ``remainder`` (``"mean"``: the unkept key blocks as
    one mean token each). ``layer_densities``: the drop-in's per-module densities, as sorted pairs.
    ``reuse_mass``: 0, or the drop-in's ``reuse_mass`` with ``mass_query_stride`` = this (the sparse
    steps select from the last dense step's block mass); ``mass_refresh``: its ``mass_refresh``.
    ``query_block_size``: the drop-in's ``query_block_size`` (None: its default,
    :func:`~vidhash.integrations.diffusers.default_query_block`). ``reuse_delta``: 0, or the drop-in's
    ``reuse_delta`` with ``delta_half_life`` = this (``math.inf``: no decay)."""

    name: str
    density: Fraction | None = None
    block_size: int | None = None
    scorer: str | None = None
    dense_steps: int = 0
    dense_layers: int = 0
    remainder: str = "none"
    layer_densities: tuple[tuple[str, float], ...] = ()
    reuse_mass: int = 0
    mass_refresh: int = 0
    query_block_size: int | None = None
    reuse_delta: float = 0.0

    @property
    def half_life(self) -> float | None:
        """The drop-in's ``delta_half_life`` for this row's ``reuse_delta`` (None: no decay, or no delta)."""
        return None if not self.reuse_delta or math.isinf(self.reuse_delta) else self.reuse_delta

    @property
    def query_block(self) -> int:
        """The query block size the drop-in runs this sparse setting with (its default where none is given)."""
        from vidhash.integrations.diffusers import default_query_block

        return self.query_block_size or default_query_block(self.block_size)


def layer_tag(layer_densities: dict[str, float]) -> str:
    """`` [blocks.2.attn1=1/8]``: the per-module densities in a row's name (fractions where exact)."""
    if not layer_densities:
        return ""
    parts = [f"{name}={Fraction(v).limit_denominator(1024)}" for name, v in sorted(layer_densities.items())]
    return " [" + ",".join(parts) + "]"


def split_items(text: str, flag: str) -> list[str]:
    """``text``'s comma-separated items, stripped; ValueError naming ``flag`` where it is empty or an
    item is blank (``1/4,,1/8``, ``,``: a typo, not a shorter list)."""
    items = [x.strip() for x in text.split(",")]
    if not text.strip():
        raise ValueError(f"{flag} is empty; give a comma-separated list")
    if not all(items):
        raise ValueError(f"{flag} has a blank item in {text!r}")
    return items


def parse_fractions(text: str, flag: str) -> list[Fraction]:
    """``"1/4,1/8"`` → fractions in (0, 1]; ValueError naming ``flag``."""
    items = split_items(text, flag)
    try:
        values = [Fraction(s) for s in items]
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"{flag} must be comma-separated fractions like 1/4,1/8, got {text!r}") from None
    if not values or any(not 0 < v <= 1 for v in values):
        raise ValueError(f"{flag} must be fractions in (0, 1], got {text!r}")
    return values


def parse_ints(text: str, flag: str, minimum: int = 1) -> list[int]:
    items = split_items(text, flag)
    try:
        values = [int(s) for s in items]
    except ValueError:
        raise ValueError(f"{flag} must be comma-separated integers, got {text!r}") from None
    if not values or any(v < minimum for v in values):
        raise ValueError(f"{flag} must be integers >= {minimum}, got {text!r}")
    return values


MAX_SEED = 2**64 - 1
"""The largest seed ``torch.Generator().manual_seed`` takes (each seed's initial noise and recording)."""


def parse_seeds(text: str, flag: str) -> list[int]:
    """``--seeds`` / ``--fit-seeds``: distinct integers in ``[0, MAX_SEED]`` (torch.Generator's range:
    a larger seed failed at its first clip with "Overflow when unpacking long long"); ValueError naming ``flag``."""
    seeds = parse_ints(text, flag, minimum=0)
    if max(seeds) > MAX_SEED:
        raise ValueError(f"{flag} must be seeds in [0, 2**64 - 1] (torch.Generator's range), got {text!r}")
    if len(set(seeds)) != len(seeds):  # (a seed twice would count its clip twice in every mean)
        raise ValueError(f"{flag} has repeats: {text}")
    return seeds


def make_settings(densities: list[Fraction], block_sizes: list[int], scorers: list[str | None],
                  dense_steps: list[int] = (0,), dense_layers: list[int] = (0,),
                  remainders: list[str] = ("none",), layer_densities: dict[str, float] | None = None,
                  reuse: list[int] = (0,), refresh: list[int] = (0,),
                  query_blocks: list[int | None] = (None,), repeat: bool = True,
                  deltas: list[float] = (0.0,)) -> list[Setting]:
    """dense, dense (repeat) (unless not ``repeat``), then scorer × block size (× query block, named `` q<size>`` where given)
    × density (× dense steps × dense layers ×
    remainder × reuse, innermost; named ``ds<steps>`` / ``dl<layers>`` where not 0, ``+<remainder>`` where
    not ``"none"``, ``reuse/<stride>`` where ``reuse`` is not 0 (only with dense steps: a setting
    without them has no mass to reuse and is skipped; `` r<N>`` per ``refresh`` N > 0, reuse rows
    only; `` delta/<h>`` per ``deltas`` h > 0, reuse rows without refresh only), ``[module=density,...]`` where
    ``layer_densities`` are given — every sparse row)."""
    pairs = tuple(sorted((layer_densities or {}).items()))
    rows = [Setting("dense"), Setting("dense (repeat)")] if repeat else [Setting("dense")]
    for scorer in scorers:
        for bs, bq in ((b, q) for b in block_sizes for q in query_blocks):
            for d in densities:
                for steps in dense_steps:
                    for layers in dense_layers:
                        for rest in remainders:
                            for stride, every, delta in ((s, r, h) for s in reuse for r in (refresh if s else (0,))
                                                         for h in (deltas if s and not r else (0.0,))):
                                if stride and not steps:
                                    continue
                                tag = "" if bq is None else f" q{bq}"
                                tag += "" if scorer is None else f" {scorer}"
                                tag += (f" ds{steps}" if steps else "") + (f" dl{layers}" if layers else "")
                                tag += f" +{rest}" if rest != "none" else ""
                                tag += (f" reuse/{stride}" if stride else "") + (f" r{every}" if every else "")
                                tag += f" delta/{delta:g}" if delta else ""
                                tag += layer_tag(dict(pairs))
                                name = f"{d} b{bs}{tag}"
                                if any(r.name == name for r in rows):  # a value given twice: one row
                                    continue
                                rows.append(Setting(name, d, bs, scorer, steps, layers, rest, pairs, stride, every, bq,
                                                    float(delta)))
    return rows


def check_settings(settings: list[Setting]) -> None:
    """The drop-in's own checks of each sparse setting's block sizes, scorer and reuse stride, before
    any clip is sampled (a bad combination found after the dense clips wastes them); ValueError naming
    the row and the flags."""
    from vidhash.attention import check_subgrid
    from vidhash.integrations.diffusers import DropInConfig, _check_reuse_mass
    from vidhash.ops.checks import check_selection_args

    for st in (st for st in settings if st.density is not None):
        scorer = "simhash" if st.scorer == "calibrated" else st.scorer  # (learned: a module per layer; no check reads it)
        cfg = DropInConfig(density=float(st.density), block_size=st.block_size,
                      query_block_size=st.query_block_size, scorer=scorer or DropInConfig.scorer,
                      dense_timestep=1.0 if st.dense_steps else None, reuse_mass=bool(st.reuse_mass),
                      mass_query_stride=st.reuse_mass or 1, mass_refresh=st.mass_refresh, remainder=st.remainder,
                      reuse_delta=bool(st.reuse_delta), delta_half_life=st.half_life)
        try:
            check_selection_args(cfg.density, cfg.block_size, cfg.query_block_size, cfg.local_blocks, cfg.sink_blocks)
            check_subgrid(cfg.scorer, cfg.block_size, cfg.query_block_size)
            _check_reuse_mass(cfg)
        except ValueError as e:
            raise ValueError(f"--block-sizes / --query-block-sizes / --scorers / --reuse-mass, row {st.name!r}: {e}") from None


def forced_fill_warnings(settings: list[Setting], transformer: torch.nn.Module, frames: int, size: int) -> list[str]:
    """One line per key-block × query-block size where some ``--densities`` keep no more key blocks
    than a query block's forced ones (the drop-in's ``sink_blocks`` and ``local_blocks``) at this
    clip's tokens: ``kept`` is raised to the forced count
    (:func:`~vidhash.kernels.block_select.naive.num_kept_blocks`), so every such density keeps the
    same blocks and their rows come out identical under different names (density 1, which keeps
    every block by design, is not named). Empty where none does."""
    from vidhash.integrations.diffusers import DropInConfig
    from vidhash.kernels.block_select.naive import max_forced_blocks
    from vidhash.ops.checks import num_kept

    p_t, p_h, p_w = transformer.config.patch_size
    n = (frames // p_t) * (size // p_h) * (size // p_w)  # the self-attention's tokens (the patch embedding's output)
    sink, local = DropInConfig.sink_blocks, DropInConfig.local_blocks
    filled: dict[tuple[int, int], list[Fraction]] = {}  # (key block, query block) -> the densities named
    for st in (st for st in settings if st.density is not None and st.density < 1):
        key_blocks = -(-n // st.block_size)
        forced = max_forced_blocks(n, n, st.query_block, st.block_size, local, sink, False)
        densities = filled.setdefault((st.block_size, st.query_block), [])
        if num_kept(float(st.density), key_blocks) <= forced and st.density not in densities:
            densities.append(st.density)
    lines = []
    for (bk, bq), densities in ((key, d) for key, d in filled.items() if d):
        key_blocks = -(-n // bk)
        forced = min(key_blocks, max_forced_blocks(n, n, bq, bk, local, sink, False))
        one = len(densities) == 1
        keeps = "it keeps" if one else "each keeps"
        same = "" if one else ", the same rows under different names"
        if forced >= key_blocks:
            kept, advice = f"{keeps} all {key_blocks} (dense attention, as density 1){same}", \
                "smaller --block-sizes / --query-block-sizes"
        else:
            kept, advice = f"{keeps} those {forced} (density {Fraction(forced, key_blocks)}){same}", \
                "higher --densities, smaller --query-block-sizes"
        lines.append(f"--densities {', '.join(map(str, densities))} with key blocks of {bk} (query blocks of {bq}): a "
                     f"{n}-token clip has {key_blocks} key blocks, and a query block's forced ones (sink_blocks {sink}, "
                     f"local_blocks {local}) take up to {forced}, at least what {'this density keeps' if one else 'these densities keep'}: "
                     f"{kept}; give {advice} or a larger clip (--frames, --size)")
    return lines


def parse_remainders(text: str) -> list[str]:
    """``"none,mean"`` → the drop-in's ``remainder`` values; ValueError naming --remainders."""
    from vidhash.attention import REMAINDERS

    values = split_items(text, "--remainders")
    if any(v not in REMAINDERS for v in values):
        raise ValueError(f"--remainders must be comma-separated values of {REMAINDERS}, got {text!r}")
    return values


def parse_half_lives(text: str) -> list[float]:
    """``--reuse-delta``: ``"0,16,inf"`` → 0 (off) and the drop-in's ``delta_half_life`` values in sparse
    calls (``inf``: no decay); ValueError naming the flag."""
    items = split_items(text, "--reuse-delta")
    try:
        values = [float(x) for x in items]
    except ValueError:
        values = []
    if not values or any(math.isnan(v) or v < 0 for v in values):
        raise ValueError(f"--reuse-delta must be comma-separated numbers >= 0 (0: off; a half-life in sparse steps, "
                         f"inf: no decay), got {text!r}")
    return values


def parse_layer_densities(text: str) -> dict[str, float]:
    """``"blocks.2.attn1=1/8,blocks.3.attn1=0.25"`` → ``{name: density}`` (every sparse setting's
    ``layer_densities``); ``""`` → ``{}``; ValueError naming --layer-densities."""
    out = {}
    for item in split_items(text, "--layer-densities") if text.strip() else []:
        name, sep, value = item.partition("=")
        try:
            density = float(Fraction(value.strip()))
        except (ValueError, ZeroDivisionError):
            density = None
        if not sep or not name.strip() or density is None or not 0 < density <= 1:
            raise ValueError(f"--layer-densities must be comma-separated MODULE=DENSITY pairs with densities in (0, 1] "
                             f"(e.g. blocks.2.attn1=1/8), got {item!r}")
        out[name.strip()] = density
    return out


def parse_fit_inputs(args, seeds: list[int], dense_steps: list[int], fitting: bool) -> tuple[list[int], list[int]]:
    """``--fit-seeds`` and ``--fit-denoising-steps`` of the fitted scorers (``fitting``: ``--scorers`` names one):
    by default one seed, ``max(--seeds) + 1``, and the steps that begin the sparse part of each
    ``--dense-steps`` schedule, the ``--recall-step`` and the last step (the start, middle and end of
    what the rows run sparse). ``([], [])`` without fitted scorers. ValueError naming the flag: a fit
    seed that is also measured (``--seeds``), repeats, a step outside ``[0, --steps)``, or either
    flag given without a fitted scorer (it would be ignored)."""
    seeds_text, steps_text = getattr(args, "fit_seeds", None), getattr(args, "fit_denoising_steps", None)
    if not fitting:
        for flag, text in (("--fit-seeds", seeds_text), ("--fit-denoising-steps", steps_text)):
            if text is not None:
                raise ValueError(f"{flag} applies to the fitted scorers: add {' or '.join(FITTED_SCORERS)} to --scorers, "
                                 f"or leave {flag} out")
        return [], []
    if seeds_text is None and max(seeds) >= MAX_SEED:
        raise ValueError(f"--fit-seeds defaults to max(--seeds) + 1, beyond torch.Generator's seeds (2**64 - 1) for "
                         f"--seeds {args.seeds}: give --fit-seeds")
    fit_seeds = parse_seeds(seeds_text, "--fit-seeds") if seeds_text is not None else [max(seeds) + 1]
    measured = sorted(set(fit_seeds) & set(seeds))
    if measured:
        raise ValueError(f"--fit-seeds {seeds_text} has {', '.join(map(str, measured))}, also in --seeds {args.seeds}: "
                         "the scorers must be fitted on clips the rows do not measure")
    if steps_text is None:
        return fit_seeds, sorted({d for d in dense_steps if d < args.steps} | {args.recall_step, args.steps - 1})
    fit_steps = parse_ints(steps_text, "--fit-denoising-steps", minimum=0)
    if len(set(fit_steps)) != len(fit_steps) or max(fit_steps) >= args.steps:
        raise ValueError(f"--fit-denoising-steps must be distinct denoising steps in [0, --steps), got {steps_text} (--steps {args.steps})")
    return fit_seeds, sorted(fit_steps)


def dense_timestep_of(pipe, steps: int, dense_steps: int) -> float | None:
    """The drop-in's ``dense_timestep`` that runs the first ``dense_steps`` of the pipeline's
    ``steps``-step schedule dense (:func:`~vidhash.integrations.diffusers.dense_timestep_for` on a
    copy of its scheduler after ``set_timesteps(steps)``, as the pipeline calls it); None for 0."""
    import copy

    from vidhash.integrations.diffusers import dense_timestep_for

    if not dense_steps:
        return None
    scheduler = copy.deepcopy(pipe.scheduler)
    scheduler.set_timesteps(steps)
    return dense_timestep_for(scheduler, dense_steps)


def dense_options(pipe, setting: Setting, steps: int) -> dict:
    """``enable_hash_attention``'s dense-warmup options of ``setting`` (none where both are 0, so such a
    setting enables the drop-in exactly as before they existed)."""
    out = {}
    if setting.dense_layers:
        out["dense_layers"] = setting.dense_layers
    if setting.dense_steps:
        out["dense_timestep"] = dense_timestep_of(pipe, steps, setting.dense_steps)
    return out


def drop_in_options(setting: Setting, fitted: FittedScorers | None = None) -> dict:
    """Keyword arguments for ``enable_hash_attention`` beyond density and block size: the setting's
    ``scorer`` (none for ``--scorers default``); ``learned`` passes ``fitted``'s scorers by module name,
    ``calibrated`` ``scorer="simhash"`` with its hashers by module name (``hasher=``); ValueError
    naming --scorers where the drop-in takes no scorer."""
    from vidhash.integrations.diffusers import enable_hash_attention

    scorer = setting.scorer
    if scorer is None:
        return {}
    if "scorer" not in inspect.signature(enable_hash_attention).parameters:
        from vidhash.integrations.diffusers import CONFIG_KEYS

        if "scorer" not in CONFIG_KEYS:
            raise ValueError(f"--scorers {scorer}: this vidhash's enable_hash_attention takes no scorer")
    if scorer == "learned":
        return {"scorer": fitted.learned(setting)}
    if scorer == "calibrated":
        return {"scorer": "simhash", "hasher": fitted.calibrated()}
    return {"scorer": scorer}


class StepTimer:
    """Milliseconds of every transformer call (forward hooks; synchronised on CUDA)."""

    def __init__(self, transformer: torch.nn.Module):
        self.ms: list[float] = []
        self._t0 = 0.0
        self._cuda = next(transformer.parameters()).is_cuda
        self._handles = [transformer.register_forward_pre_hook(self._start),
                         transformer.register_forward_hook(self._stop)]

    def _sync(self) -> float:
        if self._cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def _start(self, *_):
        self._t0 = self._sync()

    def _stop(self, *_):
        self.ms.append(1000 * (self._sync() - self._t0))

    def close(self) -> None:
        for h in self._handles:
            h.remove()


def camera_path(seed: int, num_frames: int) -> list[str]:
    """A seed's actions: runs of 2-6 frames of one move (no 'stay' at frame 0's place)."""
    from vidhash.camera import ACTIONS

    moves = [a for a in ACTIONS if a != "stay"]
    rng = np.random.default_rng(seed)
    out: list[str] = []
    while len(out) < num_frames:
        out += [moves[rng.integers(len(moves))]] * int(rng.integers(2, 7))
    return out[:num_frames]


def initial_noise(pipe, seed: int, frames: int, size: int) -> torch.Tensor:
    """The seed's initial noise ``(1, c, f, size, size)`` float32 on the transformer's device: what the
    pipeline draws itself for ``generator=torch.Generator().manual_seed(seed)`` (diffusers'
    ``randn_tensor`` with a CPU generator: drawn on the CPU, then moved), the same values."""
    from diffusers.utils.torch_utils import randn_tensor

    shape = (1, pipe.conditioning.channels, frames, size, size)
    noise = randn_tensor(shape, generator=torch.Generator().manual_seed(seed), device=torch.device("cpu"),
                         dtype=torch.float32)
    return noise.to(pipe._execution_device)


def sample_clips(pipe, seeds: list[int], args) -> tuple[list[np.ndarray], list[float], list[float], list[float]]:
    """Clips (f, h, w, 3) uint8 of every seed, the seconds of each clip (the pipeline call from the
    seed's initial noise, :func:`initial_noise`, drawn before it), the ms of each step and the seconds
    each seed's noise took to draw and move (on the CPU: ~60 ms for 33 × 3 × 256² on a 2-core CPU)."""
    timer = StepTimer(pipe.transformer)
    clips, seconds, noise_s = [], [], []
    try:
        for seed in seeds:
            t0 = timer._sync()
            noise = initial_noise(pipe, seed, args.frames, args.size)
            t1 = timer._sync()
            frames = pipe(actions=camera_path(seed, args.frames), num_frames=args.frames, height=args.size,
                          width=args.size, num_inference_steps=args.steps, latents=noise).frames[0]
            seconds.append(timer._sync() - t1)
            noise_s.append(t1 - t0)
            clips.append((np.clip(frames, 0, 1) * 255).round().astype(np.uint8))
    finally:
        timer.close()
    return clips, seconds, timer.ms, noise_s


def clip_psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR (dB) of two uint8 clips over all their pixels; ``inf`` when identical."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def clip_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM over frames (luma)."""
    import cv2

    from vidhash.metrics import ssim

    luma = [(cv2.cvtColor(x, cv2.COLOR_RGB2GRAY), cv2.cvtColor(y, cv2.COLOR_RGB2GRAY)) for x, y in zip(a, b)]
    return float(np.mean([ssim(x.astype(np.float32), y.astype(np.float32)) for x, y in luma]))


COHERENCE_SOURCE = "frames"
"""What :func:`coherence_of` measures (the JSON's ``coherence_source``): the clip's uint8 frames in memory."""


def coherence_of(clip: np.ndarray, fps: float) -> dict:
    """The coherence report's summary (``COHERENCE_KEYS``) of one ``(frames, height, width, 3)`` uint8
    clip, measured on its frames in memory (:func:`vidhash.metrics.measure_coherence_frames`: every
    frame at ``fps``, at the clip's own size — within the working sizes the metrics take, 16 to
    ``MAX_SIZE`` pixels: a clip of 8² is measured at 16², as a file of it would be; no mp4, no PyAV)."""
    from vidhash.metrics import CoherenceOptions, measure_coherence_frames
    from vidhash.metrics.video import MAX_SIZE

    size = min(MAX_SIZE, max(16, *clip.shape[1:3])) if np.ndim(clip) == 4 else 128  # a bad clip: check_frames says why
    report = measure_coherence_frames(clip, fps, CoherenceOptions(analysis_fps=fps, size=int(size)), name="clip")
    return {k: report.get(k) for k in COHERENCE_KEYS}


def capture_qk(pipe, seed: int, args) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The dense run's post-rotary queries, keys and values ``(b, h, n, d)`` of every self-attention
    at denoising step ``args.recall_step`` of ``seed`` (recording processors, dense SDPA)."""
    return capture_steps(pipe, seed, (args.recall_step,), args.frames, args.size, args.steps)[args.recall_step]


class _Captured(BaseException):
    """Raised by :func:`capture_steps`' hook once the last wanted step is recorded (a BaseException:
    no ``except Exception`` between the hook and the caller swallows it)."""


def capture_steps(pipe, seed: int, steps, frames: int, size: int, total: int) -> dict[int, dict]:
    """``{step: {module name: (q, k, v)}}`` for each of ``steps`` of one dense ``total``-step clip of
    ``seed`` (:func:`capture_qk` for one step). The clip stops after the last wanted step (the
    schedule is still ``total`` steps')."""
    from vidhash.integrations.diffusers import DropInConfig, WanHashAttnProcessor, self_attention_modules

    tf = pipe.transformer
    captured: dict[int, dict] = {int(s): {} for s in steps}
    calls = [0]

    class Recording(WanHashAttnProcessor):  # density 1: the stock attention call, its inputs kept at the steps
        def _attend(self, query, key, value):
            if calls[0] in captured:
                captured[calls[0]][self.name] = tuple(x.detach().transpose(1, 2).clone() for x in (query, key, value))
            return super()._attend(query, key, value)

    originals = dict(tf.attn_processors)
    procs = dict(originals)
    for name in self_attention_modules(tf):
        procs[f"{name}.processor"] = Recording(DropInConfig(density=1.0), None, None, name)
    tf.set_attn_processor(procs)
    last = max(captured)

    def count(*_):
        calls[0] += 1
        if calls[0] > last:
            raise _Captured

    handle = tf.register_forward_hook(count)
    try:
        pipe(actions=camera_path(seed, frames), num_frames=frames, height=size, width=size,
             num_inference_steps=total, generator=torch.Generator().manual_seed(seed))  # the same schedule
    except _Captured:  # the pipeline's own end skipped: offload hooks back as after a whole clip
        free = getattr(pipe, "maybe_free_model_hooks", None)
        if free is not None:
            free()
    finally:
        handle.remove()
        tf.set_attn_processor(originals)
    return captured


@torch.no_grad()
def record_steps(pipe, seeds, steps, frames: int, size: int, total: int, label: str) -> dict[str, tuple]:
    """``{module: (q, k, v) (S, h, n, d) bf16 on the CPU}``: :func:`capture_steps` of every seed at
    denoising ``steps``, ``S = len(seeds) × len(steps)``, seed-major; one line per seed, ``label``
    first. Kept in bf16 (what the GPU runs), so a cached recording measures as the fresh one does."""
    per_layer: dict[str, list] = {}
    for seed in seeds:
        t0 = time.perf_counter()
        captured = capture_steps(pipe, seed, steps, frames, size, total)
        for step in steps:
            for name, qkv in captured[step].items():
                per_layer.setdefault(name, []).append(tuple(x.to("cpu", torch.bfloat16) for x in qkv))
        print(f"  {label}: seed {seed} recorded in {time.perf_counter() - t0:.0f} s", flush=True)
    return {name: tuple(torch.cat(xs) for xs in zip(*calls)) for name, calls in per_layer.items()}


def free_kept(n: int, density: float, block_size: int, query_block_size: int) -> int:
    """The key blocks a query block keeps by score at ``n`` tokens: the drop-in's ``kept``
    (:func:`~vidhash.kernels.block_select.naive.num_kept_blocks`, its ``sink_blocks`` and
    ``local_blocks``) less the mean forced count, at least 1 — the budget ``vidhash bench selection``
    fits its ``learned`` rows for."""
    from vidhash.integrations.diffusers import DropInConfig
    from vidhash.kernels.block_select.naive import forced_and_allowed, num_kept_blocks

    local, sink = DropInConfig.local_blocks, DropInConfig.sink_blocks
    kept = num_kept_blocks(n, n, density=density, block_size=block_size, query_block_size=query_block_size,
                           local_blocks=local, sink_blocks=sink, causal=False)
    forced, _ = forced_and_allowed(torch.arange(-(-n // query_block_size)), n, n, query_block_size, block_size, local,
                                   sink, False)
    return max(1, kept - round(float(forced.sum(-1).float().mean())))


class FittedScorers:
    """The fitted scorers of one run (``--scorers learned`` / ``calibrated``), on one recording of the
    dense clips of ``seeds`` (``--fit-seeds``, never a measured seed) at denoising ``steps``
    (``--fit-denoising-steps``; :func:`record_steps`, before any row), each fitted the first time a row asks
    for it (on the transformer's device, float32):

    * :meth:`learned` — a :class:`~vidhash.selection.learned.LearnedBlockScorer` per self-attention
      module × key-block size × query-block size × :func:`free_kept` count, as ``vidhash bench
      selection`` fits its ``learned`` rows (:func:`vidhash.bench.learned_fit.fit_learned`:
      :data:`LEARNED_FIT`'s query blocks and Adam steps, the last recorded samples held out). Its loss
      reads no budget, but which step's weights are kept does (the held-out kept share at that
      count), so densities keeping as many blocks share one fit and others do not;
    * :meth:`calibrated` — a :class:`~vidhash.hashing.LearnedHash` per module
      (:func:`vidhash.integrations.calibrate.fit_hashers` with the default
      :class:`~vidhash.integrations.calibrate.HashCalibrationConfig`, tokens drawn by its recorder
      from every recorded sample: the even samples fit, the odd ones are held out): token
      signatures, so one fit serves every block size and density.

    ``report`` is the JSON's ``fitted``: the seeds, steps and recording seconds, one entry per
    learned fit (module, sizes, ``kept``, ``seconds`` and the fit's kept shares before and after,
    held out) and the calibration's per-module recall of the exact top-k keys, SimHash → learned."""

    def __init__(self, pipe, seeds: list[int], steps: list[int], frames: int, size: int, total: int):
        t0 = time.perf_counter()
        self.layers = record_steps(pipe, seeds, steps, frames, size, total, label="fit")
        self.device = next(pipe.transformer.parameters()).device
        self.report = {"seeds": list(seeds), "steps": list(steps), "record_s": time.perf_counter() - t0,
                       "learned": [], "calibrated": None}
        self._transformer = pipe.transformer
        self._learned: dict[tuple, torch.nn.Module] = {}
        self._hashers: dict[str, torch.nn.Module] | None = None
        print(f"fit recording: seeds {list(seeds)} at steps {list(steps)} of {total} in {self.report['record_s']:.1f} s",
              flush=True)

    def learned(self, setting: Setting) -> dict[str, torch.nn.Module]:
        """``setting``'s learned block scorer per module (its density there: ``layer_densities`` apply)."""
        from types import SimpleNamespace

        from vidhash.bench.learned_fit import fit_learned
        from vidhash.integrations.diffusers import DropInConfig

        opts = SimpleNamespace(query_block=setting.query_block, local_blocks=DropInConfig.local_blocks,
                               sink_blocks=DropInConfig.sink_blocks, **LEARNED_FIT)
        out, fits = {}, []
        for name, (q, k, _) in self.layers.items():
            density = dict(setting.layer_densities).get(name, float(setting.density))
            kept = free_kept(q.shape[-2], density, setting.block_size, setting.query_block)
            fit_key = (name, setting.block_size, setting.query_block, kept)
            if fit_key not in self._learned:
                t0 = time.perf_counter()
                fq, fk = (x.to(self.device, torch.float32) for x in (q, k))
                scorers, reports = fit_learned(fq, fk, setting.block_size, kept, ("learned",), opts)
                self._learned[fit_key] = scorers["learned"]
                fits.append({"module": name, "block_size": setting.block_size, "query_block_size": setting.query_block,
                             "kept": kept, "seconds": time.perf_counter() - t0, **reports["learned"]})
            out[name] = self._learned[fit_key]
        if fits:
            self.report["learned"] += fits
            before, after = (float(np.nanmean([f[key] for f in fits])) for key in ("held_out_before", "held_out_after"))
            print(f"fitted learned scorers of {setting.name} ({len(fits)} modules) in "
                  f"{sum(f['seconds'] for f in fits):.1f} s: held-out kept share {before:.3f} → {after:.3f}", flush=True)
        return out

    def calibrated(self) -> dict[str, torch.nn.Module]:
        """The calibrated hashers per module (fitted at the first call)."""
        if self._hashers is None:
            from dataclasses import asdict

            from vidhash.integrations.calibrate import HashCalibrationConfig, SelfAttentionRecorder, fit_hashers

            t0 = time.perf_counter()
            cfg = HashCalibrationConfig()
            recorder = SelfAttentionRecorder(self._transformer, cfg.max_queries, cfg.max_keys, cfg.seed)  # its draws only
            for name, (q, k, _) in self.layers.items():
                recorder(name, q, k)  # one sample per recorded seed and step
            q = next(iter(self.layers.values()))[0]
            hashers, rows = fit_hashers(recorder.samples, q.shape[1], q.shape[-1], cfg, self.device)
            self._hashers = {name: h.to(self.device) for name, h in hashers.items()}
            keys = [key for key in rows[0] if key.startswith(("recall", "val_recall"))]
            mean = {key: float(np.mean([r[key] for r in rows])) for key in keys}
            self.report["calibrated"] = {"config": asdict(cfg), "seconds": time.perf_counter() - t0, "modules": rows,
                                         "mean": mean}
            held = (f", held out {mean['val_recall_simhash']:.3f} → {mean['val_recall_learned']:.3f}"
                    if "val_recall_learned" in mean else "")
            print(f"fitted calibrated hashers ({len(rows)} modules) in {self.report['calibrated']['seconds']:.1f} s: "
                  f"top-{cfg.top_k} key recall SimHash → learned {mean['recall_simhash']:.3f} → "
                  f"{mean['recall_learned']:.3f}{held}", flush=True)
        return self._hashers


def layer_recall(captured: dict, setting: Setting, max_query_blocks: int, dense_names=(), dense_step: bool = False,
                 layer_densities: dict[str, float] | None = None, fitted: FittedScorers | None = None) -> list[dict]:
    """Per layer: recall of the drop-in's selection (its default scorer for ``--scorers default``,
    with the default hasher where that reads one; the layer's own fitted scorer or hasher from
    ``fitted`` for ``learned`` / ``calibrated`` — :func:`drop_in_options`'s) and, with :mod:`vidhash.selection`, the oracle
    recall of as many blocks. Only what ran sparse is measured: a layer in ``dense_names`` (the
    setting's dense layers) is ``{"layer": name, "dense": "layer"}`` and, where the recall step is
    one of the setting's dense steps (``dense_step``), every layer is ``{"layer": name, "dense": "step"}``.
    With values captured, ``error``: the relative error of the layer's hash attention (the setting's
    selection and remainder) against dense attention on the same queries, keys and values."""
    from vidhash import attention
    from vidhash.integrations.diffusers import DropInConfig

    try:
        from vidhash.selection import oracle_recall
    except ImportError:  # vidhash.selection (issue 21) not installed: no oracle column
        oracle_recall = None
    if "scorer" not in inspect.signature(attention.select_blocks).parameters:
        return []
    options = drop_in_options(setting, fitted) or {"scorer": DropInConfig.scorer}  # by module name where fitted
    rows = []
    for name, (q, k, *values) in captured.items():
        density = (layer_densities or {}).get(name, float(setting.density))
        if dense_step or name in dense_names or (name in (layer_densities or {}) and density >= 1.0):
            rows.append({"layer": name, "dense": "step" if dense_step else "layer"})
            continue
        extra = {key: value[name] if isinstance(value, dict) else value for key, value in options.items()}
        sel = attention.select_blocks(q, k, density=density, block_size=setting.block_size,
                                      query_block_size=setting.query_block, **extra)
        row = {"layer": name, "recall": attention.selection_recall(q, k, sel, max_query_blocks=max_query_blocks)}
        if oracle_recall is not None:
            row["oracle"] = oracle_recall(q, k, int(sel.indices.shape[-1]), block_size=sel.block_size,
                                          query_block_size=sel.query_block_size, max_query_blocks=max_query_blocks)
        if values:
            row["error"] = layer_error(q, k, values[0], sel, setting.remainder, max_query_blocks)
        rows.append(row)
    return rows


def layer_error(q, k, v, sel, remainder: str, max_query_blocks: int) -> float:
    """Relative error ‖out − dense‖ / ‖dense‖ of the block-sparse attention over ``sel`` (with the
    ``"mean"`` remainder merged where asked) on evenly spaced ``max_query_blocks`` query blocks."""
    from vidhash.attention import block_mean_remainder, block_sparse_attention, merge_attention
    from vidhash.ops.backend import triton_ops
    from vidhash.selection.oracle import attention_error

    attend = triton_ops().block_sparse_attention_triton if q.is_cuda else block_sparse_attention  # as the drop-in runs
    out, lse = attend(q, k, v, sel, return_lse=True)
    if remainder == "mean":
        out, _ = merge_attention(out, lse, *block_mean_remainder(q, k, v, sel))
    nqb = sel.num_query_blocks
    blocks = torch.linspace(0, nqb - 1, min(nqb, max_query_blocks), device=q.device).round().long().unique()
    return attention_error(q, k, v, out, query_block_size=sel.query_block_size, query_blocks=blocks)


def frame_strip(rows: dict[str, np.ndarray], path: str, frames: int = 8) -> str:
    """A PNG: one row of ``frames`` evenly spaced frames per clip, clips in ``rows``' order."""
    from PIL import Image

    picked = []
    for clip in rows.values():
        idx = np.linspace(0, len(clip) - 1, min(frames, len(clip))).round().astype(int)
        picked.append(np.concatenate(list(clip[idx]), axis=1))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{path}.tmp"
    Image.fromarray(np.concatenate(picked, axis=0)).save(tmp, format="PNG")
    os.replace(tmp, path)  # never a half-written PNG
    return path


def load_pipeline(path: str, device: str, dtype: str):
    from vidhash.pipelines.pipeline_wan_mini import WanMiniPipeline
    from vidhash.presets import saved_pipeline_class

    if Path(path).exists() and not Path(path).is_dir():
        raise ValueError(f"--model {path} is a file; give a folder (a WanMiniPipeline export)")
    if not Path(path).is_dir():
        raise FileNotFoundError(f"--model {path}: no such folder (a WanMiniPipeline export)")
    kind = saved_pipeline_class(path)
    if kind != "WanMiniPipeline":
        raise ValueError(f"--model {path}: a {kind or 'folder without model_index.json'}, not a WanMiniPipeline export "
                         "(vidhash train wan_mini's, e.g. models/wan-mini)")
    pipe = WanMiniPipeline.from_pretrained(path)
    pipe.transformer.to(device, {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype])
    pipe.set_progress_bar_config(disable=True)
    return pipe


def check_clip_size(transformer: torch.nn.Module, frames: int, size: int) -> None:
    """``--frames`` and ``--size`` within the reach of the transformer's rotary embedding:
    ``rope_max_seq_len`` positions along each axis, in patches (diffusers' ``WanRotaryPosEmbed``
    fails beyond it with a shape error); ValueError naming the flag and the limit."""
    cfg = transformer.config
    p_t, p_h, _ = cfg.patch_size
    limit = cfg.rope_max_seq_len
    for flag, value, patch in (("--frames", frames, p_t), ("--size", size, p_h)):
        if value // patch > limit:
            raise ValueError(f"{flag} {value}: this model takes at most {limit * patch} (its rotary embedding's "
                             f"rope_max_seq_len {limit} × patch {patch})")


def compile_blocks(transformer: torch.nn.Module, mode: str | None = None, backend: str = "inductor") -> int:
    """``torch.compile(fullgraph=True)`` on each of the transformer's repeated blocks (diffusers'
    ``_repeated_blocks``: ``WanTransformerBlock``), in place; the top-level forward — and
    :class:`StepTimer`'s hooks on it — stays eager. Returns the number of blocks compiled.
    :func:`run_setting` resets dynamo before each setting, so every setting's processors are
    traced afresh (and no setting runs into the recompile limit)."""
    names = set(getattr(transformer, "_repeated_blocks", None) or ())
    blocks = sum(type(m).__name__ in names for m in transformer.modules())
    if not blocks:
        raise ValueError(f"--compile: {type(transformer).__name__} names no repeated blocks (_repeated_blocks)")
    transformer.compile_repeated_blocks(fullgraph=True, mode=mode, backend=backend)  # diffusers' regional compilation
    return blocks


#: torch.compile modes that capture CUDA graphs (inductor's cudagraph trees)
GRAPH_MODES = ("reduce-overhead", "max-autotune")


def compile_model(transformer: torch.nn.Module, mode: str | None = None, backend: str = "inductor") -> None:
    """``--compile-scope model``: ``torch.compile(fullgraph=True)`` of the transformer's whole forward,
    in place (its forward hooks — :class:`StepTimer`'s, the drop-in's ``dense_timestep`` gate — stay
    outside the graph). Under a CUDA-graph mode (:data:`GRAPH_MODES`) every call starts a new
    cudagraph step and returns copies of its outputs, so the replay that follows cannot overwrite
    what the pipeline still holds (the regional form, ``--compile-scope blocks``, fails there: each
    block's replay overwrites the previous block's output). ``reuse_mass`` traces too (its copies are
    graph outputs; the mass pass runs in the gate's pre-hook, outside the compiled forward)."""
    from torch.utils._pytree import tree_map

    compiled = torch.compile(transformer.forward, fullgraph=True, mode=mode, backend=backend)
    graphs = mode in GRAPH_MODES

    def forward(*args, **kwargs):
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
        out = compiled(*args, **kwargs)
        return tree_map(lambda x: x.clone() if isinstance(x, torch.Tensor) else x, out) if graphs else out

    transformer.forward = forward


def run_setting(pipe, setting: Setting, seeds: list[int], args, backend: str | None = None,
                fitted: FittedScorers | None = None) -> tuple[list[np.ndarray], dict]:
    """Clips and timings of one setting (the drop-in enabled for it, with ``backend`` where given —
    ``"flex"``: FlexAttention on the same selection — then disabled; ``fitted``: the ``learned`` /
    ``calibrated`` scorers, :func:`drop_in_options`). With ``--compile`` the
    compiled blocks are traced anew for the setting (its first clip: the warm-up)."""
    from vidhash.integrations.diffusers import disable_hash_attention, enable_hash_attention

    if getattr(args, "compile", False):
        torch._dynamo.reset()
    if setting.density is not None:
        extra = {} if backend is None else {"backend": backend}
        if setting.remainder != "none":
            extra["remainder"] = setting.remainder
        if setting.layer_densities:
            extra["layer_densities"] = dict(setting.layer_densities)
        if setting.reuse_mass:
            extra.update(reuse_mass=True, mass_query_stride=setting.reuse_mass, mass_refresh=setting.mass_refresh)
        if setting.query_block_size is not None:
            extra["query_block_size"] = setting.query_block_size
        if setting.reuse_delta:
            extra.update(reuse_delta=True, delta_half_life=setting.half_life)
        enable_hash_attention(pipe.transformer, density=float(setting.density), block_size=setting.block_size,
                              **drop_in_options(setting, fitted), **dense_options(pipe, setting, args.steps), **extra)
    call = CallRecorder(pipe.transformer, args.recall_step) if getattr(args, "profile", False) else None
    # one seed: its clip twice, the first untimed (it compiles, autotunes) — unless --no-warmup (frames only)
    warm_up = len(seeds) == 1 and not getattr(args, "no_warmup", False)
    try:
        clips, seconds, ms, noise_s = sample_clips(pipe, seeds * 2 if warm_up else seeds, args)
        if warm_up:
            clips = clips[1:]
        profiled = profile_call(pipe.transformer, call.inputs, args.profile_reps) if call is not None else None
    finally:
        if call is not None:
            call.close()
        if setting.density is not None:
            disable_hash_attention(pipe.transformer)
    # the first clip's steps and seconds warm up (kernels, autotuning, compiling) and are left out
    timing = {"transformer_ms": float(np.median(ms[args.steps:] or ms)), "clip_s": float(np.median(seconds[1:] or seconds)),
              "noise_ms": 1000 * float(np.median(noise_s[1:] or noise_s))}
    if profiled is not None:
        timing["profile"] = profiled
    return clips, timing


class CallRecorder:
    """The inputs of the transformer's ``index``-th call (the first seed's denoising step ``index``),
    detached copies, to replay it under the profiler."""

    def __init__(self, transformer: torch.nn.Module, index: int):
        self.inputs, self._count, self._index = None, 0, index
        self._handle = transformer.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs):
        if self._count == self._index:
            copy = lambda x: x.detach().clone() if isinstance(x, torch.Tensor) else x  # noqa: E731
            self.inputs = (tuple(copy(a) for a in args), {k: copy(v) for k, v in kwargs.items()})
        self._count += 1

    def close(self) -> None:
        self._handle.remove()


#: kernel-name fragments → the profile's categories (first match wins; lower case)
KERNEL_CATEGORIES = (
    ("vidhash", ("sparse_attn", "block_score", "block_select", "signature", "memory_")),
    ("dense attention", ("flash", "fmha", "attention", "sdpa", "softmax")),
    ("gemm", ("gemm", "xmma", "cutlass", "cublas", "nvjet", "sm90_", "sm80_", "matmul", "_mm_")),
    ("inductor (fused)", ("triton_",)),
)


def kernel_category(name: str) -> str:
    """The :data:`KERNEL_CATEGORIES` entry of a CUDA kernel's name, else ``"other"``."""
    low = name.lower()
    for category, parts in KERNEL_CATEGORIES:
        if any(p in low for p in parts):
            return category
    return "other"


def profile_call(transformer: torch.nn.Module, inputs, reps: int = 5, top: int = 8) -> dict | None:
    """Where one transformer call's time goes (``--profile``): ``wall_ms`` — the synchronised call
    without the profiler (median of ``reps``); under ``torch.profiler`` over ``reps`` calls, per call:
    ``kernel_ms`` (CUDA kernels' summed device time), ``busy`` = kernel_ms / wall_ms (below 1: the
    device waits on the host — launch-bound), ``kernels`` launched, ``categories`` (ms by
    :data:`KERNEL_CATEGORIES`) and the ``top`` kernels; on a CPU, the ``top`` operators by self CPU
    time and no kernel columns. None when no call was recorded."""
    from torch.profiler import ProfilerActivity, profile

    if inputs is None:
        return None
    args, kwargs = inputs
    cuda = next(transformer.parameters()).is_cuda
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    walls = []
    with torch.no_grad():
        for _ in range(reps + 1):
            sync()
            t0 = time.perf_counter()
            transformer(*args, **kwargs)
            sync()
            walls.append(1000 * (time.perf_counter() - t0))
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=activities) as prof:
            for _ in range(reps):
                transformer(*args, **kwargs)
            sync()
    wall = float(np.median(walls[1:]))
    out = {"wall_ms": wall, "reps": reps, "kernel_ms": None, "busy": None, "kernels": None, "categories": None}
    events = prof.key_averages()
    if cuda:
        kernels = [e for e in events if e.device_type.name == "CUDA" and e.device_time_total > 0]
        total = sum(e.device_time_total for e in kernels) / 1000 / reps
        cats: dict[str, float] = {}
        for e in kernels:
            cat = kernel_category(e.key)
            cats[cat] = cats.get(cat, 0.0) + e.device_time_total / 1000 / reps
        kernels.sort(key=lambda e: -e.device_time_total)
        out.update(kernel_ms=total, busy=total / wall, kernels=sum(e.count for e in kernels) / reps,
                   categories={k: round(v, 4) for k, v in sorted(cats.items(), key=lambda kv: -kv[1])},
                   top=[{"name": e.key[:90], "ms": e.device_time_total / 1000 / reps, "calls": e.count / reps}
                        for e in kernels[:top]])
    else:
        ops = sorted((e for e in events if e.self_cpu_time_total > 0), key=lambda e: -e.self_cpu_time_total)
        out["top"] = [{"name": e.key[:90], "ms": e.self_cpu_time_total / 1000 / reps, "calls": e.count / reps}
                      for e in ops[:top]]
    return out


def format_profile(profile: dict) -> str:
    """One line: the call's wall time, kernel time and share, launches and categories."""
    if profile.get("kernel_ms") is None:
        tops = ", ".join(f"{t['name']} {t['ms']:.2f}" for t in profile.get("top", [])[:4])
        return f"    profile: {profile['wall_ms']:.2f} ms/call (CPU); top ops (self ms): {tops}"
    cats = ", ".join(f"{k} {v:.2f}" for k, v in profile["categories"].items())
    return (f"    profile: {profile['wall_ms']:.2f} ms/call, kernels {profile['kernel_ms']:.2f} ms "
            f"({100 * profile['busy']:.0f}% busy), {profile['kernels']:.0f} launches; {cats}")


def _error_text(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200] if text else ''}"


def flex_columns(pipe, setting: Setting, seeds: list[int], args, ours: list[np.ndarray], clip_s_dense: float,
                 fitted: FittedScorers | None = None) -> dict:
    """FlexAttention's columns of a sparse setting: the drop-in with ``backend="flex"`` (the same
    selection, Flex's kernel attends), its step and clip times, its speed-up over the dense clip and
    ``flex_psnr``, the PSNR of its clips against ours (rounding apart, the same frames). A failure
    (e.g. a block size Flex's kernels do not take) is the row's ``flex_error``."""
    try:
        clips, timing = run_setting(pipe, setting, seeds, args, backend="flex", fitted=fitted)
    except Exception as err:  # noqa: BLE001 - reported in the row and the table
        return {"flex_error": _error_text(err)}
    return {"transformer_ms_flex": timing["transformer_ms"], "clip_s_flex": timing["clip_s"],
            "speedup_flex": clip_s_dense / timing["clip_s"],
            "flex_psnr": float(np.mean([clip_psnr(c, o) for c, o in zip(clips, ours)]))}


def measure_setting(pipe, setting: Setting, seeds: list[int], args, dense, captured: dict,
                    fitted: FittedScorers | None = None) -> tuple[dict, list]:
    """One row of the table and the setting's clips; ``dense`` is ``(clips, row)`` of the dense model
    (None while measuring it); ``fitted``: the ``learned`` / ``calibrated`` scorers (None: none asked)."""
    from vidhash.integrations.diffusers import DropInConfig, self_attention_modules  # its scorer: what --scorers default runs

    clips, timing = run_setting(pipe, setting, seeds, args, fitted=fitted)
    sparse = setting.density is not None
    dense_clips, dense_row = dense if dense is not None else (clips, None)
    clip_s_dense = timing["clip_s"] if dense_row is None else dense_row["clip_s"]
    row = {"setting": setting.name, "density": None if setting.density is None else float(setting.density),
           "block_size": setting.block_size, "query_block_size": setting.query_block if sparse else None,
           "scorer": None if setting.density is None else setting.scorer or DropInConfig.scorer,
           "psnr": float(np.mean([clip_psnr(c, d) for c, d in zip(clips, dense_clips)])),
           "ssim": float(np.mean([clip_ssim(c, d) for c, d in zip(clips, dense_clips)])),
           "recall": None, "oracle": None, "error": None, "transformer_ms": timing["transformer_ms"], "transformer_ms_flex": None,
           "clip_s": timing["clip_s"], "noise_ms": timing["noise_ms"], "clip_s_flex": None, "clip_s_dense": clip_s_dense,
           "speedup": clip_s_dense / timing["clip_s"], "speedup_flex": None, "flex_psnr": None,
           "dense_steps": setting.dense_steps if sparse else None, "dense_layers": setting.dense_layers if sparse else None,
           "dense_timestep": dense_timestep_of(pipe, args.steps, setting.dense_steps) if sparse else None,
           "remainder": setting.remainder if sparse else None,
           "layer_densities": dict(setting.layer_densities) if sparse else None,
           "reuse_mass": setting.reuse_mass if sparse else None, "mass_refresh": setting.mass_refresh if sparse else None,
           "reuse_delta": ("inf" if math.isinf(setting.reuse_delta) else setting.reuse_delta) if sparse else None}
    if "profile" in timing:
        row["profile"] = timing["profile"]
    if setting.density is not None and not args.no_flex:
        row.update(flex_columns(pipe, setting, seeds, args, clips, clip_s_dense, fitted))
    if captured and setting.density is not None and not setting.reuse_mass:  # reuse: not the scorer's selection
        dense_names = list(self_attention_modules(pipe.transformer))[:setting.dense_layers]
        row["layers"] = layer_recall(captured, setting, args.recall_blocks, dense_names,
                                     dense_step=args.recall_step < setting.dense_steps,
                                     layer_densities=dict(setting.layer_densities), fitted=fitted)
        recall, oracle, error = ([x[key] for x in row["layers"] if key in x] for key in ("recall", "oracle", "error"))
        row["recall"] = float(np.mean(recall)) if recall else None
        row["oracle"] = float(np.mean(oracle)) if oracle else None
        row["error"] = float(np.mean(error)) if error else None
    if not args.no_coherence and setting.name != "dense (repeat)":
        row["coherence"] = coherence_of(clips[0], args.fps)  # the frames in memory: no PyAV needed
    return row, clips


def check_compile_flags(args) -> None:
    """``--compile-mode``, ``--compile-backend`` and ``--compile-scope`` set how ``--compile``
    compiles: given without it (not at their defaults) they would be ignored; ValueError instead."""
    if getattr(args, "compile", False):
        return
    for flag, key, default in (("--compile-mode", "compile_mode", None), ("--compile-backend", "compile_backend", "inductor"),
                               ("--compile-scope", "compile_scope", "blocks")):
        if getattr(args, key, default) != default:
            raise ValueError(f"{flag} sets how --compile compiles: add --compile, or leave {flag} out")


def run(args) -> int:
    """``vidhash bench dropin``: every setting, the table, ``--json`` and ``--strip``."""
    # 1. inputs and settings
    check_compile_flags(args)
    densities = parse_fractions(args.densities, "--densities")
    block_sizes = parse_ints(args.block_sizes, "--block-sizes")
    query_text = getattr(args, "query_block_sizes", "") or ""
    query_blocks = parse_ints(query_text, "--query-block-sizes") if query_text.strip() else [None]
    seeds = parse_seeds(args.seeds, "--seeds")
    scorers = [None if s == "default" else s for s in split_items(args.scorers, "--scorers")]
    unknown = [s for s in scorers if s is not None and s not in SCORERS + FITTED_SCORERS]
    if unknown:  # before the dense clips, not after them
        raise ValueError(f"--scorers takes default, {', '.join(SCORERS + FITTED_SCORERS)}; got {', '.join(unknown)}")
    dense_steps = parse_ints(getattr(args, "dense_steps", "0"), "--dense-steps", minimum=0)
    dense_layers = parse_ints(getattr(args, "dense_layers", "0"), "--dense-layers", minimum=0)
    remainders = parse_remainders(getattr(args, "remainders", "none"))
    layer_densities = parse_layer_densities(getattr(args, "layer_densities", "") or "")
    reuse = parse_ints(getattr(args, "reuse_mass", "0"), "--reuse-mass", minimum=0)
    refresh = parse_ints(getattr(args, "mass_refresh", "0"), "--mass-refresh", minimum=0)
    deltas = parse_half_lives(getattr(args, "reuse_delta", "0"))
    if any(reuse) and not any(dense_steps):
        raise ValueError("--reuse-mass selects from the last dense step's block mass: give --dense-steps above 0 too")
    for flag, values in (("--mass-refresh", refresh), ("--reuse-delta", deltas)):
        if any(values) and not any(reuse):  # (their rows are reuse rows: without one, nothing would run them)
            raise ValueError(f"{flag} applies to the reuse rows: give --reuse-mass above 0 too")
    if any(deltas) and 0 not in refresh:
        raise ValueError("--reuse-delta applies to the reuse rows without --mass-refresh: add 0 to --mass-refresh")
    outputs = [(flag, path) for flag, path in (("--json", args.json), ("--strip", args.strip),
                                                ("--clips", getattr(args, "clips", None))) if path]
    for i, (flag, path) in enumerate(outputs):
        for other_flag, other in outputs[:i]:
            if os.path.realpath(path) == os.path.realpath(other):
                raise ValueError(f"{flag} {path} is {other_flag} {other}: give each output its own path")
    if args.recall_step is None:
        args.recall_step = args.steps // 2
    if args.steps < 1 or not 0 <= args.recall_step < args.steps:
        raise ValueError(f"--recall-step must be in [0, --steps), got {args.recall_step} (--steps {args.steps})")
    if getattr(args, "profile", False) and args.profile_reps < 1:
        raise ValueError(f"--profile-reps must be ≥ 1, got {args.profile_reps}")
    if max(dense_steps) > args.steps:
        raise ValueError(f"--dense-steps must be in [0, --steps], got {args.dense_steps} (--steps {args.steps})")
    fit_seeds, fit_steps = parse_fit_inputs(args, seeds, dense_steps, any(s in FITTED_SCORERS for s in scorers))
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe = load_pipeline(args.model, device, args.dtype or ("bf16" if device == "cuda" else "fp32"))
    check_clip_size(pipe.transformer, args.frames, args.size)
    from vidhash.integrations.diffusers import self_attention_modules

    names = list(self_attention_modules(pipe.transformer))
    modules = len(names)
    unknown = sorted(set(layer_densities) - set(names))
    if unknown:
        raise ValueError(f"--layer-densities names {unknown[0]!r}, not a self-attention module of the model ({names})")
    if max(dense_layers) > modules:
        raise ValueError(f"--dense-layers must be in [0, {modules}] (the model's self-attention modules), got {args.dense_layers}")
    settings = make_settings(densities, block_sizes, scorers, dense_steps, dense_layers, remainders, layer_densities, reuse, refresh,
                             query_blocks, repeat=not getattr(args, "no_repeat", False), deltas=deltas)
    check_settings(settings)
    for line in forced_fill_warnings(settings, pipe.transformer, args.frames, args.size):  # (before any clip)
        print(f"warning: {line}", file=sys.stderr, flush=True)
    report = {"model": str(args.model), "device": describe_device(device), "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d"), "frames": args.frames, "size": args.size, "steps": args.steps,
              "seeds": seeds, "recall_step": args.recall_step, "flex": not args.no_flex,
              "coherence_source": None if args.no_coherence else COHERENCE_SOURCE,
              "options": {k: v for k, v in recorded_flags(args).items() if isinstance(v, (str, int, float, bool, type(None)))},
              "complete": False, "strip": [], "rows": []}
    # 2. the dense run's queries and keys (recall) and the fit seeds' (learned, calibrated), eager; then --compile's blocks
    captured = capture_qk(pipe, seeds[0], args) if not args.no_recall else {}
    fitted = FittedScorers(pipe, fit_seeds, fit_steps, args.frames, args.size, args.steps) if fit_seeds else None
    if fitted is not None:
        report["fitted"] = fitted.report  # (filled in as rows fit: the JSON after every row has what was fitted)
    if getattr(args, "compile", False):
        if getattr(args, "compile_scope", "blocks") == "model":
            compile_model(pipe.transformer, args.compile_mode, args.compile_backend)
            report["compiled_model"] = True
        else:
            report["compiled_blocks"] = compile_blocks(pipe.transformer, args.compile_mode, args.compile_backend)
    # 3. every setting against the dense clips; the JSON after every row (a cut-off run keeps its rows)
    dense, strip = None, {}
    for setting in settings:
        row, clips = measure_setting(pipe, setting, seeds, args, dense, captured, fitted)
        dense = dense or (clips, row)
        report["rows"].append(row)
        print(format_row(row), flush=True)
        if row.get("profile"):
            print(format_profile(row["profile"]), flush=True)
        if (args.strip or args.clips) and (setting.name == "dense" or (setting.density in STRIP_DENSITIES and setting.scorer == scorers[0]
                                                       and setting.block_size == block_sizes[0]
                                                       and setting.query_block_size == query_blocks[0]
                                                       and setting.dense_steps == dense_steps[0]
                                                       and setting.dense_layers == dense_layers[0]
                                                       and setting.remainder == remainders[0]
                                                       and setting.reuse_mass == reuse[0])):
            strip[setting.density] = (setting.name, clips[0])  # rows: dense, 1/8, 1/32 (as far as run)
            picked = [strip[d] for d in (None, *STRIP_DENSITIES) if d in strip]
            report["strip"] = [name for name, _ in picked]
            if args.strip:
                frame_strip(dict(picked), args.strip)
            if args.clips:  # the same clips, whole (uint8), to look at or measure again elsewhere
                save_clips(args.clips, {name.replace("/", "_"): c for name, c in picked})
        write_json(args.json, report)
    # 4. the table
    print("\n" + markdown_table(report["rows"]), flush=True)
    report["complete"] = True
    write_json(args.json, report)
    return 0


def save_clips(path: str, clips: dict[str, np.ndarray]) -> None:
    """``clips`` (name → ``(frames, height, width, 3)`` uint8) as one ``.npz``, through a temporary file."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(path).with_name(Path(path).name + ".tmp.npz")
    np.savez_compressed(tmp, **clips)
    tmp.replace(path)


def write_json(path: str | None, report: dict) -> None:
    """``report`` to ``path`` (if given) through a temporary file: never a half-written JSON. Standard
    JSON: a non-finite number (``psnr`` of identical clips, ``inf``) is written as null
    (:func:`vidhash.files.write_json`)."""
    if not path:
        return
    write_json_file(path, report, indent=1)


def _num(value, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def format_row(row: dict) -> str:
    """One progress line: quality, recall, ours and Flex's times."""
    rec = f" recall {row['recall']:.3f}" if row.get("recall") is not None else ""
    rec += f" (oracle {row['oracle']:.3f})" if row.get("oracle") is not None else ""
    flex = ""
    if row.get("clip_s_flex") is not None:
        flex = (f"  | Flex {row['transformer_ms_flex']:9.2f} ms/step {row['clip_s_flex']:8.3f} s/clip "
                f"{row['speedup_flex']:5.2f}x, {_num(row['flex_psnr'], '.1f')} dB vs ours")
    elif row.get("flex_error"):
        flex = f"  | Flex failed: {row['flex_error']}"
    return (f"{row['setting']:>22s}  PSNR {_num(row['psnr'], '6.2f')} dB  SSIM {row['ssim']:.4f}  "
            f"{row['transformer_ms']:9.2f} ms/step  {row['clip_s']:8.3f} s/clip {row['speedup']:5.2f}x{rec}{flex}")


TABLE_COLUMNS = (
    ("setting", "setting", "s"), ("PSNR dB", "psnr", ".2f"), ("SSIM", "ssim", ".4f"),
    ("flicker", "coherence.flicker.mean", ".2f"), ("warp err", "coherence.warp_error.mean", ".4f"),
    ("recall", "recall", ".3f"), ("oracle", "oracle", ".3f"), ("attn err", "error", ".3f"), ("ms/step", "transformer_ms", ".1f"),
    ("Flex ms/step", "transformer_ms_flex", ".1f"), ("clip s", "clip_s", ".3f"), ("Flex clip s", "clip_s_flex", ".3f"),
    ("× dense", "speedup", ".2f"), ("Flex × dense", "speedup_flex", ".2f"), ("Flex vs ours dB", "flex_psnr", ".1f"),
)
"""The printed table: (header, the row's key — dotted into ``coherence`` —, format)."""
DENSE_COLUMNS = (("dense steps", "dense_steps", "d"), ("dense layers", "dense_layers", "d"))
"""Shown after ``setting`` where any row has dense steps or layers."""


def _lookup(row: dict, key: str):
    for part in key.split("."):
        row = row.get(part) if isinstance(row, dict) else None
    return row


def markdown_table(rows: list[dict]) -> str:
    """The rows as a Markdown table (the README's): the dense row's clip s is dense SDPA's; × dense is
    the whole clip's speed-up over it; Flex: the same selected blocks through FlexAttention; dense
    steps and layers (the drop-in's dense warmup) where any row has them."""
    columns = TABLE_COLUMNS
    if any(row.get("dense_steps") or row.get("dense_layers") for row in rows):
        columns = (TABLE_COLUMNS[0], *DENSE_COLUMNS, *TABLE_COLUMNS[1:])
    lines = ["| " + " | ".join(name for name, _, _ in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_num(_lookup(row, key), spec) for _, key, spec in columns) + " |")
    errors = [f"{row['setting']}: Flex failed: {row['flex_error']}" for row in rows if row.get("flex_error")]
    return "\n".join(lines + errors)


def describe_device(device: str) -> str:
    return torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
