"""Key blocks of 16 on a trained model's activations: which cheap score ranks them (CPU study,
2026-12-05; issue 21's blocks-of-16 gap).

    python scripts/study_fine_blocks.py REC.pt [--densities 1/32,1/8] [--eval-blocks 64] [--json F]
    python scripts/study_fine_blocks.py REC.pt --block-size 64   # pooled, subgrid, oracle at key blocks of 64

``REC.pt``: a recording of ``vidhash bench selection --dropin models/wan-mini --dropin-cache REC.pt``
(every self-attention's q, k at a few denoising steps of two seeds). Measured on the second half of
the seeds (what that bench measures), query blocks of 128, one sink and the local blocks forced,
per layer and density, recall (share of exact attention mass kept, as the bench's) of:

* ``pooled`` — ``s · q̄ · k̄`` with 16-token key means (the library's default);
* ``blend λ`` — key means ``(1 − λ) · own + λ · 64-token parent`` (``λ = 0.9``: the ``parent`` scorer);
* ``moments`` — the second-order estimate (key and query variances);
* ``subgrid m lse|max`` — ``m`` query sub-centroids against the 16-token key means;
* ``bk64 split`` — pooled at key blocks of 64 keeping a quarter as many, each split into its four
  blocks of 16 (the same tokens kept as a bk-64 selection of equal count);
* ``oracle`` — the same count of the heaviest blocks of 16 (forced ones first).

For ``pooled``, ``subgrid m4 max`` and the oracle also the relative error of the layer's attention
output against dense on those query blocks with the unkept blocks' mean tokens merged in
(``remainder="mean"``, the drop-in's setting in BENCHMARKS' table): ``err+mean …``.

``--block-size 64``: key blocks of 64 instead — ``pooled``, ``subgrid m{4,8} {lse,max}`` (cells of 64
keys) and ``subgrid m4 max sub16`` (4 query sub-centroids × key sub-blocks of 16, best cell: the
block-score kernel's ``m=4, sub=16``) against the oracle of blocks of 64.
"""
from __future__ import annotations

import argparse
import json
from fractions import Fraction

import torch

from types import SimpleNamespace

from vidhash.bench.selection import output_error
from vidhash.kernels.block_select.naive import forced_and_allowed, num_kept_blocks
from vidhash.selection.oracle import block_mass, eval_query_blocks, kept_mass, top_mass
from vidhash.selection.scorers import rank_top, score_blocks

BQ = 128


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("recording")
    p.add_argument("--densities", default="1/32,1/8")
    p.add_argument("--eval-blocks", type=int, default=64)
    p.add_argument("--layers", default=None, help="comma list of module names (default: all)")
    p.add_argument("--block-size", type=int, default=16, choices=(16, 64))
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    BK = args.block_size
    torch.set_grad_enabled(False)
    rec = torch.load(args.recording)
    half = (len(rec["seeds"]) // 2) * len(rec["steps"])
    densities = [float(Fraction(x)) for x in args.densities.split(",")]
    names = args.layers.split(",") if args.layers else list(rec["layers"])
    rows = []
    for name in names:
        q, k, v = (x[half:].float() for x in rec["layers"][name])
        n = q.shape[-2]
        blocks = eval_query_blocks(-(-n // BQ), args.eval_blocks)
        mass, counts = block_mass(q, k, block_size=BK, query_block_size=BQ, query_blocks=blocks)
        total = float(counts.sum())
        kw = dict(block_size=BK, query_block_size=BQ, query_blocks=blocks)
        own = score_blocks(q, k, "pooled", **kw)
        scores = {"pooled": own}
        if BK == 16:
            parent = score_blocks(q, k, "pooled", block_size=64, query_block_size=BQ, query_blocks=blocks)
            parent = parent.repeat_interleave(4, dim=-1)[..., : own.shape[-1]]
            for lam in (0.25, 0.5, 0.9):
                scores[f"blend {lam}"] = (1 - lam) * own + lam * parent
            scores["moments"] = score_blocks(q, k, "moments", **kw)
        for m in (4, 8):
            for red in ("lse", "max"):
                scores[f"subgrid m{m} {red}"] = score_blocks(q, k, "subgrid", m=m, sub=BK, reduce=red, **kw)
        if BK == 64:
            scores["subgrid m4 max sub16"] = score_blocks(q, k, "subgrid", m=4, sub=16, reduce="max", **kw)
        forced, allowed = forced_and_allowed(blocks, n, n, BQ, BK, 1, 1, False)
        f64, a64 = forced_and_allowed(blocks, n, n, BQ, 64, 1, 1, False)
        coarse = score_blocks(q, k, "pooled", block_size=64, query_block_size=BQ, query_blocks=blocks) if BK == 16 else None
        for density in densities:
            kept = num_kept_blocks(n, n, density=density, block_size=BK, query_block_size=BQ, local_blocks=1,
                                   sink_blocks=1, causal=False)
            row = dict(layer=name, density=density, kept=kept,
                       oracle=float(top_mass(mass, kept, forced).sum()) / total)
            for sname, s in scores.items():
                row[sname] = float(kept_mass(mass, rank_top(s, forced, allowed, kept)).sum()) / total
            if BK == 16:
                idx64 = rank_top(coarse, f64, a64, max(1, kept // 4)).long()
                split = (idx64.unsqueeze(-1) * 4 + torch.arange(4)).flatten(-2)
                split = torch.where(idx64.unsqueeze(-1).expand(*idx64.shape, 4).flatten(-2) < 0, -1, split)
                split = torch.where(split < mass.shape[-1], split, -1)
                row["bk64 split"] = float(kept_mass(mass, split).sum()) / total
            full = torch.zeros(*mass.shape[:2], -(-n // BQ), kept, dtype=torch.int32)
            study = SimpleNamespace(query_block=BQ, backend="reference")
            for sname in ("pooled", "subgrid m4 max", "oracle"):
                full[:, :, blocks] = rank_top(mass if sname == "oracle" else scores[sname], forced, allowed, kept)
                row[f"err+mean {sname}"] = output_error(q, k, v, full, blocks, BK, study, "mean")
            rows.append(row)
            print(f"{name} 1/{round(1 / density)} kept {kept}: oracle {row['oracle']:.3f}  " + "  ".join(
                f"{x} {row[x] / row['oracle']:.3f}" for x in row if x not in ("layer", "density", "kept", "oracle")
                and not x.startswith("err")) + "  " + "  ".join(f"{x} {row[x]:.4f}" for x in row if x.startswith("err")),
                flush=True)
    print("\nmean over layers, recall / oracle:")
    for density in densities:
        sub = [r for r in rows if r["density"] == density]
        oracle = sum(r["oracle"] for r in sub) / len(sub)
        cols = [x for x in sub[0] if x not in ("layer", "density", "kept", "oracle") and not x.startswith("err")]
        errs = [x for x in sub[0] if x.startswith("err")]
        print(f"1/{round(1 / density)}: oracle {oracle:.3f}  " + "  ".join(
            f"{x} {sum(r[x] for r in sub) / len(sub) / oracle:.3f}" for x in cols) + "  " + "  ".join(
            f"{x} {sum(r[x] for r in sub) / len(sub):.4f}" for x in errs))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"recording": {k: v for k, v in rec.items() if k != "layers"}, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
