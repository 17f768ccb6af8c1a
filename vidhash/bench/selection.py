"""Block selection: the attention mass each scorer keeps beside the oracle, the output error, and what it costs.

    vidhash bench selection --json selection.json --world models/world-tiny-v3

One table: scorer × shape × key-block size. Shapes: ``--sizes`` tokens (12 heads, head_dim 64;
:func:`vidhash.bench.attention.video_like_qkv` inputs on a 32×32-frame grid) and Wan 1.3B's
self-attention at 81 frames 480p (32,760 tokens, head_dim 128; ``--no-wan`` skips it), bf16 on
CUDA, float32 on a CPU; query blocks of 128, ``--density`` (1/32), one local and one sink block
forced, non-causal. Per row:

* ``recall`` — mean over queries of the share of exact attention mass the kept blocks hold,
  over ``--eval-blocks`` evenly spaced query blocks (:func:`vidhash.selection.oracle.selection_mass`;
  the same number as ``vidhash.attention.selection_recall``);
* ``oracle`` — the most ``kept`` blocks per query block can hold (the heaviest ones);
  ``oracle_f`` — the same with the forced blocks first (the best under ``select_blocks``' rules);
  ``ratio`` = recall / oracle;
* ``err`` — relative error ``‖out − dense‖ / ‖dense‖`` of the attention output on those queries;
  ``err+mean`` — the same with the unkept blocks as one mean token each merged in
  (``hash_attention``'s ``remainder="mean"``, :func:`vidhash.attention.block_mean_remainder`);
* ``sel ms`` — the whole selection (codes or signatures + top-k) as ``vidhash.attention.select_blocks``
  runs it on ``--backend`` (``triton.testing.do_bench`` median on CUDA; one wall-clock call on a
  CPU, torch references: not a cost estimate); ``attn ms`` — the sparse attention on that
  selection (once per shape and block size); ``total ms``, ``×dense`` (dense SDPA forward time /
  total) and ``flex ms`` — FlexAttention's compiled kernel on the same blocks (CUDA, key blocks in
  ``--flex-block-sizes``); ``same`` — share of a kernel row's indices equal to its torch reference.

Scorers (``--scorers``; default :data:`DEFAULT_SCORERS`): ``simhash`` (the default of
``select_blocks``), ``pooled``, ``parent`` (pooled with each key block's mean leaning on its 64-token
parent's: for key blocks under 64), ``moments``, ``subgrid`` (4 query sub-centroids against the key
blocks' means, each pair ranked by its best: ``select_blocks(scorer="subgrid")``), ``prefilter``, ``rescore`` (pooled candidates ranked by the
softmax mass of every 8th query; torch), ``learned`` (per-head linear block codes,
:class:`~vidhash.selection.learned.LearnedBlockScorer`, fitted on *other* inputs: a clip on a grid of
another layout for the synthetic shapes, the first half of the recorded clips for ``--world``),
``oracle``; also ``pooled float`` / ``parent float`` / ``moments float`` (float scores, no int8 codes; ``pooled float``
is what ``select_blocks(scorer="pooled")`` runs with its default ``backend="auto"`` off CUDA; the
``pooled`` row, on ``--backend``, is the int8-level form, ``auto``'s on CUDA),
``learned bits`` (32 sign bits), ``subgrid m4`` / ``learned m4`` (4 query sub-centroids × key
sub-blocks of 16 tokens on the block-score kernel; at key blocks of 16 ``subgrid m4`` is ``subgrid``).

``--world PATH``: per layer of a trained model's temporal attention, the queries of a clip's last
chunk at every denoising level against the clean keys of all earlier frames plus the chunk's own,
over ``--world-clips`` clips (density ``--world-density``); learned scorers fit on the first half of
the clips, every row is measured on the second half; a ``world mean`` row per scorer.

``--dropin PATH``: per self-attention of a trained diffusers Wan (a ``WanMiniPipeline`` export,
``models/wan-mini``), its queries and keys at ``--dropin-steps`` of a ``--dropin-schedule``-step clip
(``vidhash bench dropin``'s: 30 steps, 33 frames of 256² = 33,792 tokens) of each of ``--dropin-seeds`` (density
``--dropin-density``, default ``--density``); learned scorers fit on the first half of the seeds,
every row is measured on the second half; a ``dropin mean`` row per scorer. ``--dropin-cache F``
keeps the recording (bf16, ~0.4 GB a seed and step) for the next run. The recording is a dense
float32 forward per step up to the last wanted one: ~1 min a step on a 2-core CPU.
"""
from __future__ import annotations

