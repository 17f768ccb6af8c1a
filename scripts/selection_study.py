"""Block-selection study: the attention mass each scorer keeps, beside the oracle, and what it costs.

    PYTHONPATH=$PWD python scripts/selection_study.py --device cuda --json selection_h200.json

CPU (no CUDA needed; about 20-40 min on 2 cores): N = 16,384 (12 heads, d 64) and the Wan 1.3B
shape at 3 heads in float32, then the temporal attention of a trained model (``--world``):

    python scripts/selection_study.py --device cpu --json selection_cpu.json --world models/world-tiny-v3

For each shape × key-block size (query blocks of 128, density 1/32, one local and one sink block
forced, non-causal) and each scorer, one row:

* ``recall`` — mean over queries of the share of exact attention mass the kept blocks hold
  (:func:`vidhash.selection.oracle.selection_mass` over ``--eval-blocks`` evenly spaced query
  blocks; the same number as ``vidhash.attention.selection_recall``);
* ``oracle`` — the most ``kept`` blocks per query block can hold (:func:`oracle_recall`);
  ``oracle_f`` — the same with the forced blocks kept first, the best any scorer can do under
  ``select_blocks``'s rules; ``ratio`` = recall / oracle, ``ratio_f`` = recall / oracle_f;
* ``err`` — relative error of the attention output against dense attention on those queries;
* ``sel ms`` — the whole selection (block codes or signatures + top-k; ``kern ms``: the
  block-score kernel alone on precomputed int8 codes) timed with
  ``triton.testing.do_bench`` after warm-up on CUDA (one wall-clock run on a CPU: torch
  references, not a cost estimate); on CUDA also the sparse attention kernel on that
  selection, the total and × dense SDPA (``F.scaled_dot_product_attention``, no FlexAttention).

Scorers (``vidhash.selection``; ``kernel`` rows run ``kernels/block_score`` on CUDA and its
torch reference ``naive.py`` — the same indices — on a CPU; on CUDA ``same`` is the share of
indices equal to that reference): ``simhash`` (today's, ``kernels/block_select``), ``pooled``
(mean q · mean k), ``pooled float`` (the float scorer, to show int8 codes lose nothing),
``moments`` (means and per-channel variances: the second-order estimate of a pair's log mass,
3d-wide codes; ``moments float`` the float scorer), ``prefilter x4``, ``subgrid mM subS`` (M query sub-centroids × key sub-blocks of S
tokens, best cell; ``lse`` is the float log-sum-exp form), ``learned`` (per-head linear block
codes fitted on another clip of the same inputs: ``video_like_qkv`` on a grid of other layout,
or the world model's other clips — the held-out rule), ``learned m4 subS`` (the same fitted for
and run on the 4 × S grid), ``learned bits`` (32 sign bits of such codes through the SimHash
kernel), ``oracle``.

``--world``: per layer of the model's temporal attention, the queries of a clip's last chunk at
every denoising level against the clean keys of all earlier frames plus the chunk's own keys
(as generation with the whole history in context would see them), over ``--world-clips``
clips of the training world; learned scorers fit on the first half of the clips, every row is
measured on the second half.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from vidhash.bench.attention import WAN_1_3B_GRID, grid_for, video_like_qkv
from vidhash.selection import LearnedBlockScorer, select_blocks_scored
from vidhash.selection.oracle import attention_error, block_mass, eval_query_blocks, kept_mass, top_mass
from vidhash.selection.scorers import num_kept


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--shapes", default=None, help="comma list of N=<tokens> and wan (default: cuda 65536,131072,wan; cpu 16384,wan)")
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--wan-heads", type=int, default=None, help="heads of the Wan shape (default: 12 on cuda, 3 on cpu)")
    p.add_argument("--block-sizes", default="64,16")
    p.add_argument("--query-block", type=int, default=128)
    p.add_argument("--density", type=float, default=1 / 32)
    p.add_argument("--eval-blocks", type=int, default=None, help="query blocks measured (default: cuda 64, cpu 32)")
    p.add_argument("--scorers", default=None, help="comma list of row names to run (default: all)")
    p.add_argument("--fit-blocks", type=int, default=None, help="query blocks of the fitting clip (default: cuda 128, cpu 48)")
    p.add_argument("--fit-steps", type=int, default=None, help="Adam steps per learned scorer (default: cuda 300, cpu 150)")
    p.add_argument("--rep-ms", type=int, default=50, help="do_bench rep per timing (CUDA)")
    p.add_argument("--world", default=None, help="a pipeline folder (models/world-tiny-v3): also study its temporal attention")
    p.add_argument("--world-only", action="store_true", help="skip the synthetic shapes")
    p.add_argument("--world-clips", type=int, default=6)
    p.add_argument("--world-frames", type=int, default=96)
    p.add_argument("--world-density", type=float, default=1 / 16)
    p.add_argument("--world-cache", default=None, help="a .pt file: load the recording from it, or record and save it there")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise ValueError("--device cuda needs a CUDA device")
    args.shapes = args.shapes or ("N=65536,N=131072,wan" if cuda else "N=16384,wan")
    args.wan_heads = args.wan_heads or (12 if cuda else 3)
    args.eval_blocks = args.eval_blocks or (64 if cuda else 32)
    args.fit_blocks = args.fit_blocks or (128 if cuda else 48)
    args.fit_steps = args.fit_steps or (300 if cuda else 150)
    return args


# --------------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------------
def timed(fn, device: str, rep_ms: int):
    """(result, ms): do_bench median after warm-up on CUDA; one wall-clock call on a CPU."""
    if device != "cuda":
        t0 = time.perf_counter()
        out = fn()
        return out, (time.perf_counter() - t0) * 1e3
    import triton.testing

    out = fn()
    torch.cuda.synchronize()
    return out, float(triton.testing.do_bench(fn, warmup=max(5, rep_ms // 4), rep=rep_ms, return_mode="median"))


def attempt(fn):
    try:
        return fn(), None
    except Exception as err:  # noqa: BLE001 - reported in the row
        return None, f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"


# --------------------------------------------------------------------------------------------
# scorers: name -> (selection function of (q, k, ctx), kind)
# --------------------------------------------------------------------------------------------
def scorer_table(bk: int, device: str) -> dict:
    """Row name → ``(fn, reference)``: ``fn(q, k, kw, fitted) -> indices (b, h, nqb, kept)`` and, for
    kernel rows on CUDA, the torch reference of the same indices (else None)."""
    from vidhash.kernels.block_score.ops import select_blocks_codes

    sub16 = min(16, bk)

    def codes(m=1, sub=None, learned=None, backend="triton" if device == "cuda" else "reference"):
        pick = lambda fit: learned if learned in (None, "moments") else fit[learned]
        return lambda q, k, kw, fit: select_blocks_codes(q, k, m=m, sub=sub, scorer=pick(fit), backend=backend, **kw).indices

    def kernel(m=1, sub=None, learned=None):
        if device != "cuda":
            return codes(m, sub, learned), None
        return codes(m, sub, learned), codes(m, sub, learned, "reference"), _kernel_alone(m, sub, learned)

    def scored(scorer, **opts):
        return lambda q, k, kw, fit: select_blocks_scored(q, k, scorer=fit.get(scorer, scorer), **kw, **opts).indices

    s16 = sub16 if sub16 < bk else None  # key sub-blocks of 16 tokens (none when blocks are 16)
    tag = lambda m, sub: f"m{m}" + (f" sub{sub}" if sub else "")
    rows = {
        "simhash": (_simhash(device), None),
        "pooled": kernel(),
        "pooled float": (scored("pooled"), None),
        "moments": kernel(learned="moments"),
        "moments float": (scored("moments"), None),
        "prefilter x4": (scored("prefilter", factor=4), None),
        "subgrid m4": kernel(4),
        f"subgrid {tag(1, s16)}": kernel(1, s16),
        f"subgrid {tag(4, s16)}": kernel(4, s16),
        f"subgrid {tag(16, s16)}": kernel(16, s16),
        f"subgrid {tag(4, s16)} lse": (scored("subgrid", m=4, sub=sub16, reduce="lse"), None),
        "learned": kernel(learned="learned"),
        f"learned {tag(4, s16)}": kernel(4, s16, learned="learned grid"),
        "learned bits": (_learned_bits(device), scored("learned bits") if device == "cuda" else None),
        "oracle": (None, None),  # the heaviest blocks (forced first), measured query blocks only
    }
    rows.pop("subgrid m1", None)  # = pooled
    return rows


def _kernel_alone(m, sub, learned):
    """``(q, k, kw, fit) -> callable`` running only the block-score kernel on precomputed int8 codes."""
    from vidhash.kernels.block_score.naive import moment_codes, quantize_codes, subgrid_codes
    from vidhash.kernels.block_score.ops import select_from_codes

    def prepare(q, k, kw, fit):
        bk, bq, n, nk = kw["block_size"], kw["query_block_size"], q.shape[-2], k.shape[-2]
        if learned == "moments":
            codes = moment_codes(q, k, bk, bq, q.shape[-1] ** -0.5)
        else:
            codes = subgrid_codes(q, k, bk, bq, q.shape[-1] ** -0.5, m, sub, fit[learned].map_means if learned else None)
        qi, ki, shift = quantize_codes(*codes)
        kept = num_kept(n, nk, density=kw["density"], block_size=bk, query_block_size=bq, local_blocks=1, sink_blocks=1,
                        causal=False, device=q.device)
        return lambda: select_from_codes(qi, ki, shift, kept=kept, num_queries=n, num_keys=nk, block_size=bk,
                                         query_block_size=bq, local_blocks=1, sink_blocks=1, causal=False, m=m, sub=sub)

    return prepare


def _simhash(device: str):
    if device == "cuda":
        from vidhash.kernels.block_select.ops import select_blocks_triton

        return lambda q, k, kw, fit: select_blocks_triton(q, k, **{x: y for x, y in kw.items() if x != "scale"}).indices
    return lambda q, k, kw, fit: select_blocks_scored(q, k, scorer="simhash", **kw).indices


def _learned_bits(device: str):
    def run(q, k, kw, fit):
        scorer = fit["learned bits"]
        if device != "cuda":
            return select_blocks_scored(q, k, scorer=scorer, **kw).indices
        from vidhash.kernels.block_select.ops import select_from_signatures

        bq, bk = kw["query_block_size"], kw["block_size"]
        kept = num_kept(q.shape[-2], k.shape[-2], density=kw["density"], block_size=bk, query_block_size=bq,
                        local_blocks=1, sink_blocks=1, causal=False, device=q.device)
        return select_from_signatures(scorer.signatures(q, bq, "query"), scorer.signatures(k, bk, "key"), n_bits=scorer.rank,
                                      kept=kept, num_queries=q.shape[-2], num_keys=k.shape[-2], block_size=bk,
                                      query_block_size=bq, local_blocks=1, sink_blocks=1, causal=False)

    return run


# --------------------------------------------------------------------------------------------
# one configuration: inputs × key-block size
# --------------------------------------------------------------------------------------------
def fit_learned(fq, fk, bk: int, kept_free: int, args, held_out: float = 0.25) -> dict:
    """The learned scorers of the rows, fitted on the fitting inputs (never the measured ones)."""
    from vidhash.selection.learned import fit_data

    h, d = fq.shape[1], fq.shape[-1]
    data = fit_data(fq, fk, block_size=bk, query_block_size=args.query_block, local_blocks=1, sink_blocks=1,
                    max_query_blocks=args.fit_blocks)
    fitted, reports = {}, {}
    grid = dict(m=4, sub=16 if bk > 16 else None)
    for name, kw in (("learned", {}), ("learned grid", grid), ("learned bits", dict(rank=32, codes="bits"))):
        scorer = LearnedBlockScorer(d, h, **kw).to(fq.device)
        reports[name] = scorer.fit(fq, fk, block_size=bk, query_block_size=args.query_block, kept=max(1, kept_free),
                                   steps=args.fit_steps, held_out=held_out, data=data)
        fitted[name] = scorer.eval()
    return fitted, reports


def output_error(q, k, v, idx, blocks, bk: int, args) -> float:
    """Relative error of the sparse output on the measured query blocks (non-causal)."""
    from vidhash.attention import BlockSelection, block_sparse_attention

    bq, nq, nk = args.query_block, q.shape[-2], k.shape[-2]
    if args.device == "cuda":
        from vidhash.kernels.ops import block_sparse_attention_triton

        out = block_sparse_attention_triton(q, k, v, BlockSelection(idx, bk, bq, nq, nk, False))
        return attention_error(q, k, v, out, query_block_size=bq, query_blocks=blocks)
    pos = (blocks.unsqueeze(-1) * bq + torch.arange(bq)).flatten()
    pos = pos[pos < nq]  # the last block may be partial: it is the last one measured
    qs = q[:, :, pos]
    out = block_sparse_attention(qs, k, v, BlockSelection(idx[:, :, blocks].contiguous(), bk, bq, qs.shape[-2], nk, False))
    return attention_error(qs, k, v, out, query_block_size=bq)


def _oracle_indices(q, k, kw, blocks, kept):
    """The oracle's selection on the measured query blocks (forced blocks first, then the heaviest);
    the other rows hold blocks 0 … kept − 1 (valid, never measured)."""
    b, h = q.shape[:2]
    nqb = -(-q.shape[-2] // kw["query_block_size"])
    idx = torch.arange(kept, dtype=torch.int32, device=q.device).expand(b, h, nqb, kept).clone()
    idx[:, :, blocks] = select_blocks_scored(q, k, scorer="oracle", query_blocks=blocks, **kw)
    return idx


def study_config(shape: str, q, k, v, fq, fk, bk: int, args, dense_ms=None, held_out: float = 0.25) -> list[dict]:
    from vidhash.attention import BlockSelection
    from vidhash.kernels.block_select.naive import forced_and_allowed

    bq, n, nk = args.query_block, q.shape[-2], k.shape[-2]
    kw = dict(density=args.density, block_size=bk, query_block_size=bq, causal=False)
    blocks = eval_query_blocks(-(-n // bq), args.eval_blocks, q.device)
    mass, counts = block_mass(q, k, block_size=bk, query_block_size=bq, query_blocks=blocks)
    total = float(counts.sum())
    kept = num_kept(n, nk, local_blocks=1, sink_blocks=1, causal=False, device=q.device,
                    **{x: kw[x] for x in ("density", "block_size", "query_block_size")})
    forced, _ = forced_and_allowed(blocks, n, nk, bq, bk, 1, 1, False)
    oracle = float(top_mass(mass, kept).sum()) / total
    oracle_f = float(top_mass(mass, kept, forced).sum()) / total
    fitted, reports = ({}, {})
    table = scorer_table(bk, args.device)
    if any(name.startswith("learned") and (not args.scorers or name in args.scorers) for name in table):
        t0 = time.perf_counter()
        fitted, reports = fit_learned(fq, fk, bk, kept - int(forced.sum(-1).float().mean().round()), args, held_out)
        print(f"    fitted learned scorers in {time.perf_counter() - t0:.1f} s: "
              + ", ".join(f"{x} {r['kept_share_before']:.3f}→{r['kept_share_after']:.3f} (held out {r['held_out_before']:.3f}→"
                          f"{r['held_out_after']:.3f}, step {r['step']})" for x, r in reports.items()), flush=True)
    base = dict(shape=shape, n=n, nk=nk, batch=q.shape[0], heads=q.shape[1], head_dim=q.shape[-1], block_size=bk,
                query_block_size=bq, density=args.density, kept=kept, forced_per_row=float(forced.sum(-1).float().mean()),
                eval_blocks=int(blocks.numel()), oracle=oracle, oracle_f=oracle_f, dense_ms=dense_ms)
    attn_ms, rows = None, []
    for name, (fn, ref, *alone) in table.items():
        if args.scorers and name not in args.scorers:
            continue
        fit_name = "learned grid" if name.startswith("learned m") else name
        row = dict(base, scorer=name, fit=reports.get(fit_name))
        if fn is None:
            res, err = attempt(lambda: (_oracle_indices(q, k, kw, blocks, kept), None))
        else:
            res, err = attempt(lambda: timed(lambda: fn(q, k, kw, fitted), args.device, args.rep_ms))
        if err is not None:
            rows.append(dict(row, error=err))
            print(f"    {name}: {err}", flush=True)
            continue
        idx, ms = res
        recall = float(kept_mass(mass, idx[:, :, blocks]).sum()) / total
        row.update(recall=recall, ratio=recall / oracle, ratio_f=recall / oracle_f, sel_ms=ms)
        row["err"], row["error"] = attempt(lambda: output_error(q, k, v, idx, blocks, bk, args))
        if ref is not None:
            row["same"] = float((ref(q, k, kw, fitted) == idx).float().mean())
        if alone:
            row["kernel_ms"], _ = attempt(lambda: timed(alone[0](q, k, kw, fitted), args.device, args.rep_ms)[1])
        if args.device == "cuda" and attn_ms is None and ms is not None:
            from vidhash.kernels.ops import block_sparse_attention_triton

            sel = BlockSelection(idx, bk, bq, n, nk, False)
            attn_ms = attempt(lambda: timed(lambda: block_sparse_attention_triton(q, k, v, sel), "cuda", args.rep_ms)[1])[0]
        if attn_ms is not None and ms is not None:
            row.update(attn_ms=attn_ms, total_ms=ms + attn_ms, x_dense=(dense_ms / (ms + attn_ms)) if dense_ms else None)
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------
def synthetic_shapes(args):
    """``(name, grid, fit_grid, heads, d)``: the measured clip and a fitting clip of the same synthetic
    model (same frequencies and per-head mixing) on a grid of another layout."""
    out = []
    for item in args.shapes.split(","):
        item = item.strip()
        if item == "wan":
            t, hh, ww = WAN_1_3B_GRID
            out.append(("Wan1.3B", WAN_1_3B_GRID, (t, hh - 2, ww + 2), args.wan_heads, 128))
        elif item.startswith("N="):
            grid = grid_for(int(item[2:]))
            t, hh, ww = grid
            out.append((item, grid, (t, max(1, hh - 2), ww + 2), args.heads, args.head_dim))
        else:
            raise ValueError(f"--shapes takes N=<tokens> and wan, got {item!r}")
    return out


def dense_time(q, k, v, args):
    if args.device != "cuda":
        return None
    import torch.nn.functional as F

    return attempt(lambda: timed(lambda: F.scaled_dot_product_attention(q, k, v), "cuda", args.rep_ms)[1])[0]


def run_synthetic(args) -> list[dict]:
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    rows = []
    for name, grid, fit_grid, heads, d in synthetic_shapes(args):
        t0 = time.perf_counter()
        q, k, v = video_like_qkv(grid, heads, d, dtype, args.device, args.seed)
        fq, fk, _ = video_like_qkv(fit_grid, heads, d, dtype, args.device, args.seed)
        dense_ms = dense_time(q, k, v, args)
        for bk in (int(x) for x in args.block_sizes.split(",")):
            print(f"  {name} ({heads} heads, d {d}) key blocks {bk}", flush=True)
            new = study_config(name, q, k, v, fq, fk, bk, args, dense_ms)
            print_table(new)
            rows += new
            write_json(args, rows)
        print(f"  {name}: {time.perf_counter() - t0:.0f} s", flush=True)
        del q, k, v, fq, fk
        if args.device == "cuda":
            torch.cuda.empty_cache()
    return rows


# --------------------------------------------------------------------------------------------
# a trained model's temporal attention
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def record_world(path: str, clips: int, frames: int, seed: int, device: str):
    """Per layer ``(q (S, h, c·n, e), k (S, h, f·n, e))`` over ``S = clips × denoising levels``
    samples: the last chunk's queries at each level (recorded by ``record_temporal_qk``) and the
    keys it attends to — the clean keys of every earlier frame, then its own."""
    from vidhash.config import generation_config, preset_for_model
    from vidhash.data.clips import WorldClipDataset
    from vidhash.models.transformer_vidhash import TemporalContext
    from vidhash.pipelines import VidHashPipeline

    pipe = VidHashPipeline.load(path).to(device)
    pipe.set_progress_bar_config(disable=True)
    gen = generation_config(preset_for_model(path))
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
    steps = gen.num_inference_steps
    return [(torch.cat(qs), torch.cat(ks)) for qs, ks in per_layer], steps


def run_world(args) -> list[dict]:
    t0 = time.perf_counter()
    if args.world_cache and os.path.exists(args.world_cache):
        layers, steps = torch.load(args.world_cache)
    else:
        layers, steps = record_world(args.world, args.world_clips, args.world_frames, args.seed, args.device)
        if args.world_cache:
            torch.save((layers, steps), args.world_cache)
    half = (args.world_clips // 2) * steps  # samples of the first half of the clips: fitting only
    q0, k0 = layers[0]
    print(f"  {args.world}: {len(layers)} layers, {q0.shape[0]} samples of {q0.shape[-2]} queries × {k0.shape[-2]} keys, "
          f"{q0.shape[1]} heads, d {q0.shape[-1]}; recorded in {time.perf_counter() - t0:.0f} s; fit on samples "
          f"[0, {half}), measured on [{half}, {q0.shape[0]})", flush=True)
    study = argparse.Namespace(**{**vars(args), "density": args.world_density, "eval_blocks": None, "fit_blocks": None})
    rows = []
    for bk in (int(x) for x in args.block_sizes.split(",")):
        per_bk = []
        for layer, (q, k) in enumerate(layers):
            q, k = q.to(args.device), k.to(args.device)
            g = torch.Generator(device="cpu").manual_seed(args.seed + layer)
            v = torch.randn(k.shape, generator=g).to(args.device)
            print(f"  world layer {layer}, key blocks {bk}", flush=True)
            per_bk += study_config(f"world L{layer}", q[half:], k[half:], v[half:], q[:half], k[:half], bk, study,
                                   held_out=1 / max(2, args.world_clips // 2))  # the last fitting clip
        print_table(per_bk)
        rows += per_bk + world_summary(per_bk)
        print_table(rows[-len(world_summary(per_bk)):])
        write_json(args, rows)
    return rows


def world_summary(rows: list[dict]) -> list[dict]:
    """Mean over layers of each scorer's row."""
    out = []
    for name in dict.fromkeys(r["scorer"] for r in rows):
        sub = [r for r in rows if r["scorer"] == name and r.get("recall") is not None]
        if not sub:
            continue
        def mean(key):
            vals = [r[key] for r in sub if r.get(key) is not None]
            return sum(vals) / len(vals) if vals else None

        out.append(dict(sub[0], shape="world mean", recall=mean("recall"), oracle=mean("oracle"), oracle_f=mean("oracle_f"),
                        ratio=mean("recall") / mean("oracle"), ratio_f=mean("recall") / mean("oracle_f"),
                        err=mean("err"), sel_ms=mean("sel_ms"), layers=len(sub)))
    return out


