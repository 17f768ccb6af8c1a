"""CPU studies of the trained wan-mini's self-attention at a given sparsity.

``--part geometry``: does the shape of a key block change what a selection can keep? Records the post-rotary q, k, v of every self-attention of `models/wan-mini` (dense, fp32) at
denoising step 2 of a 4-step clip (seed 0), then, for token orders that make each run of 64 tokens
a different piece of the (33 frames × 32 × 32) latent grid — rows (the model's own order: 2 rows of
32 in one frame) or tiles of 1×8×8, 2×4×8, 4×4×4 (t × h × w) — and densities 1/8 and 1/32, prints the
mean over layers of: the oracle recall (the most attention mass as many blocks can hold, sink and
local blocks forced), the pooled selection's recall, and the relative error of the layer's output
against dense without and with `remainder="mean"` (48 evenly spaced query blocks each).

``--part remainders``: the unkept key blocks' stand-ins compared on the same recording — none, one
mean token per block (`remainder="mean"`), mean tokens of runs of 32 or 16 keys, and the mean token
with a Gaussian mass correction (logit + s²/2 · q²·var(k), per-dimension key variance of the run) —
as the relative error of each layer's output against dense at densities 1/8 and 1/32 (rows order).

``--part layers``: each layer's output error (with the mean remainder) at densities 1/32 … 1/4 — what
the drop-in's ``layer_densities`` would spend where.

``--part forms``: the pooled selection's two forms on each layer at 1/32, 1/16, 1/8 — float scores
with an exact top-k (``backend="auto"``, the default since 2026-12-04) and the int8-level form
(``backend="reference"``, the block-score kernel's indices; what the other parts ran, before that
date) — recall, oracle, output error without and with the mean remainder, and the indices shared.

``--part budget``: the same number of kept block pairs per head as a uniform selection, spent where
the estimated mass is — every query block keeps its forced blocks, then a head's pairs of highest
estimated share (``softmax`` over a row of the pooled scores plus log key counts: the mass each key
block would hold if its keys were its mean) are kept, at most ``cap`` × the uniform count per query
block — against the uniform count; and the same with the exact block mass (the bound of any
allocation of that budget). Recall, output error without and with the mean remainder.

``--part previous``: the budget allocated by the *previous denoising step's* exact block mass (adjacent
steps attend alike; a forward could return its block mass at little cost) — records q, k, v at steps 4
and 5 of a 10-step clip (its own recording, ``--qkv`` unused) and compares, at step 5: uniform pooled,
the budget by step 4's mass, the uniform selection step 4's mass would make (its per-row top blocks),
and the budget by step 5's own mass (the bound).

``--part reuse``: one step's exact block mass reused for all the steps after it — what the drop-in's
``reuse_mass`` does after a dense warmup (2 of 10 steps here, as 6 of 30 in the GPU bench): records
q, k, v at steps 1, 2, 4, 6, 9 of a 10-step clip and compares, at each of steps 2 … 9 and densities
1/8, 1/16: uniform pooled (that step's own scores), the selection step 1's exact mass makes
(``select_from_mass``), the same from every 4th and 16th query of step 1
(``block_mass(query_stride=…)``: 1/4 and 1/16 of the cost), and the step's own exact mass (the
bound). Recall and output error with the mean remainder (48 query blocks).

``--part delta``: what the sparse steps after a dense warmup (3 of 30 steps, as the GPU bench's ds3)
can take from the last dense step (step 2) beside its mass — records q, k, v at steps 2, 3, 4, 6, 9, 14,
20, 29 of a 30-step clip of seed 1 and, on every 16th query block, with the selection step 2's exact
mass makes (every 4th query: the drop-in's ``reuse_mass``) at 1/8, 1/16, 1/32, the relative output error
against dense of: no remainder; the mean remainder (``remainder="mean"``); ``cached`` — the unkept
blocks' *exact* attention of step 2 (dense less the kept part, merged by lse) in place of the mean
remainder; ``delta`` — the mean remainder plus step 2's ``dense − sparse`` output (the drop-in's
``reuse_delta``), at full weight and halving every 4, 8, 16 sparse steps; and the best scalar weight
of that delta per step (its bound).

    python scripts/study_wan_mini_attention.py --part geometry|remainders|layers|forms|budget|previous|reuse|delta [--out F.json] [--qkv qkv.pt]

About 5 min to record and 16 (geometry), 10 (remainders), 15 (forms) or 20 (budget) min to measure
on a 2-core CPU; ``reuse`` records a 10-step clip and measures for ~70 min; ``delta`` records 30 steps (~37 min,
3.1 GB kept with ``--qkv``) and measures for ~6 min. `--qkv` reuses (or keeps) the recording.
"""
import argparse
import json
import os
import time
from types import SimpleNamespace

