"""Does the shape of a key block change what a selection can keep? A CPU study on the trained wan-mini.

Records the post-rotary q, k, v of every self-attention of `models/wan-mini` (dense, fp32) at
denoising step 2 of a 4-step clip (seed 0), then, for token orders that make each run of 64 tokens
a different piece of the (33 frames × 32 × 32) latent grid — rows (the model's own order: 2 rows of
32 in one frame) or tiles of 1×8×8, 2×4×8, 4×4×4 (t × h × w) — and densities 1/8 and 1/32, prints the
mean over layers of: the oracle recall (the most attention mass as many blocks can hold, sink and
local blocks forced), the pooled selection's recall, and the relative error of the layer's output
against dense without and with `remainder="mean"` (48 evenly spaced query blocks each).

    python scripts/study_block_geometry.py [--out geometry.json] [--qkv qkv.pt]

About 5 min to record and 16 min to measure on a 2-core CPU. `--qkv` reuses (or keeps) the recording.
"""
import argparse
import json
import os
import time
from types import SimpleNamespace

import torch

from vidhash.attention import select_blocks, selection_recall
from vidhash.bench.dropin import capture_qk, layer_error, load_pipeline
from vidhash.selection.oracle import oracle_recall

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="geometry.json")
    ap.add_argument("--qkv", default=None, help="a recording to reuse, or where to keep the new one")
    args = ap.parse_args()
    if args.qkv and os.path.exists(args.qkv):
        captured = torch.load(args.qkv)
    else:
        pipe = load_pipeline("models/wan-mini", "cpu", "fp32")
        captured = capture_qk(pipe, 0, SimpleNamespace(recall_step=2, frames=GRID[0], size=256, steps=4))
        if args.qkv:
            torch.save(captured, args.qkv)
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
    with open(args.out, "w") as fh:
        json.dump({"model": "models/wan-mini", "step": "2 of 4, seed 0", "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
