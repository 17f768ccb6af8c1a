"""Key blocks of 16 ranked by 64-token means (CPU study, 2026-12-05; issue 21's blocks-of-16 gap).

    python scripts/study_coarse_scores.py --shape wan|65k|16k [--eval-blocks 32]

On ``vidhash.bench.attention.video_like_qkv`` inputs (float32, density 1/32, query blocks of 128, one
sink and the local blocks forced), the recall of selections of 16-token key blocks whose scores come
from coarser means:

* ``direct`` — pooled q·k of 16-token key means (the library's ``pooled`` at ``block_size=16``);
* ``coarse top C`` — pooled at 64-token key blocks picks its top C (C = factor × kept/4), and only
  their 16-token sub-blocks are ranked by their own pooled score (factor 1: the 64-token selection
  itself, split);
* ``blend λ`` — every 16-token block scored ``(1 − λ) · its 64-token parent's score + λ · its own``.

Printed beside the oracle (the same count of the heaviest 16-token blocks).
"""
from __future__ import annotations

import argparse

import torch

from vidhash.attention import selection_recall
from vidhash.bench.attention import WAN_1_3B_GRID, WAN_1_3B_HEAD_DIM, WAN_1_3B_HEADS, grid_for, video_like_qkv
from vidhash.kernels.block_select.naive import forced_and_allowed, num_kept_blocks
from vidhash.ops.checks import BlockSelection
from vidhash.selection.oracle import oracle_recall
from vidhash.selection.scorers import rank_top, score_blocks, select_blocks_scored

SHAPES = {"wan": (WAN_1_3B_GRID, WAN_1_3B_HEADS, WAN_1_3B_HEAD_DIM), "65k": (grid_for(65536), 12, 64),
          "16k": (grid_for(16384), 12, 64)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="16k")
    p.add_argument("--eval-blocks", type=int, default=32)
    p.add_argument("--density", type=float, default=1 / 32)
    args = p.parse_args(argv)
    grid, heads, d = SHAPES[args.shape]
    q, k, _ = video_like_qkv(grid, heads, d, torch.float32, "cpu", seed=0)
    n, bq, ev = q.shape[-2], 128, args.eval_blocks
    kept = num_kept_blocks(n, n, density=args.density, block_size=16, query_block_size=bq, local_blocks=1,
                           sink_blocks=1, causal=False)
    oracle = oracle_recall(q, k, kept, block_size=16, query_block_size=bq, max_query_blocks=ev)

    def report(name, sel):
        r = selection_recall(q, k, sel, max_query_blocks=ev)
        print(f"  {name:<34} recall {r:.3f}  / oracle {r / oracle:.3f}")

    print(f"{args.shape} {tuple(q.shape)}: key blocks of 16, kept {kept}, oracle {oracle:.3f}")
    report("direct (16-token means)", select_blocks_scored(q, k, scorer="pooled", density=args.density,
                                                          block_size=16, query_block_size=bq))
    coarse = score_blocks(q, k, "pooled", block_size=64, query_block_size=bq)
    fine = score_blocks(q, k, "pooled", block_size=16, query_block_size=bq)
    nkb = fine.shape[-1]
    blocks = torch.arange(fine.shape[2])
    forced16, allowed16 = forced_and_allowed(blocks, n, n, bq, 16, 1, 1, False)
    forced64, allowed64 = forced_and_allowed(blocks, n, n, bq, 64, 1, 1, False)
    for factor in (1, 2, 4):
        take = min(coarse.shape[-1], -(-factor * kept // 4))
        parents = rank_top(coarse, forced64, allowed64, take).long()
        subs = (parents.clamp(min=0)[..., None] * 4 + torch.arange(4)).flatten(-2)
        ok = (parents >= 0)[..., None].expand(*parents.shape, 4).flatten(-2) & (subs < nkb)
        candidate = torch.zeros(fine.shape, dtype=torch.bool).scatter_(-1, subs.clamp(max=nkb - 1), ok)
        idx = rank_top(torch.where(candidate, fine, torch.tensor(-1e30)), forced16, allowed16, kept)
        report(f"coarse top {take} (x{factor}), then own", BlockSelection(idx, 16, bq, n, n, False))
    parent = coarse.repeat_interleave(4, dim=-1)[..., :nkb]
    for lam in (0.0, 0.1, 0.25, 0.5):
        idx = rank_top((1 - lam) * parent + lam * fine, forced16, allowed16, kept)
        report(f"blend lambda {lam}", BlockSelection(idx, 16, bq, n, n, False))


if __name__ == "__main__":
    main()
