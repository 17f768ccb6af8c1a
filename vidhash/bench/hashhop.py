"""HashHop retrieval from a fixed-size ``HashedMemory``, next to dense attention.

    vidhash bench hashhop --sizes 1000,10000,100000,1000000 --json hashhop.json

N random key→value pairs are stored; every value is itself the key of another pair, so a
chain of reads (``multi_hop_attention``) follows hops that cannot be guessed from patterns.
Queries start at stored keys; a read is correct when the output's nearest value among all N
is the right one. The memory keeps ``num_buckets × slots`` entries whatever N is, so past
its capacity it forgets (FIFO per bucket) and accuracy falls; dense attention keeps all N at
N·2·d floats and pays N per query.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from vidhash.attention import dense_attention
from vidhash.bench.retrieval import multi_hop_attention
from vidhash.files import write_json
from vidhash.memory import HashedMemory


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _nearest(out: torch.Tensor, values: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """Index of the nearest value (cosine) for each row of ``out (q, d)``."""
    best = []
    vn = F.normalize(values, dim=-1)
    for s in range(0, out.shape[0], chunk):
        best.append((F.normalize(out[s : s + chunk], dim=-1) @ vn.T).argmax(-1))
    return torch.cat(best)


def run_size(n: int, hops: list[int], args) -> list[dict]:
    dev, d = args.device, args.dim
    g = torch.Generator(device="cpu").manual_seed(args.seed + n)
    keys = F.normalize(torch.randn(n, d, generator=g), dim=-1).to(dev)
    nxt = torch.randperm(n, generator=g).to(dev)
    values = keys[nxt]  # the value of pair i is the key of pair nxt[i]
    mem = HashedMemory(args.buckets, args.slots, 1, d, n_bits=args.bits, policy=args.policy, seed=args.seed, device=dev)
    chunk = 65536
    _sync(dev)
    t0 = time.perf_counter()
    for i, s in enumerate(range(0, n, chunk)):
        mem.write(keys[s : s + chunk].view(1, 1, -1, d), values[s : s + chunk].view(1, 1, -1, d), i)
    _sync(dev)
    write_s = time.perf_counter() - t0
    nq = min(args.queries, n)
    # Queries start at the most recently written pairs' keys and at uniformly spread ones.
    start = torch.randint(0, n, (nq,), generator=g).to(dev)
    rows = []
    for h in hops:
        target = start
        for _ in range(h):
            target = nxt[target]
        target_value_idx = target  # after h hops the read should be key[target] == values[prev]
        q = keys[start].view(1, 1, nq, d)

        def mem_read(x):
            return mem.attend(x, top_k=args.top_k, scale=args.scale)

        _sync(dev)
        t0 = time.perf_counter()
        out = multi_hop_attention(q, hops=h, attn=mem_read)
        _sync(dev)
        mem_s = time.perf_counter() - t0
        # the h-th read returns values[prev] = keys[target]; compare against keys (as values of prev)
        mem_acc = float((_nearest(out[0, 0], keys) == target_value_idx).float().mean())
        row = {
            "N": n, "hops": h, "queries": nq,
            "memory_accuracy": mem_acc,
            "memory_bytes": mem.nbytes,
            "memory_write_s": write_s,
            "memory_read_ms_per_query_hop": 1e3 * mem_s / (nq * h),
            "capacity": mem.capacity,
        }
        if not args.no_dense:
            def dense_read(x):
                outs = []
                for s in range(0, x.shape[-2], 64):
                    outs.append(dense_attention(x[:, :, s : s + 64], keys.view(1, 1, n, d), values.view(1, 1, n, d), scale=args.scale))
                return torch.cat(outs, dim=2)

            _sync(dev)
            t0 = time.perf_counter()
            dout = multi_hop_attention(q, hops=h, attn=dense_read)
            _sync(dev)
            dense_s = time.perf_counter() - t0
            row.update({
                "dense_accuracy": float((_nearest(dout[0, 0], keys) == target_value_idx).float().mean()),
                "dense_bytes": 2 * n * d * keys.element_size(),
                "dense_read_ms_per_query_hop": 1e3 * dense_s / (nq * h),
            })
        rows.append(row)
    return rows


def _fmt_bytes(b: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if b < 1024 or unit == "GiB":
            return f"{b:.1f} {unit}" if unit != "B" else f"{int(b)} B"
        b /= 1024
    return f"{b:.1f} GiB"


def print_table(rows: list[dict]) -> None:
    head = f"{'N':>9} {'hops':>4} {'mem acc':>8} {'dense acc':>9} {'mem bytes':>11} {'dense bytes':>11} {'mem ms/q':>9} {'dense ms/q':>10} {'write s':>8}"
    print(head)
    print("-" * len(head))
    for r in rows:
        dacc = f"{r['dense_accuracy']:.3f}" if "dense_accuracy" in r else "-"
        dby = _fmt_bytes(r["dense_bytes"]) if "dense_bytes" in r else "-"
        dms = f"{r['dense_read_ms_per_query_hop']:.4f}" if "dense_read_ms_per_query_hop" in r else "-"
        print(
            f"{r['N']:>9} {r['hops']:>4} {r['memory_accuracy']:>8.3f} {dacc:>9} {_fmt_bytes(r['memory_bytes']):>11} {dby:>11} "
            f"{r['memory_read_ms_per_query_hop']:>9.4f} {dms:>10} {r['memory_write_s']:>8.2f}"
        )


def _int_list(text: str, name: str) -> list[int]:
    try:
        vals = [int(float(x)) for x in text.split(",") if x.strip()]
    except ValueError as err:
        raise ValueError(f"--{name} must be comma-separated integers, got {text!r}") from err
    if not vals or min(vals) < 1:
        raise ValueError(f"--{name} needs positive integers, got {text!r}")
    return vals


def run(args) -> int:
    sizes, hops = _int_list(args.sizes, "sizes"), _int_list(args.hops, "hops")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but no CUDA device is available")
    rows = []
    print(f"HashHop on {args.device}: memory {args.buckets}×{args.slots} entries, {args.bits}-bit signatures, top_k={args.top_k}, dim={args.dim}")
    for n in tqdm(sizes, desc="sizes", leave=False):
        rows.extend(run_size(n, hops, args))
    print_table(rows)
    if args.json:
        write_json(args.json, {"config": {k: v for k, v in vars(args).items() if not k.startswith("_")}, "rows": rows}, indent=2)
        print(f"wrote {args.json}")
    return 0