# --------------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------------
def print_table(rows: list[dict]) -> None:
    print(f"{'shape':>12} {'bk':>3} {'kept':>5} {'scorer':>24} {'recall':>7} {'oracle':>7} {'orc_f':>7} {'ratio':>6} "
          f"{'ratio_f':>7} {'err':>7} {'sel ms':>8} {'kern ms':>8} {'attn ms':>8} {'×dense':>7} {'same':>6}")
    for r in rows:
        f = lambda key, fmt: (fmt.format(r[key]) if r.get(key) is not None else "")
        print(f"{r['shape']:>12} {r['block_size']:>3} {r['kept']:>5} {r['scorer']:>24} {f('recall', '{:.3f}'):>7} "
              f"{f('oracle', '{:.3f}'):>7} {f('oracle_f', '{:.3f}'):>7} {f('ratio', '{:.3f}'):>6} {f('ratio_f', '{:.3f}'):>7} "
              f"{f('err', '{:.4f}'):>7} {f('sel_ms', '{:.3f}'):>8} {f('kernel_ms', '{:.3f}'):>8} {f('attn_ms', '{:.3f}'):>8} "
              f"{f('x_dense', '{:.1f}'):>7} "
              f"{f('same', '{:.4f}'):>6}" + (f"  error: {r['error']}" if r.get("error") else ""), flush=True)


_ROWS: list[dict] = []


def write_json(args, rows: list[dict]) -> None:
    if not args.json:
        return
    import triton

    device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    tmp = args.json + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"device": device, "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
                   "triton": triton.__version__, "config": vars(args), "rows": _ROWS + rows}, f, indent=1)
    os.replace(tmp, args.json)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.scorers:
        args.scorers = [x.strip() for x in args.scorers.split(",")]
    if args.device == "cpu":
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    print(f"selection study on {torch.cuda.get_device_name() if args.device == 'cuda' else 'cpu'}: density "
          f"{args.density:.4g}, query blocks {args.query_block}, torch {torch.__version__}", flush=True)
    t0 = time.perf_counter()
    rows = [] if args.world_only else run_synthetic(args)
    _ROWS.extend(rows)
    if args.world:
        _ROWS.extend(run_world(args))
    write_json(args, [])
    print(f"done in {time.perf_counter() - t0:.0f} s" + (f"; wrote {args.json}" if args.json else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
