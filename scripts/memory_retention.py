"""python scripts/memory_retention.py [--model random-tiny | PIPELINE_DIR] [--frames 2408] [--layer 0] [--json out.json]

What a fixed-size ``HashedMemory`` still holds of the first place a camera saw, after 10 s, 1 min and
5 min of wandering (8 fps, 64×64 frames, 8×8 patches: 64 tokens per frame; 5 min = 153,600 tokens
written per layer), for several memory configurations. Findings: docs/memory.md.

Keys: one layer's temporal keys of each frame of a ``RandomTrajectory`` through the procedural
world (1024×1024 torus). Layer 0's keys depend on the frame alone (spatial attention is within a
frame), so they are computed per frame, exactly; deeper layers are approximated the same way
(no temporal context). Every token is written with id ``frame·64 + token`` as its frame index, so
each entry's world position is known.

Per config and horizon N (frames after the first visit, frames 0..7):

* ``retained`` — share of the first visit's tokens still in the memory (FIFO only);
* ``coverage`` — share of the first visit's patch places (world positions) for which the memory
  holds a token of any view within 4 px of that place (what a revisit can read back);
* ``same_bucket`` — share of pairs of tokens from one world place (different frames) routed to
  one bucket (1.0 = routing by place; 1/num_buckets = random).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from vidhash.data.clips import to_model_frames
from vidhash.data.world import ProceduralWorld, RandomTrajectory
from vidhash.memory import HashedMemory

FPS, FIRST = 8, 8
HORIZONS = {"10s": 80, "1min": 480, "5min": 2400}
CONFIGS = [  # name, num_buckets, slots, route_bits, policy
    ("tiny preset 64x16", 64, 16, None, "fifo"),
    ("1024x32", 1024, 32, None, "fifo"),
    ("4096x16", 4096, 16, None, "fifo"),
    ("4096x16 route8", 4096, 16, 8, "fifo"),
    ("4096x16 merge", 4096, 16, None, "merge"),
    ("1024x16 merge", 1024, 16, None, "merge"),
    ("1024x32 merge", 1024, 32, None, "merge"),
    ("2048x16 merge", 2048, 16, None, "merge"),
    ("16384x8", 16384, 8, None, "fifo"),
    ("16384x8 route10", 16384, 8, 10, "fifo"),
    ("16384x16", 16384, 16, None, "fifo"),
]


def load_model(name: str):
    from vidhash.pipelines import VidHashPipeline

    if name.startswith("random-"):
        return VidHashPipeline.random(name.removeprefix("random-"), seed=0).transformer
    return VidHashPipeline.from_pretrained(name).transformer


@torch.no_grad()
def frame_keys(model, frames: torch.Tensor, poses: torch.Tensor, layer: int, batch: int = 64) -> torch.Tensor:
    """Keys ``(1, h, T·n, e)`` of ``layer`` for every frame, each frame on its own (t = 0)."""
    out = []
    for s in range(0, len(frames), batch):
        x = frames[s : s + batch].unsqueeze(1)
        p = poses[s : s + batch].unsqueeze(1)
        with model.record_temporal_qk() as rec:
            model(x, torch.zeros(len(x), 1), None, p)
        out.append(rec[layer][0][1])  # (b, h, n, e)
    k = torch.cat(out)  # (T, h, n, e)
    return k.permute(1, 0, 2, 3).reshape(1, k.shape[1], -1, k.shape[-1])


def torus_dist(a: np.ndarray, b: np.ndarray, size: int) -> np.ndarray:
    d = np.abs(a[:, None, :] - b[None, :, :]) % size
    d = np.minimum(d, size - d)
    return np.sqrt((d**2).sum(-1))


def measure(mem: HashedMemory, token_pos: np.ndarray, first_ids: np.ndarray, size: int) -> dict:
    frames = mem.frames[0].numpy()  # (h, u, s) ids
    heads = frames.shape[0]
    retained, covered = [], []
    first_pos = token_pos[first_ids]
    for h in range(heads):
        ids = frames[h][frames[h] >= 0]
        retained.append(np.isin(first_ids, ids).mean())
        pos = token_pos[ids]
        near = np.zeros(len(first_pos), bool)
        for s in range(0, len(pos), 4096):
            near |= (torus_dist(first_pos, pos[s : s + 4096], size) <= 4.0).any(1)
        covered.append(near.mean())
    return {"retained": float(np.mean(retained)), "coverage": float(np.mean(covered))}


def same_bucket_share(mem: HashedMemory, keys: torch.Tensor, token_pos: np.ndarray, max_tokens: int = 40_000) -> float:
    """Pairs of tokens at one world position (different frames), share routed to one bucket."""
    k = keys[:, :, :max_tokens]
    buckets = mem.route(mem.hasher(k, role="key"))[0].numpy()  # (h, t)
    pos = token_pos[: k.shape[2]].round().astype(np.int64)
    key = pos[:, 0] * 100_003 + pos[:, 1]
    order = np.argsort(key, kind="stable")
    same, total = 0, 0
    for h in range(buckets.shape[0]):
        kb, bb = key[order], buckets[h][order]
        starts = np.flatnonzero(np.r_[True, kb[1:] != kb[:-1]])
        for a, b in zip(starts, np.r_[starts[1:], len(kb)]):
            if b - a > 1:
                g = bb[a:b]
                _, counts = np.unique(g, return_counts=True)
                same += int((counts * (counts - 1)).sum())
                total += (b - a) * (b - a - 1)
    return same / max(total, 1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="random-tiny")
    p.add_argument("--frames", type=int, default=FIRST + max(HORIZONS.values()))
    p.add_argument("--layer", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--revisit", type=float, default=0.0, help="RandomTrajectory revisit probability (0: no deliberate returns)")
    p.add_argument("--configs", default=None, help="comma-separated config names (default all)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    model = load_model(args.model).eval()
    size = int(model.config.pos_period)
    world = ProceduralWorld(seed=0, size=size, view=64)
    traj = RandomTrajectory(size, 4, seed=args.seed, revisit=args.revisit)
    _, poses = traj.take(args.frames)
    frames = to_model_frames(world.render_many(poses))
    poses_t = torch.from_numpy(poses.astype(np.float32))
    keys = frame_keys(model, frames, poses_t, args.layer)
    n = model.tokens_per_frame(64, 64)
    token_pos = model.token_positions(poses_t.unsqueeze(0), 64, 64)[0].reshape(-1, 2).numpy() % size
    first_ids = np.arange(FIRST * n)
    heads, e = keys.shape[1], keys.shape[-1]
    print(f"keys: {keys.shape[2]} tokens, layer {args.layer}, {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    chosen = CONFIGS if not args.configs else [c for c in CONFIGS if c[0] in args.configs.split(",")]
    rows = []
    for name, u, s, route, policy in chosen:
        mem = HashedMemory(u, s, heads, e, n_bits=32, route_bits=route, policy=policy, seed=args.layer)
        row = {"config": name, "num_buckets": u, "slots": s, "route_bits": mem._route_bits, "policy": policy,
               "capacity": u * s, "nbytes_fp32": mem.nbytes,
               "nbytes_bf16": HashedMemory(u, s, heads, e, n_bits=32, dtype=torch.bfloat16).nbytes,
               "same_bucket": same_bucket_share(mem, keys, token_pos)}
        written = 0
        for name_h, horizon in sorted(HORIZONS.items(), key=lambda kv: kv[1]):
            stop = min(FIRST + horizon, args.frames) * n
            for start in range(written, stop, 4 * n):  # the pipeline writes a chunk (4 frames) at a time
                end = min(start + 4 * n, stop)
                mem.write(keys[:, :, start:end], keys[:, :, start:end], torch.arange(start, end))
            written = stop
            row[name_h] = measure(mem, token_pos, first_ids, size)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    print(f"{'config':<18} {'capacity':>8} {'MB/layer bf16':>13} {'same bucket':>11}  " +
          "  ".join(f"{h:>14}" for h in HORIZONS))
    for r in rows:
        print(f"{r['config']:<18} {r['capacity']:>8} {r['nbytes_bf16'] / 2**20:>13.1f} {r['same_bucket']:>11.3f}  " +
              "  ".join(f"{r[h]['retained']:>5.2f} / {r[h]['coverage']:>5.2f}  " for h in HORIZONS))
    print("(retained / coverage of the first visit's tokens / places)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "layer": args.layer, "frames": args.frames, "revisit": args.revisit,
                       "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