import torch

from vidhash.attention import block_mean_remainder, block_sparse_attention, merge_attention, select_blocks, selection_recall
from vidhash.bench.dropin import capture_qk, capture_steps, layer_error, load_pipeline
from vidhash.kernels.remainder.naive import unkept_blocks
from vidhash.selection.oracle import attention_error, oracle_recall

GRID = (33, 32, 32)
LAYOUTS = {"rows 1x2x32": None, "tile 1x8x8": (1, 8, 8), "tile 2x4x8": (2, 4, 8), "tile 4x4x4": (4, 4, 4)}


def tile_order(tile, grid=GRID) -> torch.Tensor:
    """Token order that puts each ``tile = (tt, th, tw)`` of the (t, h, w) grid in consecutive positions."""
    tt, th, tw = tile
    T, H, W = grid
    t, h, w = torch.meshgrid(torch.arange(T), torch.arange(H), torch.arange(W), indexing="ij")
    key = ((((t // tt) * (H // th) + h // th) * (W // tw) + w // tw) * (tt * th * tw)
           + ((t % tt) * th + h % th) * tw + w % tw)
    return torch.argsort(key.flatten())


def run_mean_remainder(q, k, v, sel, sub: int, var: bool):
    """The unkept key blocks (non-causal ``sel``, full blocks) as mean tokens of runs of ``sub`` keys:
    ``(out, lse)`` to merge; ``var`` adds ``s²/2 · q²·var(k)`` to each logit (a Gaussian estimate
    of the run's mass ``E exp(s q·k)`` in place of Jensen's lower bound ``exp(s q·k̄)``)."""
    b, h, n, d = q.shape
    scale = d ** -0.5
    runs = sel.num_key_blocks * (sel.block_size // sub)
    kr = k.reshape(b, h, runs, sub, d)
    km = kr.mean(3)
    vm = v.reshape(b, h, runs, sub, -1).mean(3)
    unkept = unkept_blocks(sel).repeat_interleave(sel.block_size // sub, -1)  # (b, h, query blocks, runs)
    qb = q.reshape(b, h, sel.num_query_blocks, sel.query_block_size, d)
    logit = torch.matmul(qb, km.unsqueeze(2).transpose(-1, -2)) * scale + torch.log(torch.tensor(float(sub)))
    if var:
        kvar = (kr.square().mean(3) - km.square()).clamp_min(0)
        logit = logit + torch.matmul(qb.square(), kvar.unsqueeze(2).transpose(-1, -2)) * (scale * scale / 2)
    logit = logit.masked_fill(~unkept.unsqueeze(3), float("-inf"))
    out = torch.matmul(torch.softmax(logit, -1), vm.unsqueeze(2))
    return out.reshape(b, h, n, -1), torch.logsumexp(logit, -1).reshape(b, h, n)


def study_geometry(captured: dict) -> list[dict]:
    rows = []
    for name, tile in LAYOUTS.items():
        order = None if tile is None else tile_order(tile)
        for density in (1 / 8, 1 / 32):
            acc = {"oracle": [], "recall": [], "err": [], "err_mean": []}
            start = time.time()
            for q, k, v in captured.values():
                if order is not None:
                    q, k, v = (x[:, :, order] for x in (q, k, v))
                sel = select_blocks(q, k, density=density, block_size=64, scorer="pooled")
                acc["recall"].append(selection_recall(q, k, sel, max_query_blocks=48))
                acc["oracle"].append(oracle_recall(q, k, sel.kept, block_size=64, query_block_size=64, max_query_blocks=48,
                                                   local_blocks=1, sink_blocks=1))
                acc["err"].append(layer_error(q, k, v, sel, "none", 48))
                acc["err_mean"].append(layer_error(q, k, v, sel, "mean", 48))
            row = {"layout": name, "density": density, **{key: sum(val) / len(val) for key, val in acc.items()},
                   "per_layer": acc, "seconds": time.time() - start}
            rows.append(row)
            print(f"{name:12s} 1/{round(1 / density):<3d} oracle {row['oracle']:.3f} recall {row['recall']:.3f} "
                  f"err {row['err']:.3f} err+mean {row['err_mean']:.3f}", flush=True)
    return rows


def study_remainders(captured: dict) -> list[dict]:
    rows = []
    for density in (1 / 8, 1 / 32):
        errs: dict[str, list[float]] = {}
        for q, k, v in captured.values():
            sel = select_blocks(q, k, density=density, block_size=64, scorer="pooled")
            out, lse = block_sparse_attention(q, k, v, sel, return_lse=True)
            blocks = torch.linspace(0, sel.num_query_blocks - 1, 48).round().long().unique()
            variants = {
                "none": out,
                "mean": merge_attention(out, lse, *block_mean_remainder(q, k, v, sel))[0],
                "mean of 32-key runs": merge_attention(out, lse, *run_mean_remainder(q, k, v, sel, 32, False))[0],
                "mean of 16-key runs": merge_attention(out, lse, *run_mean_remainder(q, k, v, sel, 16, False))[0],
                "mean + variance": merge_attention(out, lse, *run_mean_remainder(q, k, v, sel, 64, True))[0],
                "mean of 32-key runs + variance": merge_attention(out, lse, *run_mean_remainder(q, k, v, sel, 32, True))[0],
            }
            for name, o in variants.items():
                errs.setdefault(name, []).append(attention_error(q, k, v, o, query_block_size=64, query_blocks=blocks))
        for name, per_layer in errs.items():
            rows.append({"density": density, "remainder": name, "error": sum(per_layer) / len(per_layer), "per_layer": per_layer})
            print(f"1/{round(1 / density):<3d} {name:32s} error {rows[-1]['error']:.4f}", flush=True)
    return rows


def study_layers(captured: dict) -> list[dict]:
    rows = []
    for name, (q, k, v) in captured.items():
        row = {"layer": name}
        for density in (1 / 32, 1 / 16, 1 / 8, 1 / 4):
            sel = select_blocks(q, k, density=density, block_size=64, scorer="pooled")
            row[f"1/{round(1 / density)}"] = layer_error(q, k, v, sel, "mean", 32)
        rows.append(row)
        print(name, " ".join(f"{key} {val:.3f}" for key, val in row.items() if key != "layer"), flush=True)
    return rows


def study_forms(captured: dict) -> list[dict]:
    rows = []
    for density in (1 / 32, 1 / 16, 1 / 8):
        for name, (q, k, v) in captured.items():
            row = {"density": density, "layer": name}
            sels = {form: select_blocks(q, k, density=density, block_size=64, scorer="pooled", backend=backend)
                    for form, backend in (("float", "auto"), ("levels", "reference"))}
            row["oracle"] = oracle_recall(q, k, sels["float"].kept, block_size=64, query_block_size=64, max_query_blocks=48,
                                          local_blocks=1, sink_blocks=1)
            row["same_indices"] = (sels["float"].indices == sels["levels"].indices).float().mean().item()
            for form, sel in sels.items():
                row[f"recall_{form}"] = selection_recall(q, k, sel, max_query_blocks=48)
                row[f"err_{form}"] = layer_error(q, k, v, sel, "none", 48)
                row[f"err_mean_{form}"] = layer_error(q, k, v, sel, "mean", 48)
            rows.append(row)
            print(f"1/{round(1 / density):<3d} {name:16s} oracle {row['oracle']:.3f} recall float {row['recall_float']:.3f} "
                  f"levels {row['recall_levels']:.3f} | err+mean float {row['err_mean_float']:.4f} levels "
                  f"{row['err_mean_levels']:.4f} | same {row['same_indices']:.3f}", flush=True)
    return rows


def budget_selection(q, k, density: float, share: torch.Tensor | None = None, cap: int = 4, bk: int = 64, bq: int = 64):
    """A selection keeping a uniform selection's number of pairs per (batch, head), allocated by
    ``share (b, h, nqb, nkb)`` (default: the pooled estimate); rows padded with -1."""
    from vidhash.kernels.block_select.naive import forced_and_allowed, num_kept_blocks
    from vidhash.kernels.block_score.naive import block_means
    from vidhash.ops.checks import BlockSelection

    nq, nk = q.shape[-2], k.shape[-2]
    nqb, nkb = -(-nq // bq), -(-nk // bk)
    kept = num_kept_blocks(nq, nk, density=density, block_size=bk, query_block_size=bq, local_blocks=1, sink_blocks=1,
                           causal=False)
    forced, allowed = forced_and_allowed(torch.arange(nqb), nq, nk, bq, bk, 1, 1, False)
    if share is None:
        counts = torch.clamp(nk - torch.arange(nkb) * bk, max=bk).float()
        s = torch.matmul(block_means(q, bq), block_means(k, bk).transpose(-1, -2)) * q.shape[-1] ** -0.5
        share = torch.softmax(s + counts.log(), dim=-1)
    free = share.masked_fill(forced | ~allowed, -1.0)
    room = (cap * kept - forced.sum(-1)).clamp(min=0)  # per query block, beyond its forced blocks
    in_row = free.argsort(dim=-1, descending=True).argsort(dim=-1)  # rank within the row
    free = free.masked_fill(in_row >= room[:, None], -1.0)
    b, h = q.shape[:2]
    budget = kept * nqb - int(forced.sum())
    flat = free.reshape(b, h, -1)
    take = torch.zeros_like(flat, dtype=torch.bool).scatter_(-1, flat.topk(budget, dim=-1).indices, True)
    keep = take.reshape(b, h, nqb, nkb) | forced
    width = int(keep.sum(-1).max())
    key = torch.where(keep, torch.arange(nkb), nkb).sort(dim=-1).values[..., :width]
    return BlockSelection(torch.where(key == nkb, -1, key).to(torch.int32), bk, bq, nq, nk, False)


def study_budget(captured: dict) -> list[dict]:
    from vidhash.selection.oracle import block_mass

    rows = []
    for name, (q, k, v) in captured.items():
        mass, _ = block_mass(q, k, block_size=64, query_block_size=64)
        for density in (1 / 32, 1 / 16, 1 / 8):
            row = {"layer": name, "density": density}
            sels = {"uniform": select_blocks(q, k, density=density, block_size=64, scorer="pooled"),
                    "budget": budget_selection(q, k, density),
                    "budget, exact mass": budget_selection(q, k, density, share=mass)}
            for form, sel in sels.items():
                pairs = int((sel.indices >= 0).sum())
                row[form] = {"pairs": pairs, "width": sel.kept, "recall": selection_recall(q, k, sel, max_query_blocks=48),
                             "err": layer_error(q, k, v, sel, "none", 48), "err_mean": layer_error(q, k, v, sel, "mean", 48)}
            rows.append(row)
            print(f"1/{round(1 / density):<3d} {name:16s} " + " | ".join(
                f"{form}: pairs {r['pairs']} width {r['width']} recall {r['recall']:.3f} err {r['err']:.3f} +mean {r['err_mean']:.4f}"
                for form, r in ((f, row[f]) for f in sels)), flush=True)
    return rows


def study_previous(_captured) -> list[dict]:
    from vidhash.ops.checks import BlockSelection
    from vidhash.selection.oracle import block_mass
    from vidhash.selection.scorers import rank_top
    from vidhash.kernels.block_select.naive import forced_and_allowed

    pipe = load_pipeline("models/wan-mini", "cpu", "fp32")
    steps = capture_steps(pipe, 0, (4, 5), GRID[0], 256, 10)
    prev, cur = steps[4], steps[5]
    rows = []
    for name, (q, k, v) in cur.items():
        qp, kp, _ = prev[name]
        mass_prev, _ = block_mass(qp, kp, block_size=64, query_block_size=64)
        mass_cur, _ = block_mass(q, k, block_size=64, query_block_size=64)
        nq, nk = q.shape[-2], k.shape[-2]
        forced, allowed = forced_and_allowed(torch.arange(mass_prev.shape[2]), nq, nk, 64, 64, 1, 1, False)
        for density in (1 / 32, 1 / 16, 1 / 8):
            uniform = select_blocks(q, k, density=density, block_size=64, scorer="pooled")
            prev_rows = BlockSelection(rank_top(mass_prev, forced, allowed, uniform.kept), 64, 64, nq, nk, False)
            sels = {"uniform": uniform, "previous step's top blocks": prev_rows,
                    "budget by previous mass": budget_selection(q, k, density, share=mass_prev),
                    "budget by own mass (bound)": budget_selection(q, k, density, share=mass_cur)}
            row = {"layer": name, "density": density}
            for form, sel in sels.items():
                row[form] = {"width": sel.kept, "recall": selection_recall(q, k, sel, max_query_blocks=48),
                             "err": layer_error(q, k, v, sel, "none", 48), "err_mean": layer_error(q, k, v, sel, "mean", 48)}
            rows.append(row)
            print(f"1/{round(1 / density):<3d} {name:16s} " + " | ".join(
                f"{form}: recall {r['recall']:.3f} +mean {r['err_mean']:.4f}" for form, r in ((f, row[f]) for f in sels)), flush=True)
    return rows


def study_reuse(_captured) -> list[dict]:
    from vidhash.selection import block_mass, select_from_mass

    pipe = load_pipeline("models/wan-mini", "cpu", "fp32")
    steps = capture_steps(pipe, 0, (1, 2, 4, 6, 9), GRID[0], 256, 10)
    first = steps.pop(1)
    kw = dict(block_size=64, query_block_size=64)
    rows = []
    for name, (q5, k5, _) in first.items():
        t0 = time.perf_counter()
        masses = {stride: block_mass(q5, k5, **kw, query_stride=stride)[0] for stride in (1, 4, 16)}
        mass_s = time.perf_counter() - t0
        for step, layers in steps.items():
            q, k, v = layers[name]
            own, _ = block_mass(q, k, **kw)
            nq, nk = q.shape[-2], k.shape[-2]
            for density in (1 / 16, 1 / 8):
                sels = {"uniform pooled": select_blocks(q, k, density=density, block_size=64, scorer="pooled")}
                for stride, mass in masses.items():
                    sels[f"step 1 mass /{stride}"] = select_from_mass(mass, nq, nk, density=density, **kw)
                sels["own mass (bound)"] = select_from_mass(own, nq, nk, density=density, **kw)
                row = {"layer": name, "step": step, "density": density, "mass_s_cpu": mass_s}
                for form, sel in sels.items():
                    row[form] = {"recall": selection_recall(q, k, sel, max_query_blocks=48),
                                 "err_mean": layer_error(q, k, v, sel, "mean", 48)}
                rows.append(row)
                print(f"step {step} 1/{round(1 / density):<3d} {name:16s} " + " | ".join(
                    f"{form}: {r['recall']:.3f} {r['err_mean']:.4f}" for form, r in ((f, row[f]) for f in sels)), flush=True)
    return rows


DELTA_STEPS = (2, 3, 4, 6, 9, 14, 20, 29)


def study_delta(recording) -> list[dict]:
    from vidhash.attention import fused_attention_lse, hash_attention
    from vidhash.ops.checks import BlockSelection
    from vidhash.selection import block_mass, select_from_mass

    bq = bk = 64
    src = DELTA_STEPS[0]
    later = sorted(s for s in recording if s > src)
    rel = lambda a, b: ((a.float() - b.float()).norm() / b.float().norm()).item()  # noqa: E731
    rows = []
    for name in recording[src]:
        q0, k0, v0 = (x.float() for x in recording[src][name])
        n = q0.shape[-2]
        qb = torch.arange(0, n // bq, 16)  # every 16th query block
        pick = lambda x: torch.cat([x[:, :, i * bq:(i + 1) * bq] for i in qb.tolist()], 2)  # noqa: E731
        q0s = pick(q0)
        mass, _ = block_mass(q0[:, :, ::4], k0, block_size=bk, query_block_size=bq // 4)
        dense0, lse0 = fused_attention_lse(q0s, k0, v0)
        for density in (1 / 8, 1 / 16, 1 / 32):
            full = select_from_mass(mass, n, n, density=density, block_size=bk, query_block_size=bq)
            sel = BlockSelection(full.indices[:, :, qb].contiguous(), bk, bq, len(qb) * bq, n, False)
            kept0, lk0 = hash_attention(q0s, k0, v0, selection=sel, return_lse=True)
            w = torch.exp(lk0 - lse0).clamp(max=1.0)  # the unkept blocks' exact share at step 2: dense less kept
            left = (1 - w).clamp(min=1e-30)
            unkept0, lu0 = (dense0 - w.unsqueeze(-1) * kept0) / left.unsqueeze(-1), lse0 + torch.log(left)
            delta0 = dense0 - merge_attention(kept0, lk0, *block_mean_remainder(q0s, k0, v0, sel))[0]
            for step in later:
                q, k, v = (x.float() for x in recording[step][name])
                qs = pick(q)
                ref, _ = fused_attention_lse(qs, k, v)
                kept, lk = hash_attention(qs, k, v, selection=sel, return_lse=True)
                mean, _ = merge_attention(kept, lk, *block_mean_remainder(qs, k, v, sel))
                alpha = ((delta0 * (ref - mean)).sum() / (delta0 * delta0).sum()).item()
                row = {"layer": name, "density": density, "step": step, "none": rel(kept, ref), "mean": rel(mean, ref),
                       "cached": rel(merge_attention(kept, lk, unkept0, lu0)[0], ref), "delta": rel(mean + delta0, ref),
                       **{f"delta_h{h}": rel(mean + 0.5 ** ((step - src - 1) / h) * delta0, ref) for h in (4, 8, 16)},
                       "delta_best": rel(mean + alpha * delta0, ref), "best_weight": alpha,
                       "kept_mass": torch.exp(lk - fused_attention_lse(qs, k, v)[1]).mean().item()}
                rows.append(row)
                print(f"step {step:2d} 1/{round(1 / density):<3d} {name:16s} " + " ".join(
                    f"{key} {row[key]:.4f}" for key in ("none", "mean", "cached", "delta", "delta_h16", "delta_best")), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("geometry", "remainders", "layers", "forms", "budget", "previous", "reuse", "delta"),
                    required=True)
    ap.add_argument("--out", default=None, help="JSON (default: PART.json)")
    ap.add_argument("--qkv", default=None, help="a recording to reuse, or where to keep the new one")
    args = ap.parse_args()
    if args.part in ("previous", "reuse"):
        captured = None  # records its own steps
    elif args.part == "delta":
        if args.qkv and os.path.exists(args.qkv):
            captured = torch.load(args.qkv)
        else:
            pipe = load_pipeline("models/wan-mini", "cpu", "fp32")
            steps = capture_steps(pipe, 1, DELTA_STEPS, GRID[0], 256, 30)
            captured = {s: {n: tuple(x.to(torch.bfloat16) for x in qkv) for n, qkv in d.items()} for s, d in steps.items()}
            if args.qkv:
                torch.save(captured, args.qkv)
    elif args.qkv and os.path.exists(args.qkv):
        captured = torch.load(args.qkv)
    else:
        pipe = load_pipeline("models/wan-mini", "cpu", "fp32")
        captured = capture_qk(pipe, 0, SimpleNamespace(recall_step=2, frames=GRID[0], size=256, steps=4))
        if args.qkv:
            torch.save(captured, args.qkv)
    parts = {"geometry": study_geometry, "remainders": study_remainders, "layers": study_layers, "forms": study_forms,
             "budget": study_budget, "previous": study_previous, "reuse": study_reuse, "delta": study_delta}
    rows = parts[args.part](captured)
    with open(args.out or f"{args.part}.json", "w") as fh:
        step = {"previous": "5 (vs 4) of 10, seed 0", "reuse": "2-9 (from 1) of 10, seed 0",
                "delta": "3-29 (from 2) of 30, seed 1"}.get(args.part, "2 of 4, seed 0")
        json.dump({"model": "models/wan-mini", "step": step, "part": args.part, "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