import os
import sys
import time
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from vidhash.attention import BlockSelection, block_mean_remainder, block_sparse_attention, merge_attention, select_blocks
from vidhash.bench import recorded_flags
from vidhash.files import write_json as write_json_file
from vidhash.integrations.flex import flex_attention_fn, flex_block_mask, flex_kernel_options
from vidhash.kernels.block_score.naive import select_blocks_codes_reference
from vidhash.kernels.block_select.naive import forced_and_allowed
from vidhash.selection import select_blocks_scored
from vidhash.selection.oracle import attention_error, block_mass, dense_rows, eval_query_blocks, kept_mass, top_mass
from vidhash.kernels.block_select.naive import num_kept_blocks

from .learned_fit import fit_learned
from .attention import WAN_1_3B_GRID, WAN_1_3B_HEAD_DIM, grid_for, video_like_qkv

SCORER_ROWS = ("simhash", "pooled", "parent", "moments", "subgrid", "prefilter", "rescore", "learned", "oracle", "pooled float",
               "parent float", "moments float", "learned bits", "subgrid m4", "learned m4")
DEFAULT_SCORERS = ("simhash", "pooled", "parent", "moments", "subgrid", "prefilter", "rescore", "learned", "oracle")


# --------------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------------
def timed(fn, device: str, rep_ms: int):
    """``(result, ms)``: ``do_bench`` median after warm-up on CUDA; one wall-clock call on a CPU."""
    if device != "cuda":
        t0 = time.perf_counter()
        out = fn()
        return out, (time.perf_counter() - t0) * 1e3
    import triton.testing

    out = fn()
    torch.cuda.synchronize()
    return out, float(triton.testing.do_bench(fn, warmup=max(5, rep_ms // 4), rep=rep_ms, return_mode="median"))


def attempt(fn):
    """``(fn(), None)`` or ``(None, "Error: message")``: one failing row does not end the run."""
    try:
        return fn(), None
    except Exception as err:  # noqa: BLE001 - reported in the row
        return None, f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"


# --------------------------------------------------------------------------------------------
# scorers: row name -> indices (b, h, nqb, kept)
# --------------------------------------------------------------------------------------------
def _codes(q, k, kw: dict, backend: str, **opts) -> BlockSelection:
    """The block-score codes' selection: the kernel (``backend="triton"``) or its torch reference."""
    if backend == "triton":
        from vidhash.kernels.block_score.ops import select_blocks_codes

        return select_blocks_codes(q, k, backend="triton", **opts, **kw)
    return select_blocks_codes_reference(q, k, **opts, **kw)


def select_row(name: str, q, k, kw: dict, fitted: dict, backend: str) -> torch.Tensor:
    """Indices of the row ``name`` (see the module docstring) for ``q, k``."""
    sub16 = 16 if kw["block_size"] > 16 else None
    if name in ("simhash", "pooled", "parent", "moments", "subgrid", "prefilter", "rescore"):
        return select_blocks(q, k, scorer=name, backend=backend, **kw).indices
    if name in ("learned", "learned bits"):
        return select_blocks(q, k, scorer=fitted[name], backend=backend, **kw).indices
    if name in ("pooled float", "parent float", "moments float"):
        return select_blocks_scored(q, k, scorer=name.split()[0], **kw).indices
    if name == "subgrid m4":
        return _codes(q, k, kw, backend, m=4, sub=sub16).indices
    if name == "learned m4":
        return _codes(q, k, kw, backend, m=4, sub=sub16, scorer=fitted[name]).indices
    raise ValueError(f"--scorers takes {', '.join(SCORER_ROWS)}; got {name!r}")


def _reference_of(name: str, backend: str):
    """The torch reference backend of a kernel row on ``backend="triton"`` (for ``same``), else None."""
    kernel_rows = ("simhash", "pooled", "parent", "moments", "subgrid", "learned", "subgrid m4", "learned m4")
    return "reference" if backend == "triton" and name in kernel_rows else None


# --------------------------------------------------------------------------------------------
# one configuration: inputs × key-block size
# --------------------------------------------------------------------------------------------
def sparse_output(q, k, v, idx, blocks, bk: int, args, remainder: str = "none"):
    """``(out, sel)``: the sparse attention of the selection on the measured query blocks (all
    queries on the kernels; only those blocks' queries on the reference) and the selection it ran;
    with ``remainder="mean"`` the unkept blocks' mean tokens merged in."""
    bq, nq, nk = args.query_block, q.shape[-2], k.shape[-2]
    if args.backend == "triton":
        from vidhash.kernels.ops import block_sparse_attention_triton

        sel = BlockSelection(idx, bk, bq, nq, nk, False)
        qs, (out, lse) = q, block_sparse_attention_triton(q, k, v, sel, return_lse=True)
    else:
        pos = (blocks.unsqueeze(-1) * bq + torch.arange(bq, device=q.device)).flatten()
        pos = pos[pos < nq]  # the last block may be partial: it is the last one measured
        qs = q[:, :, pos]
        sel = BlockSelection(idx[:, :, blocks].contiguous(), bk, bq, qs.shape[-2], nk, False)
        out, lse = block_sparse_attention(qs, k, v, sel, return_lse=True)
    if remainder == "mean":
        out, _ = merge_attention(out, lse, *block_mean_remainder(qs, k, v, sel))
    return out, sel


def output_error(q, k, v, idx, blocks, bk: int, args, remainder: str = "none", dense=None) -> float:
    """Relative error of the sparse output against dense attention on the measured query blocks
    (``dense``: their :func:`~vidhash.selection.oracle.dense_rows`, computed once per configuration)."""
    out, _ = sparse_output(q, k, v, idx, blocks, bk, args, remainder)
    if args.backend == "triton":
        return attention_error(q, k, v, out, query_block_size=args.query_block, query_blocks=blocks, dense=dense)
    pos = (blocks.unsqueeze(-1) * args.query_block + torch.arange(args.query_block, device=q.device)).flatten()
    return attention_error(q[:, :, pos[pos < q.shape[-2]]], k, v, out, query_block_size=args.query_block, dense=dense)


def _oracle_indices(q, k, kw: dict, blocks, kept: int) -> torch.Tensor:
    """The oracle's selection on the measured query blocks (forced blocks first, then the heaviest);
    the other rows hold blocks 0 … kept − 1 (valid, never measured)."""
    b, h = q.shape[:2]
    nqb = -(-q.shape[-2] // kw["query_block_size"])
    idx = torch.arange(kept, dtype=torch.int32, device=q.device).expand(b, h, nqb, kept).clone()
    idx[:, :, blocks] = select_blocks_scored(q, k, scorer="oracle", query_blocks=blocks, **kw)
    return idx


def _config_base(shape: str, q, k, bk: int, args):
    """What every row of one configuration shares: ``(base row, kw, blocks, mass, total)``."""
    bq, n, nk = args.query_block, q.shape[-2], k.shape[-2]
    kw = dict(density=args.density, block_size=bk, query_block_size=bq, causal=False,
              local_blocks=args.local_blocks, sink_blocks=args.sink_blocks)
    blocks = eval_query_blocks(-(-n // bq), args.eval_blocks, q.device)
    mass, counts = block_mass(q, k, block_size=bk, query_block_size=bq, query_blocks=blocks)
    total = float(counts.sum())
    kept = num_kept_blocks(n, nk, causal=False,
                           **{x: kw[x] for x in ("density", "block_size", "query_block_size", "local_blocks", "sink_blocks")})
    forced, _ = forced_and_allowed(blocks, n, nk, bq, bk, args.local_blocks, args.sink_blocks, False)
    base = dict(shape=shape, n=n, nk=nk, batch=q.shape[0], heads=q.shape[1], head_dim=q.shape[-1], block_size=bk,
                query_block_size=bq, density=args.density, kept=kept, key_blocks=-(-nk // bk),
                forced_per_row=float(forced.sum(-1).float().mean()), eval_blocks=int(blocks.numel()),
                oracle=float(top_mass(mass, kept).sum()) / total,
                oracle_f=float(top_mass(mass, kept, forced).sum()) / total)
    return base, kw, blocks, mass, total


def measure_config(shape: str, q, k, v, fq, fk, bk: int, args, dense_ms=None, held_out: float = 0.25) -> list[dict]:
    """Every scorer's row of one configuration (see the module docstring)."""
    base, kw, blocks, mass, total = _config_base(shape, q, k, bk, args)
    base["dense_ms"] = dense_ms
    kept_free = base["kept"] - round(base["forced_per_row"])
    fitted, reports = fit_learned(fq, fk, bk, kept_free, args.scorers, args, held_out)
    if reports:
        print("    fitted " + ", ".join(f"{x} held out {r['held_out_before']:.3f}→{r['held_out_after']:.3f}"
                                        for x, r in reports.items()), flush=True)
    timing = {}  # attn_ms and flex_ms: once per configuration, on the first selection that runs
    dense: list = []  # the dense rows of the measured queries: once per configuration, when first needed

    def error(idx, remainder="none"):
        if not dense:
            dense.append(dense_rows(q, k, v, query_block_size=args.query_block, query_blocks=blocks))
        return output_error(q, k, v, idx, blocks, bk, args, remainder, dense=dense[0])

    rows = []
    for name in args.scorers:
        row = dict(base, scorer=name, fit=reports.get(name))
        if name == "oracle":
            res, err = attempt(lambda: (_oracle_indices(q, k, kw, blocks, base["kept"]), None))
        else:
            res, err = attempt(lambda: timed(lambda: select_row(name, q, k, kw, fitted, args.backend),
                                             args.device, args.rep_ms))
        if err is not None:
            rows.append(dict(row, error=err))
            continue
        idx, ms = res
        recall = float(kept_mass(mass, idx[:, :, blocks]).sum()) / total
        row.update(recall=recall, ratio=recall / base["oracle"], ratio_f=recall / base["oracle_f"], sel_ms=ms)
        row["err"], row["error"] = attempt(lambda: error(idx))
        row["err_mean"], _ = attempt(lambda: error(idx, "mean"))
        ref = _reference_of(name, args.backend)
        if ref is not None:
            row["same"], _ = attempt(lambda: float((select_row(name, q, k, kw, fitted, ref) == idx).float().mean()))
        if ms is not None and not timing:
            timing = attention_times(q, k, v, idx, blocks, bk, args)
        if ms is not None and timing.get("attn_ms"):
            total_ms = ms + timing["attn_ms"]
            row.update(timing, total_ms=total_ms, x_dense=dense_ms / total_ms if dense_ms else None)
        rows.append(row)
    return rows


def attention_times(q, k, v, idx, blocks, bk: int, args) -> dict:
    """``attn_ms``: the sparse attention on the selection ``idx`` (the kernel on ``--backend triton``;
    the reference, on the measured query blocks only, otherwise); ``flex_ms``: FlexAttention's
    compiled kernel on the same blocks (CUDA)."""
    out = {}
    out["attn_ms"], out["attn_error"] = attempt(
        lambda: timed(lambda: sparse_output(q, k, v, idx, blocks, bk, args)[0], args.device, args.rep_ms)[1])
    if args.device.startswith("cuda") and not args.no_flex and str(bk) in args.flex_block_sizes.split(","):
        def flex():
            sel = BlockSelection(idx, bk, args.query_block, q.shape[-2], k.shape[-2], False)
            bm, opts, fn = flex_block_mask(sel, backward=True), flex_kernel_options(sel), flex_attention_fn(q.device)
            fn(q, k, v, block_mask=bm, kernel_options=opts)  # compile
            return timed(lambda: fn(q, k, v, block_mask=bm, kernel_options=opts), "cuda", args.rep_ms)[1]

        out["flex_ms"], out["flex_error"] = attempt(flex)
    return {x: y for x, y in out.items() if y is not None}


# --------------------------------------------------------------------------------------------
# synthetic shapes
# --------------------------------------------------------------------------------------------
def synthetic_shapes(args) -> list[tuple]:
    """``(name, grid, fit_grid, heads, d)``: the measured clip and a fitting clip of the same synthetic
    model (same frequencies and per-head mixing) on a grid of another layout."""
    out = []
    for n in args.sizes:
        grid = grid_for(n)
        t, hh, ww = grid
        out.append((f"N={n}", grid, (t, max(1, hh - 2), ww + 2), args.heads, args.head_dim))
    if not args.no_wan:
        t, hh, ww = WAN_1_3B_GRID
        out.append(("Wan1.3B", WAN_1_3B_GRID, (t, hh - 2, ww + 2), args.wan_heads, WAN_1_3B_HEAD_DIM))
    return out


def dense_time(q, k, v, args) -> float | None:
    """Dense SDPA forward (ms)."""
    return attempt(lambda: timed(lambda: F.scaled_dot_product_attention(q, k, v), args.device, args.rep_ms)[1])[0]


def run_synthetic(args, rows: list[dict]) -> None:
    for name, grid, fit_grid, heads, d in synthetic_shapes(args):
        t0 = time.perf_counter()
        q, k, v = video_like_qkv(grid, heads, d, args.torch_dtype, args.device, args.seed)
        fq, fk, _ = video_like_qkv(fit_grid, heads, d, args.torch_dtype, args.device, args.seed)
        dense_ms = dense_time(q, k, v, args)
        for bk in args.block_sizes:
            print(f"  {name} ({heads} heads, d {d}) key blocks {bk}", flush=True)
            new = measure_config(name, q, k, v, fq, fk, bk, args, dense_ms)
            print_table(new)
            rows += new
            write_json(args, rows)
        print(f"  {name}: {time.perf_counter() - t0:.0f} s", flush=True)
        del q, k, v, fq, fk
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------
# a trained model's temporal attention
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def record_world(path: str, clips: int, frames: int, seed: int, device: str):
    """Per layer ``(q (S, h, c·n, e), k (S, h, f·n, e))`` over ``S = clips × denoising steps``
    samples: the last chunk's queries at each noise level (``record_temporal_qk``) and the keys
    it attends to — the clean keys of every earlier frame, then its own; and the step count."""
    from vidhash.data.clips import WorldClipDataset
    from vidhash.models.transformer_vidhash import TemporalContext
    from vidhash.pipelines import VidHashPipeline

    pipe = VidHashPipeline.load(path).to(device)
    pipe.set_progress_bar_config(disable=True)
    gen = pipe.generation_config
    model, c = pipe.transformer.eval(), gen.chunk_frames
    data = WorldClipDataset(clips, frames, seed=seed, world_size=int(model.config.pos_period), view=model.config.sample_size)
    generator = torch.Generator().manual_seed(seed)
    per_layer = None
    for i in range(clips):
        clip = data[i]
        x = clip["frames"].unsqueeze(0).to(device, model.dtype)
        actions = clip["actions"].unsqueeze(0).to(device).clamp(max=model.config.num_actions)
        poses = clip["poses"].unsqueeze(0).to(device)
        f, n = x.shape[1], model.tokens_per_frame(*x.shape[-2:])
        start = f - c
        # 1. clean chunk-causal pass: every frame's keys with the whole history as context
        kv = model(x, torch.zeros(1, f, device=device, dtype=model.dtype), actions, poses, causal_frames=c, return_kv=True).kv
        context = [TemporalContext(k=kk[:, :, : start * n], v=vv[:, :, : start * n]) for kk, vv in kv]
        # 2. the last chunk at each noise level the sampler visits: its queries and its own keys
        pipe.scheduler.set_timesteps(gen.num_inference_steps, device=device)
        with model.record_temporal_qk() as rec:
            for sigma, t in zip(pipe.scheduler.sigmas[:-1], pipe.scheduler.timesteps):
                noise = torch.randn(x[:, start:].shape, generator=generator).to(device, model.dtype)
                xt = (1 - sigma) * x[:, start:] + sigma * noise
                model(xt, t.expand(1, c).to(model.dtype), actions[:, start:], poses[:, start:], context=context)
        if per_layer is None:
            per_layer = [([], []) for _ in rec]
        for layer, calls in enumerate(rec):
            for q, k_chunk in calls:
                per_layer[layer][0].append(q.float())
                per_layer[layer][1].append(torch.cat([context[layer].k.float(), k_chunk.float()], dim=2))
    return [(torch.cat(qs), torch.cat(ks)) for qs, ks in per_layer], gen.num_inference_steps


def run_world(args, rows: list[dict]) -> None:
    t0 = time.perf_counter()
    if args.world_cache and os.path.exists(args.world_cache):
        try:
            layers, steps = torch.load(args.world_cache)
        except Exception as err:  # noqa: BLE001 — any unreadable file: say which flag gave it
            raise ValueError(f"--world-cache {args.world_cache}: not a recording this bench saved "
                             f"({type(err).__name__}: {err})") from None
    else:
        layers, steps = record_world(args.world, args.world_clips, args.world_frames, args.seed, args.device)
        if args.world_cache:
            torch.save((layers, steps), args.world_cache)
    half = (args.world_clips // 2) * steps  # samples of the first half of the clips: fitting only
    q0, k0 = layers[0]
    print(f"  {args.world}: {len(layers)} layers, {q0.shape[0]} samples of {q0.shape[-2]} queries × {k0.shape[-2]} keys, "
          f"{q0.shape[1]} heads, d {q0.shape[-1]}; recorded in {time.perf_counter() - t0:.0f} s; fit on samples "
          f"[0, {half}), measured on [{half}, {q0.shape[0]})", flush=True)
    study = SimpleNamespace(**{**vars(args), "density": args.world_density, "eval_blocks": None, "fit_blocks": None,
                                  "no_flex": True})  # no dense or FlexAttention timing on the world rows
    for bk in args.block_sizes:
        per_bk = []
        for layer, (q, k) in enumerate(layers):
            q, k = q.to(args.device), k.to(args.device)
            g = torch.Generator(device="cpu").manual_seed(args.seed + layer)
            v = torch.randn(k.shape, generator=g).to(args.device)
            print(f"  world layer {layer}, key blocks {bk}", flush=True)
            per_bk += measure_config(f"world L{layer}", q[half:], k[half:], v[half:], q[:half], k[:half], bk, study,
                                     held_out=1 / max(2, args.world_clips // 2))  # the last fitting clip
        summary = world_summary(per_bk)
        print_table(per_bk + summary)
        rows += per_bk + summary
        write_json(args, rows)


# --------------------------------------------------------------------------------------------
# a trained diffusers Wan's self-attention (the drop-in's model)
# --------------------------------------------------------------------------------------------
def record_dropin(path: str, seeds, steps, device: str, frames: int = 33, size: int = 256, total: int = 30) -> dict:
    """``{"layers": {module: (q, k, v) (S, h, n, d) bf16 on the CPU}, "seeds", "steps"}``: the
    post-rotary queries, keys and values of every self-attention of a ``WanMiniPipeline`` export
    (dense, float32) at denoising ``steps`` of a ``total``-step clip of ``frames`` frames of
    ``size``² (``vidhash bench dropin``'s defaults: 33 frames of 256², 30 steps) of each seed
    (:func:`vidhash.bench.dropin.record_steps`); ``S = len(seeds) × len(steps)``, seed-major."""
    from .dropin import load_pipeline, record_steps

    pipe = load_pipeline(path, device, "fp32")
    layers = record_steps(pipe, seeds, steps, frames, size, total, label=path)
    return {"layers": layers, "seeds": list(seeds), "steps": list(steps), "frames": frames, "size": size, "total": total}


def run_dropin(args, rows: list[dict]) -> None:
    """Rows per self-attention of ``--dropin`` (the first half of ``--dropin-seeds`` fits the learned
    scorers, every row is measured on the second half) and a ``dropin mean`` row per scorer."""
    t0 = time.perf_counter()
    if args.dropin_cache and os.path.exists(args.dropin_cache):
        try:
            rec = torch.load(args.dropin_cache)
            layers = rec["layers"]
        except Exception as err:  # noqa: BLE001 — any unreadable file: say which flag gave it
            raise ValueError(f"--dropin-cache {args.dropin_cache}: not a recording this bench saved "
                             f"({type(err).__name__}: {err})") from None
    else:
        rec = record_dropin(args.dropin, args.dropin_seeds, args.dropin_steps, args.device, args.dropin_frames,
                            args.dropin_size, args.dropin_schedule)
        layers = rec["layers"]
        if args.dropin_cache:
            torch.save(rec, args.dropin_cache)
    if len(rec["seeds"]) < 2:
        raise ValueError(f"--dropin-cache {args.dropin_cache}: a recording of {len(rec['seeds'])} seed — the rows need "
                         "2 or more (half fit, half measured)")
    half = (len(rec["seeds"]) // 2) * len(rec["steps"])
    recording = {key: rec[key] for key in ("seeds", "steps", "frames", "size", "total")}  # what the rows measured
    q0 = next(iter(layers.values()))[0]
    print(f"  {args.dropin or args.dropin_cache}: {len(layers)} self-attentions, seeds {rec['seeds']} at steps "
          f"{rec['steps']} of {rec['total']} ({q0.shape[0]} samples of {q0.shape[-2]} tokens, {q0.shape[1]} heads, d {q0.shape[-1]}); "
          f"ready in {time.perf_counter() - t0:.0f} s; fit on samples [0, {half}), measured on [{half}, {q0.shape[0]})",
          flush=True)
    study = SimpleNamespace(**{**vars(args), "density": args.dropin_density or args.density, "no_flex": True})
    for bk in args.block_sizes:
        per_bk = []
        for name, qkv in layers.items():
            q, k, v = (x.to(args.device, args.torch_dtype) for x in qkv)
            print(f"  {name}, key blocks {bk}", flush=True)
            per_bk += measure_config(f"dropin {name}", q[half:], k[half:], v[half:], q[:half], k[:half], bk, study,
                                     held_out=1 / max(2, len(rec["seeds"]) // 2))
        per_bk = [dict(r, recording=recording) for r in per_bk]
        summary = world_summary(per_bk, "dropin mean")
        print_table(per_bk + summary)
        rows += per_bk + summary
        write_json(args, rows)


def world_summary(rows: list[dict], shape: str = "world mean") -> list[dict]:
    """Mean over layers of each scorer's row."""
    out = []
    for name in dict.fromkeys(r["scorer"] for r in rows):
        sub = [r for r in rows if r["scorer"] == name and r.get("recall") is not None]
        if not sub:
            continue

        def mean(key):
            vals = [r[key] for r in sub if r.get(key) is not None]
            return sum(vals) / len(vals) if vals else None

        means = {key: mean(key) for key in ("recall", "oracle", "oracle_f", "err", "err_mean", "sel_ms", "attn_ms",
                                             "total_ms", "same", "flex_ms", "x_dense")}
        out.append(dict(sub[0], shape=shape, **means, ratio=means["recall"] / means["oracle"],
                        ratio_f=means["recall"] / means["oracle_f"], layers=len(sub), fit=None))
    return out


# --------------------------------------------------------------------------------------------
# output and the command
# --------------------------------------------------------------------------------------------
COLUMNS = (("shape", "{}", 12), ("block_size", "{}", 4), ("kept", "{}", 5), ("scorer", "{}", 14),
           ("recall", "{:.3f}", 7), ("oracle", "{:.3f}", 7), ("ratio", "{:.3f}", 6), ("oracle_f", "{:.3f}", 8),
           ("err", "{:.4f}", 7), ("err_mean", "{:.4f}", 8), ("sel_ms", "{:.3f}", 8), ("attn_ms", "{:.3f}", 8), ("total_ms", "{:.3f}", 8),
           ("x_dense", "{:.1f}", 7), ("flex_ms", "{:.3f}", 8), ("same", "{:.4f}", 6))
HEADERS = {"block_size": "bk", "sel_ms": "sel ms", "attn_ms": "attn ms", "total_ms": "total ms", "x_dense": "×dense",
           "flex_ms": "flex ms", "err_mean": "err+mean"}


def print_table(rows: list[dict]) -> None:
    print(" ".join(f"{HEADERS.get(key, key):>{w}}" for key, _, w in COLUMNS))
    for r in rows:
        cells = [(fmt.format(r[key]) if r.get(key) is not None else "") for key, fmt, _ in COLUMNS]
        line = " ".join(f"{c:>{w}}" for c, (_, _, w) in zip(cells, COLUMNS))
        print(line + (f"  error: {r['error']}" if r.get("error") else ""), flush=True)


def write_json(args, rows: list[dict]) -> None:
    """All rows so far (after every configuration, so a cut-off run keeps what it measured)."""
    if not args.json:
        return
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    config = {x: y for x, y in recorded_flags(args).items() if x != "torch_dtype"}
    write_json_file(args.json, {"device": device, "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
                                "config": config, "rows": rows}, indent=1, default=str)


def check_args(args) -> None:
    """Parse the comma lists of ``args`` in place and fill the device-dependent defaults; ValueError
    naming the flag."""
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda needs a CUDA device")
    for flag in ("sizes", "block_sizes", "dropin_seeds", "dropin_steps"):
        text = getattr(args, flag)
        try:
            setattr(args, flag, [int(x) for x in text.split(",") if x.strip()] if isinstance(text, str) else list(text))
        except ValueError as err:
            raise ValueError(f"--{flag.replace('_', '-')} must be comma-separated integers, got {text!r}") from err
    names = [x.strip() for x in args.scorers.split(",") if x.strip()] if isinstance(args.scorers, str) else list(args.scorers)
    unknown = [x for x in names if x not in SCORER_ROWS]
    if unknown or not names:
        raise ValueError(f"--scorers takes a comma list of {', '.join(SCORER_ROWS)}; got {args.scorers!r}")
    args.scorers = names
    for flag in ("local_blocks", "sink_blocks"):
        if getattr(args, flag) < 0:
            raise ValueError(f"--{flag.replace('_', '-')} must be ≥ 0, got {getattr(args, flag)}")
    if args.dtype == "auto":
        args.dtype = "bf16" if args.device.startswith("cuda") else "fp32"
    args.torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    if args.backend == "auto":
        args.backend = "triton" if args.device.startswith("cuda") else "reference"
    cached = bool(args.world_cache) and os.path.isfile(args.world_cache)  # a saved recording needs no model
    if args.world is not None and not cached and not os.path.isdir(args.world):
        raise ValueError(f"--world {args.world}: no such pipeline folder (e.g. models/world-tiny-v3)")
    if args.world_cache and os.path.isdir(args.world_cache):
        raise ValueError(f"--world-cache {args.world_cache} is a folder, not a .pt file")
    dropin_cached = bool(args.dropin_cache) and os.path.isfile(args.dropin_cache)
    if args.dropin is not None and not dropin_cached and not os.path.isdir(args.dropin):
        raise ValueError(f"--dropin {args.dropin}: no such pipeline folder (a WanMiniPipeline export, e.g. models/wan-mini)")
    if args.dropin_cache and os.path.isdir(args.dropin_cache):
        raise ValueError(f"--dropin-cache {args.dropin_cache} is a folder, not a .pt file")
    if args.dropin_cache and not dropin_cached and args.dropin is None:
        raise ValueError(f"--dropin-cache {args.dropin_cache}: no such file, and no --dropin model to record it from")
    if (args.dropin or args.dropin_cache) and not dropin_cached:
        if len(args.dropin_seeds) < 2:
            raise ValueError(f"--dropin-seeds needs at least 2 seeds (half fit, half measured), got {args.dropin_seeds}")
        if not args.dropin_steps or min(args.dropin_steps) < 0 or max(args.dropin_steps) >= args.dropin_schedule:
            raise ValueError(f"--dropin-steps must be denoising steps in [0, --dropin-schedule = {args.dropin_schedule}), "
                             f"got {args.dropin_steps}")
    if args.world is not None and args.world_clips < 2:
        raise ValueError(f"--world-clips must be at least 2 (half fit, half measured), got {args.world_clips}")


def run(args) -> int:
    check_args(args)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"selection bench on {device}: {args.dtype}, density {args.density:.4g}, query blocks {args.query_block}, "
          f"selection backend {args.backend}, torch {torch.__version__}", flush=True)
    t0 = time.perf_counter()
    rows: list[dict] = []
    if args.sizes or not args.no_wan:
        run_synthetic(args, rows)
    if args.world:
        run_world(args, rows)
    if args.dropin or args.dropin_cache:
        run_dropin(args, rows)
    print("\nall rows:")
    print_table(rows)
    write_json(args, rows)
    print(f"done in {time.perf_counter() - t0:.0f} s" + (f"; wrote {args.json}" if args.json else ""))
    failed = sum(bool(r.get("error")) for r in rows)
    if failed:
        print(f"vidhash bench selection: {failed} of {len(rows)} rows failed (their 'error' above)", file=sys.stderr)
    return 1 if failed else 0
