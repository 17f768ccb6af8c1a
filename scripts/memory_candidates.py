"""How many candidates the memory-read kernel's probe leaves per query (a PyTorch model of
kernels/memory: same scores, partitions, θ and groups), on the `vidhash bench memory` data.

    python scripts/memory_candidates.py [--entries 65536] [--queries 256] [--top-k 64,256]

Per top_k and probe variant: entries scoring ≥ θ, candidate groups of 16, and the share of
queries whose groups overflow the cap and fall back to scanning every entry.
"""
import argparse
import math

import torch

from vidhash.bench.memory import _clustered
from vidhash.hashing import sig_signs
from vidhash.memory import HashedMemory

G, NEG = 16, -(10**6)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--entries", type=int, default=65536)
    p.add_argument("--queries", type=int, default=256)
    p.add_argument("--top-k", default="64,256")
    p.add_argument("--clusters", type=int, default=512)
    p.add_argument("--bits", type=int, default=32)
    a = p.parse_args()
    g = torch.Generator().manual_seed(0)
    mem = HashedMemory(a.entries // 16, 16, 1, 64, n_bits=a.bits, seed=0)
    centres = torch.randn(1, a.clusters, 64, generator=g)
    for f in range(math.ceil(mem.capacity / 1560)):
        k = _clustered(centres, 1560, 0.6, g)
        mem.write(k, torch.randn(k.shape, generator=g), f)
    c = mem.capacity
    q = _clustered(centres, a.queries, 0.6, g)
    qb = (sig_signs(mem.hasher(q, role="query")[0, 0], a.bits) > 0).float()
    eb = (sig_signs(mem.signatures.view(c, -1), a.bits) > 0).float()
    s = (2 * qb @ eb.T - eb.sum(-1)).long()  # the kernel's score: sim − n_bits + |q|
    s = torch.where(mem.counts.view(c) > 0, s, NEG)
    print(f"{c:,} entries ({(mem.counts > 0).float().mean():.0%} full), {a.queries} queries, {a.bits}-bit SimHash")
    for k in (int(x) for x in a.top_k.split(",")):
        bc = max(128, 1 << (k - 1).bit_length())
        cap = min(max(512, 4 * k), c // G)
        for m in (1, 2):
            parts = torch.stack([s[:, c0 : c0 + bc] for c0 in range(0, c, 2 * bc)], -1)  # probe: every 2nd chunk
            tops = parts.topk(m, -1).values.reshape(s.shape[0], -1)
            theta = tops.sort(1, descending=True).values[:, k - 1].clamp(min=-a.bits)
            ge = s >= theta[:, None]
            groups = ge.view(s.shape[0], c // G, G).any(-1).sum(-1)
            print(f"  k={k:4d} BC={bc} probe best-{m} per partition: entries ≥ θ {ge.sum(-1).float().median():6.0f}, "
                  f"groups {groups.float().median():5.0f} (cap {cap}), full-scan fallback {(groups > cap).float().mean():5.0%}")


if __name__ == "__main__":
    main()
