"""Why does the levels select's read cost more late in a long clip? Work counts per capture.

    python scripts/levels_flatness.py --seconds 600 --chunks 20,200,500,700,850,1000,1150 --json out.json

1. Generates one clip with the shipped world model and its preset, as ``vidhash bench generation``
   does (same seed, the state's random camera path; float32 on the CPU, where the read is
   ``kernels/memory/cpu.py``'s: the same entries as the levels select). At the ``--chunks`` it keeps,
   per memory layer, the memory's signatures and filled mask, and per read the query signatures
   (``--save``: a folder to torch.save them to, one file per chunk; ``--load`` reads them back and
   skips the generation).
2. Per read, an exact torch replay of ``memory_select_levels``' state machine with the GPU's
   tiling (``bq`` 64 queries, ``bc`` 128 entries, words of 16 entries, the H100's 22 entry
   ranges at 256 queries × 3 heads): the threshold level ``T`` per query, the queries still open
   after the window pass, the closing passes that have an open tile of ``bq`` queries, the
   emitted words per query (what the expand pass scores) and the entries tied at ``T`` beyond
   ``top_k``. ``--check`` compares the replay with the Triton kernel (``_state=True`` and
   ``_until="window"``) on the first read of the first chunk: on a CPU under TRITON_INTERPRET=1 a
   slice of it at the interpreter's tiling, with ``--device cuda`` all of it at the GPU's.

``--device cuda --dtype bfloat16`` runs the clip as the GPU bench does, but eager (the hook that
captures the reads does not run inside CUDA graphs; the selection is the same).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


# ----------------------------------------------------------------------------- 1. the clip
def generate(args, chunks: set[int]) -> dict:
    """Streams the clip; returns {chunk: {"tables": {(layer, version): (sigs, filled)}, "reads": [...]}} and per-chunk seconds."""
    from vidhash.memory import HashedMemory
    from vidhash.pipelines import VidHashPipeline

    pipe = VidHashPipeline.load(args.model).to(args.device)
    if args.dtype != "float32":
        pipe.transformer.to(getattr(torch, args.dtype))
    pipe.set_progress_bar_config(disable=True)
    gen = pipe.generation_config
    frames = int(round(args.seconds * args.fps))
    caps: dict = {}
    live = {"state": None}
    orig = HashedMemory.attend

    def attend(mem, q, *a, **kw):  # records, then reads as the library does
        i = pipe._chunk_index
        if i in chunks and live["state"] is not None:
            layer = next(j for j, m in enumerate(live["state"].memories) if m is mem)
            cap = caps.setdefault(i, {"tables": {}, "reads": []})
            key = (layer, mem.signatures._version, mem.counts._version)
            if key not in cap["tables"]:
                b, h = q.shape[:2]
                cap["tables"][key] = (mem.signatures.view(b * h, mem.capacity, -1).to("cpu", copy=True),
                                      (mem.counts.view(b * h, mem.capacity) > 0).to("cpu", copy=True))
            with torch.no_grad():
                q_sig = mem.hasher(q, role="query")
            npass = sum(r["layer"] == layer for r in cap["reads"])
            cap["reads"].append({"layer": layer, "pass": "commit" if pipe._committing else npass, "table": key,
                                 "q_sig": q_sig.reshape(-1, q_sig.shape[-2], q_sig.shape[-1]).to("cpu", copy=True)})
        return orig(mem, q, *a, **kw)

    owrite = HashedMemory.write
    wstats: list = []  # per chunk: per write, (tokens per row, most tokens in one bucket, buckets hit, full buckets hit)

    def write(mem, k, *a, **kw):  # the merge kernel walks each bucket's tokens of a write one after another
        if live["state"] is not None:
            with torch.no_grad():
                bkt = mem.route(mem.hasher(k, role="key"))  # (b, h, t)
            b, h, t = bkt.shape
            rows = bkt.reshape(b * h, t)
            load = torch.zeros(b * h, mem.config.num_buckets, dtype=torch.int64)
            load.scatter_add_(1, rows.cpu(), torch.ones_like(rows.cpu()))
            full = (mem.bucket_writes.reshape(b * h, -1).cpu() >= mem.config.slots)
            while len(wstats) <= pipe._chunk_index:
                wstats.append([])
            wstats[pipe._chunk_index].append([t, int(load.max()), float((load > 0).sum(1).float().mean()),
                                              float(((load > 0) & full).sum(1).float().mean())])
        return owrite(mem, k, *a, **kw)

    HashedMemory.attend = attend
    HashedMemory.write = write
    kwargs = dict(height=gen.height, width=gen.width, chunk_frames=gen.chunk_frames, window_frames=gen.window_frames,
                  memory=gen.memory, num_inference_steps=gen.num_inference_steps, action_step=gen.action_step,
                  output_type="pt", guidance_scale=gen.guidance_scale, guidance_steps=gen.guidance_steps)
    total = -(-frames // gen.chunk_frames)
    times, fill, t0, t_start = [], [], time.perf_counter(), time.perf_counter()
    # the state exists from the first chunk's reads on: _start makes it before any pass
    start = pipe._start

    def _start(*a, **kw):
        live["state"] = start(*a, **kw)
        return live["state"]

    pipe._start = _start
    try:
        for n, _ in enumerate(pipe.stream(frames, generator=torch.Generator().manual_seed(args.seed), **kwargs)):
            t1 = time.perf_counter()
            times.append(t1 - t0)
            # per memory layer, the filled entries per (batch, head) row after this chunk (its commit included)
            fill.append([round((m.counts > 0).sum().item() / (m.counts.shape[0] * m.counts.shape[1]), 1)
                         for m in live["state"].memories])
            t0 = time.perf_counter()
            if n % 25 == 0 or n == total - 1:
                left = (t1 - t_start) / (n + 1) * (total - n - 1)
                print(f"chunk {n + 1}/{total}: {1000 * times[-1] / gen.chunk_frames:.0f} ms/frame, "
                      f"filled {sum(fill[-1]) / len(fill[-1]):.0f}, {len(caps)} chunks captured, ~{left / 60:.1f} min left", flush=True)
            if args.save and n in caps:
                os.makedirs(args.save, exist_ok=True)
                torch.save(caps[n], os.path.join(args.save, f"chunk{n:05d}.pt"))
    finally:
        HashedMemory.attend = orig
        HashedMemory.write = owrite
    mem = gen.memory
    return {"captures": caps, "chunk_seconds": times, "fill": fill, "writes": wstats,
            "memory": {"top_k": mem.top_k, "n_bits": mem.n_bits, "num_buckets": mem.num_buckets, "slots": mem.slots}}


def load(folder: str, chunks: set[int]) -> dict:
    caps = {}
    for name in sorted(os.listdir(folder)):
        if name.startswith("chunk") and name.endswith(".pt") and int(name[5:10]) in chunks:
            caps[int(name[5:10])] = torch.load(os.path.join(folder, name))
    return caps


# ----------------------------------------------------------------------------- 2. the replay
def similarities(q_sig: torch.Tensor, sigs: torch.Tensor, filled: torch.Tensor, n_bits: int) -> list[torch.Tensor]:
    """Per head, the (n, f) Hamming similarities of its queries to its filled entries, in entry order."""
    from vidhash.hashing import hamming_similarity

    return [hamming_similarity(hq, hs[hf], n_bits).to(torch.int64) for hq, hs, hf in zip(q_sig, sigs, filled)]


def _levels(t0, step, nt, n_bits):
    t = t0[:, None] + torch.arange(nt)[None, :] * step[:, None]
    return t.clamp(0, n_bits + 1)


def _count(hist_ge, t):
    """Entries at or above levels t (n, L) from suffix counts hist_ge (n, n_bits + 3) indexed by level + 1."""
    return hist_ge.gather(1, (t + 1).clamp(0, hist_ge.shape[1] - 1))


def replay(sim: torch.Tensor, top_k: int, n_bits: int, probe_stride: int = 8, bq: int = 64, bc: int = 128,
           ranges: int = 22) -> dict:
    """``memory_select_levels``' passes on one head's similarities ``sim (n, f)`` (f filled entries,
    entry order): per query the states after each pass, and the emit pass's words."""
    from vidhash.kernels.memory.ops import _level_passes

    n, f = sim.shape
    kk = top_k

    def suffix(s):  # (n, n_bits + 3): entries with sim ≥ level, for level −1 .. n_bits + 1
        nb = n_bits + 3
        h = torch.bincount((s + 1 + nb * torch.arange(n)[:, None]).view(-1), minlength=n * nb).view(n, nb)
        return h.flip(1).cumsum(1).flip(1)

    ge = {1: suffix(sim)}  # per sample stride, computed once

    passes, window_pass = _level_passes(probe_stride, n_bits)
    lo = torch.full((n,), -1)
    hi = torch.full((n,), -1 if f < kk else n_bits)
    above = torch.full((n,), f if f < kk else 0)
    est = torch.zeros(n, dtype=torch.int64)
    states, open_tiles = [], []
    for nreg, sample, window, closing in passes:
        op = lo < hi
        open_tiles.append(int(sum(bool(op[a:a + bq].any()) for a in range(0, n, bq))))
        nt = 3 * nreg
        if window:
            t0 = torch.minimum((est - (nt - 2) // 2).maximum(lo + 1), (hi + 1 - nt).maximum(lo + 1))
            step = torch.ones_like(lo)
        else:
            t0, step = lo + 1, ((hi - lo + nt - 1) // nt).clamp(min=1)
        t = _levels(t0, step, nt, n_bits)
        if sample not in ge:
            j = torch.arange(-(-f // sample))
            cols = j * sample + j % sample
            ge[sample] = suffix(sim[:, cols[cols < f]])
        cnt, need = _count(ge[sample], t), -(-kk // sample)
        ok, fail = cnt >= need, cnt < need
        best = torch.where(ok, t, -1).max(1).values
        fail_n = torch.where(fail, cnt, -1).max(1).values
        fail_t = torch.where(fail, t, n_bits + 2).min(1).values
        if sample > 1:
            mid = best + (fail_t - 1 - best) // 2
            new = torch.where(best < 0, (fail_t - 1).clamp(min=0), torch.where(fail_t > n_bits + 1, best, mid))
            est = torch.where(op, new, est)
        else:
            shrink = op & (fail_t - 1 < hi)
            lo, hi, above = torch.where(op, torch.maximum(lo, best), lo), torch.where(shrink, fail_t - 1, hi), \
                torch.where(shrink, fail_n, above)
        states.append((lo.clone(), hi.clone(), above.clone(), est.clone()))
    T, need = lo, kk - above
    # emit: per range (whole chunks of bc) the words of bc/8 entries with best > T, and its first `need` with best == T
    g = bc // 8
    per = (-(-f // bc) + ranges - 1) // ranges * bc
    nwords = -(-f // g)
    pad = torch.full((n, nwords * g), -2, dtype=sim.dtype)
    pad[:, :f] = sim
    wmax = pad.view(n, nwords, g).max(2).values
    rng_of = (torch.arange(nwords) * g) // per
    gt = wmax > T[:, None]
    eq = (wmax == T[:, None]).long()
    csum = eq.cumsum(1)
    first = torch.searchsorted(rng_of, rng_of)  # each word's range's first word
    eq_before = csum - eq - torch.where(first > 0, csum[:, (first - 1).clamp(min=0)], 0)
    words = (gt | ((eq == 1) & (eq_before < need[:, None]))).sum(1)
    at_t = _count(ge[1], T[:, None])[:, 0] - _count(ge[1], T[:, None] + 1)[:, 0]
    est_err = states[window_pass - 1][3] - T if window_pass else torch.zeros_like(T)  # the probes' estimate − T
    return {"states": states, "window_pass": window_pass, "est_err": est_err, "open_tiles": open_tiles, "T": T, "above": above,
            "words": words, "ties_beyond": at_t - need, "at_T": at_t, "need": need, "filled": f,
            "words_at_T": (eq.bool() & ~gt & (eq_before < need[:, None])).sum(1)}


def read_stats(q_sig, sigs, filled, top_k, n_bits, **kw) -> dict:
    """One read (all heads): the work counts of the levels select at the GPU tiling."""
    rs = [replay(s, top_k, n_bits, **kw) for s in similarities(q_sig, sigs, filled, n_bits)]
    w = rs[0]["window_pass"]
    cat = lambda k: torch.cat([r[k] for r in rs]).double()  # noqa: E731
    open_w = torch.cat([(r["states"][w][0] < r["states"][w][1]) for r in rs]).double()
    closing = [sum(r["open_tiles"][p] for r in rs) for p in range(w + 1, len(rs[0]["open_tiles"]))]
    return {
        "filled": sum(r["filled"] for r in rs) / len(rs),
        "open_after_window": open_w.mean().item(),
        "closing_tiles": closing,  # open (bq-query) tiles at the start of each closing pass, summed over heads
        "closing_passes_busy": sum(c > 0 for c in closing),
        "words": cat("words").mean().item(), "words_max": cat("words").max().item(),
        "words_at_T": cat("words_at_T").mean().item(),
        "est_err_hist": {int(e): int(n) for e, n in zip(*torch.unique(cat("est_err").long(), return_counts=True))},
        "T_mean": cat("T").mean().item(), "T_hist": torch.bincount(cat("T").long() + 1).tolist(),
        "above": cat("above").mean().item(), "at_T": cat("at_T").mean().item(),
        "ties_beyond": cat("ties_beyond").mean().item(),
    }


def check(cap: dict, top_k: int, n_bits: int, queries: int = 48, device: str = "cpu") -> dict:
    """The replay against the Triton kernel on the first read of ``cap``: on a CPU (TRITON_INTERPRET=1)
    one head, ``queries`` queries and 8,192 filled entries at the interpreter's tiling (bq = bc = 16,
    words of 2 entries) and 3 entry ranges; on CUDA the whole read at the GPU's tiling and entry ranges."""
    from vidhash.kernels.memory.ops import _level_ranges, memory_select_levels
    from vidhash.ops.checks import MemoryTable

    rd = cap["reads"][0]
    sigs, filled = cap["tables"][rd["table"]]
    gpu = device != "cpu"
    if not gpu:  # one head, its first `queries` queries, its first 8,192 filled entries: the interpreter is slow
        sigs, filled = sigs[:1].contiguous(), filled[:1].clone()
        filled &= filled.cumsum(1) <= 8192
        rd = {**rd, "q_sig": rd["q_sig"][:1, :queries].contiguous()}
    r, c, w = sigs.shape
    z = lambda *shape, dt=torch.float32: torch.zeros(*shape, dtype=dt, device=device)  # noqa: E731
    table = MemoryTable(keys=z(1, r, c, 1, 1), values=z(1, r, c, 1, 1), signatures=sigs.view(1, r, c, 1, w).to(device),
                        frames=z(1, r, c, 1, dt=torch.int64), counts=filled.view(1, r, c, 1).int().to(device),
                        bucket_writes=z(1, r, c, dt=torch.int64))
    hasher = type("H", (), {"n_bits": n_bits})()  # the kernel reads only n_bits when given q_sig
    n = rd["q_sig"].shape[1]
    q = z(1, r, n, 1)
    qs = rd["q_sig"].view(1, r, n, w).to(device)
    tiling = dict(bq=64, bc=128, ranges=_level_ranges(q, -(-n // 64) * r, c, 128, None)) if gpu else dict(bq=16, bc=16, ranges=3)
    kw = dict(hasher=hasher, q_sig=qs, ranges=tiling["ranges"])
    idx, lo, hi, above, words = (t.cpu() for t in memory_select_levels(table, q, top_k, _state=True, **kw))
    wlo, whi = (t.cpu() for t in memory_select_levels(table, q, top_k, _until="window", **kw)[:2])
    mine = [replay(x, top_k, n_bits, **tiling) for x in similarities(rd["q_sig"], sigs, filled, n_bits)]
    cat = lambda k: torch.cat([m[k] for m in mine])  # noqa: E731
    wp = mine[0]["window_pass"]
    return {"tiling": tiling, "T_equal": bool(torch.equal(lo.long(), cat("T"))),
            "above_equal": bool(torch.equal(above.long(), cat("above"))), "words_equal": bool(torch.equal(words.long(), cat("words"))),
            "window_open_equal": bool(torch.equal((wlo < whi), torch.cat([m["states"][wp][0] < m["states"][wp][1] for m in mine]))),
            "open_after_window": (wlo < whi).double().mean().item()}


def _index_list(text: str) -> set[int]:
    """``"20,200,500"`` -> {20, 200, 500}; argparse turns the ValueError into a usage line."""
    try:
        out = {int(c) for c in text.split(",") if c.strip()}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not out or min(out) < 0:
        raise argparse.ArgumentTypeError(f"expected non-negative integers, got {text!r}")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="models/world-tiny-v3")
    p.add_argument("--seconds", type=float, default=600)
    p.add_argument("--fps", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu, or cuda (eager: the capture hook does not run inside CUDA graphs)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="model dtype (bfloat16: the GPU bench's)")
    p.add_argument("--chunks", type=_index_list, default="20,200,500,700,850,1000,1150",
                   help="chunk indices to capture (0-based, comma-separated)")
    p.add_argument("--save", default=None, help="folder for the captures (torch.save, one file per chunk)")
    p.add_argument("--load", default=None, help="folder of earlier captures: skip the generation")
    p.add_argument("--ranges", type=int, default=22, help="entry ranges per query tile (the H100's at 256 queries × 3 heads)")
    p.add_argument("--layers", type=_index_list, default=None, help="memory layers whose reads are replayed (default: all)")
    p.add_argument("--passes", default=None, help="passes whose reads are replayed: step numbers and/or 'commit' (default: all)")
    p.add_argument("--check", action="store_true", help="compare the replay with the Triton kernel on one read")
    p.add_argument("--check-queries", type=int, default=48, help="queries of head 0 in the check (the interpreter is slow)")
    p.add_argument("--json", default="levels_flatness.json")
    args = p.parse_args()
    chunks = args.chunks
    layers = args.layers
    passes = set(args.passes.split(",")) if args.passes else None
    if args.load:
        caps, seconds, fill, writes = load(args.load, chunks), None, None, None
        from vidhash.config import generation_for

        m = generation_for(args.model).memory
        memory = {"top_k": m.top_k, "n_bits": m.n_bits, "num_buckets": m.num_buckets, "slots": m.slots}
    else:
        run = generate(args, chunks)
        caps, seconds, fill, writes, memory = run["captures"], run["chunk_seconds"], run["fill"], run["writes"], run["memory"]
    top_k, n_bits = memory["top_k"], memory["n_bits"]
    result = {"args": vars(args), "memory": memory, "chunk_seconds": seconds, "fill_per_chunk": fill,
              "writes_per_chunk": writes, "chunks": {}}
    with open(args.json, "w") as f:  # the generation's traces first: the replay below takes a while
        json.dump(result, f)
    if args.check and caps:
        result["check"] = check(caps[min(caps)], top_k, n_bits, args.check_queries, args.device)
        print("check:", result["check"], flush=True)
    for i in sorted(caps):
        cap = caps[i]
        reads = []
        for rd in cap["reads"]:
            if (layers and rd["layer"] not in layers) or (passes and str(rd["pass"]) not in passes):
                continue
            sigs, filled = cap["tables"][rd["table"]]
            if not bool(filled.any(1).all()):  # a head with an empty memory (the clip's first chunks): nothing to select
                continue
            reads.append({"layer": rd["layer"], "pass": rd["pass"],
                          **read_stats(rd["q_sig"], sigs, filled, top_k, n_bits, ranges=args.ranges)})
        if not reads:
            print(f"chunk {i}: no read of a non-empty memory", flush=True)
            continue
        result["chunks"][i] = {"reads": reads, **summary(reads)}
        s = result["chunks"][i]
        print(f"chunk {i}: {len(reads)} reads, filled {s['filled']:.0f}, open after window {100 * s['open_after_window']:.2f} %, "
              f"busy closing passes {s['closing_passes_busy']} (per read {s['closing_passes_busy'] / len(reads):.2f}), "
              f"words/query {s['words']:.1f}, T {s['T_mean']:.2f}, ties beyond top_k {s['ties_beyond']:.0f}, "
              f"estimate off by ≥ 2: {100 * s['est_off_by_2_or_more']:.2f} %", flush=True)
    with open(args.json, "w") as f:
        json.dump(result, f)
    print(f"wrote {args.json}")
    return 0


def summary(reads: list[dict]) -> dict:
    mean = lambda k: sum(r[k] for r in reads) / len(reads)  # noqa: E731
    err: dict = {}
    for r in reads:
        for e, n in r["est_err_hist"].items():
            err[e] = err.get(e, 0) + n
    total = sum(err.values())
    return {"est_err_hist": dict(sorted(err.items())),
            "est_off_by_2_or_more": sum(n for e, n in err.items() if abs(e) >= 2) / total,
            "est_off_by_3_or_more": sum(n for e, n in err.items() if abs(e) >= 3) / total,"filled": mean("filled"), "open_after_window": mean("open_after_window"),
            "closing_passes_busy": sum(r["closing_passes_busy"] for r in reads),
            "closing_tiles": [sum(r["closing_tiles"][p] for r in reads) for p in range(len(reads[0]["closing_tiles"]))],
            "words": mean("words"), "words_at_T": mean("words_at_T"), "T_mean": mean("T_mean"), "above": mean("above"),
            "at_T": mean("at_T"), "ties_beyond": mean("ties_beyond")}


if __name__ == "__main__":
    sys.exit(main())
