"""Speed and recall of the HashedMemory kernels (read and write) against the reference path
and dense attention, in one run.

    vidhash bench memory --json memory.json

Default shape (issue 4's target): 2,048 queries against a full memory of 65,536 entries
(4,096 buckets × 16 slots), 12 heads, head_dim 64, 32-bit SimHash, bfloat16, top_k 64 and
256; the write is one frame of ``--frame-tokens`` tokens. Rows:

* ``read triton`` — ``HashedMemory.attend(backend="triton")``: query signatures, candidate
  scoring, exact top-k, attention over the k entries. ``sig`` / ``select`` / ``attend``
  time its three stages alone; ``read triton fwd+bwd`` adds the gradient to q.
* ``read triton levels`` — the same read with ``select="levels"`` (counts per similarity level,
  one emit pass: kernels/memory/NOTES.md); ``select (levels)`` and its steps, cumulative
  (``prepare``, ``+ probes, window``, ``+ closing passes``, ``+ emit``; the expansion is the
  rest); the line under it: queries the window pass left open, words per query, and whether
  its indices equal the candidates kernel's. ``read triton levels fwd+bwd`` adds the gradient.
* ``graph: ...`` (``--graphs``, CUDA) — dense SDPA and both reads replayed from a CUDA graph
  (``triton.testing.do_bench_cudagraph``): device time without the host's launch time, which
  is what generation with CUDA graphs pays; a read that cannot be captured says why.
* ``read reference`` — the same call on the PyTorch reference path.
* ``dense SDPA`` — ``scaled_dot_product_attention`` over all 65,536 entries (no selection).
* ``write triton`` / ``write reference`` — ``HashedMemory.write`` of one frame.
* ``write merge triton`` / ``write merge reference`` — the same write into a separate
  ``policy="merge"`` memory of the same shape, filled the same way (merge kernel vs
  ``naive.merge_insert``; each timed call merges into the memory again).

Recall (:mod:`vidhash.selection.memory_read`, over ``--recall-queries`` queries and all heads):
``recall`` — the share of the exact attention mass over all entries (softmax of
``q·k·scale + log(count)``) that the selected top-k hold; ``oracle`` — the most any k entries
could hold (the exact top-k by that score); ``ratio`` = recall / oracle; ``top-k recall`` — the
share of the exact top-k entries the signatures kept. Data: keys and queries drawn around ``--clusters`` random centres per head (so
attention is peaked, as for real tokens), values Gaussian.

Timing: ``triton.testing.do_bench`` (median, device events, L2 flushed between runs) on CUDA;
one host-timed call elsewhere (the CPU path exists only to check the
script under ``TRITON_INTERPRET=1`` with tiny sizes: its times mean nothing).
"""
from __future__ import annotations

import datetime
import math
import os
import platform
import time

import torch
import torch.nn.functional as F

from vidhash.files import write_json
from vidhash.memory import HashedMemory
from vidhash.selection.memory_read import MemoryReadStats


DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _timer(device: str, rep_ms: int):
    if device.startswith("cuda"):
        import triton.testing

        def bench(fn, rep=rep_ms):
            return float(triton.testing.do_bench(fn, warmup=max(10, rep // 4), rep=rep, return_mode="median"))
    else:

        def bench(fn, rep=rep_ms):  # one timed call: on CPU the bench only checks the script runs
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1e3
    return bench


def _clustered(centres: torch.Tensor, n: int, noise: float, g: torch.Generator) -> torch.Tensor:
    """``n`` vectors per head around random centres ``(h, m, d)`` → ``(1, h, n, d)``."""
    h, m, d = centres.shape
    pick = torch.randint(0, m, (h, n), generator=g, device=centres.device)
    x = centres.gather(1, pick.unsqueeze(-1).expand(h, n, d))
    return (x + noise * torch.randn(h, n, d, generator=g, device=centres.device)).unsqueeze(0)


def _recall(mem: HashedMemory, q: torch.Tensor, idx: torch.Tensor, scale: float) -> dict:
    """The read's quality (:mod:`vidhash.selection.memory_read`): ``recall`` (mass held by ``idx``),
    ``oracle`` (by the exact top-k), ``ratio``, ``topk_recall`` (share of the exact top-k kept)."""
    stats = MemoryReadStats()
    stats.add(mem.table, q, idx, scale)
    got = stats.summary()
    return {"recall": got["mass_recall"], "oracle": got["oracle"], "ratio": got["ratio"], "topk_recall": got["topk_recall"]}


def _read_rows(add, rows: list, mem: HashedMemory, q: torch.Tensor, q_sig: torch.Tensor, kk: int, dense_ms: float, args) -> None:
    """The read rows of one ``top_k``: both Triton selections (their reads, stages, fwd+bwd), the
    attention over the k entries, recall, and the reference read."""
    from vidhash.kernels.memory import ops as mops
    from vidhash.kernels.signature.ops import signatures_triton

    scale = 1.0 / math.sqrt(q.shape[-1])
    idx = mops.memory_select(mem.table, q, kk, hasher=mem.hasher, q_sig=q_sig)
    every = max(1, args.queries // args.recall_queries)
    quality = _recall(mem, q[:, :, ::every], idx[:, :, ::every], scale)
    ms = add("read triton", kk, lambda: mem.attend(q, kk, backend="triton"), **quality)
    read_row = rows[-1]
    read_row["vs_dense"] = dense_ms / ms
    _levels_rows(add, rows, mem, q, q_sig, kk, dense_ms, idx)
    add("  sig (queries)", kk, lambda: signatures_triton(q, mem.hasher, role="query"))
    add("  select (score + top-k)", kk, lambda: mops.memory_select(mem.table, q, kk, hasher=mem.hasher, q_sig=q_sig))
    _, ncand = mops.memory_select(mem.table, q, kk, hasher=mem.hasher, q_sig=q_sig, _candidates_only=True)
    nc = ncand.float()
    add("  · candidates kernel", kk, lambda: mops.memory_select(mem.table, q, kk, hasher=mem.hasher, q_sig=q_sig, _candidates_only=True),
        ncand_mean=float(nc.mean()), ncand_max=float(nc.max()), ncand_p99=float(nc.quantile(0.99)) if nc.numel() <= 1 << 24 else None)
    print(f"  {'':26s} candidate chunks per query: mean {float(nc.mean()):.1f}, max {int(nc.max())}")
    keys, values, _, _, counts, _ = mops._rows(mem.table)
    add("  attend (k entries)", kk, lambda: mops._MemoryAttend.apply(q, keys, values, counts, idx, scale))
    qg = q.detach().clone().requires_grad_(True)

    def fwd_bwd(select="candidates"):
        out, lse = mem.attend(qg, kk, backend="triton", select=select)
        torch.autograd.grad((out.float().square().sum() + lse.sum()), qg)

    add("read triton fwd+bwd", kk, fwd_bwd)
    add("read triton levels fwd+bwd", kk, lambda: fwd_bwd("levels"))
    if not args.no_reference:
        ref_ms = add("read reference", kk, lambda: mem.attend(q, kk, backend="reference"), rep=1)
        read_row["vs_reference"] = ref_ms / ms
    print(f"  {'':26s} recall {quality['recall']:.3f} of the exact attention mass (oracle top-{kk}: "
          f"{quality['oracle']:.3f}, ratio {quality['ratio']:.3f}); {quality['topk_recall']:.3f} of the exact top-{kk} kept")


def _levels_rows(add, rows: list, mem: HashedMemory, q: torch.Tensor, q_sig: torch.Tensor, kk: int, dense_ms: float,
                 idx: torch.Tensor) -> None:
    """``select="levels"``: the read, its select, and the select's steps cumulatively (prepare;
    + probes and window pass; + closing passes; + emit; the rest of select is the expansion),
    with the share of queries the window pass left open, words per query, and whether its
    indices equal the candidates kernel's (``idx``)."""
    from vidhash.kernels.memory import ops as mops

    def sel(until=None, state=False):
        return mops.memory_select_levels(mem.table, q, kk, hasher=mem.hasher, q_sig=q_sig, _until=until, _state=state)

    got, *_, words = sel(state=True)
    lo, hi, _, _ = sel("window")
    open_rows = float((lo != hi).float().mean())
    same = bool(torch.equal(got, idx))
    ms = add("read triton levels", kk, lambda: mem.attend(q, kk, backend="triton", select="levels"),
             same_indices=same, window_open=open_rows, words_mean=float(words.float().mean()), words_max=int(words.max()))
    rows[-1]["vs_dense"] = dense_ms / ms
    add("  select (levels)", kk, sel)
    for label, until in (("  · prepare", "prepare"), ("  · + probes, window", "window"), ("  · + closing passes", "count"),
                         ("  · + emit", "emit")):
        add(label, kk, lambda: sel(until))
    print(f"  {'':26s} levels: {open_rows:.2%} of queries left open by the window pass; words per query mean "
          f"{float(words.float().mean()):.1f}, max {int(words.max())}; same indices as the candidates kernel: {same}")


def _graph_rows(rows: list, mem: HashedMemory, q: torch.Tensor, top_ks: list[int], dev: str, rep_ms: int, dense) -> None:
    """``--graphs``: dense SDPA and both reads per ``top_k`` timed as CUDA-graph replays (device
    time only). A call that cannot be captured (a host sync inside) gets ``ms`` None and the error."""
    import triton.testing

    calls = [("graph: dense SDPA", "-", dense)]
    for kk in top_ks:
        calls += [("graph: read triton", kk, lambda kk=kk: mem.attend(q, kk, backend="triton")),
                  ("graph: read triton levels", kk, lambda kk=kk: mem.attend(q, kk, backend="triton", select="levels"))]
    for label, kk, fn in calls:
        try:
            fn()  # compiled and autotuned outside the capture
            ms, err = float(triton.testing.do_bench_cudagraph(fn, rep=rep_ms, return_mode="median")), None
        except Exception as e:  # noqa: BLE001 — reported in the row, the other rows still run
            ms, err = None, f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
        rows.append({"name": label, "top_k": kk, "ms": ms, **({"error": err} if err else {})})
        print(f"  {label:26s} k={kk!s:>4}  " + (f"{ms:9.3f} ms" if ms is not None else f"not captured ({err})"), flush=True)


def run(args) -> int:
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but no CUDA device is available")
    if not args.device.startswith("cuda") and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(f"--device {args.device} runs the Triton kernels only in Triton's interpreter: set "
                         "TRITON_INTERPRET=1 before the command (a smoke run; its times mean nothing)")
    top_ks = [int(x) for x in str(args.top_k).split(",") if x]
    if not top_ks or min(top_ks) < 1:
        raise ValueError(f"--top-k needs positive integers, got {args.top_k!r}")
    from vidhash.kernels.signature.ops import signatures_triton

    dev, dt, h, d = args.device, DTYPES[args.dtype], args.heads, args.head_dim
    if getattr(args, "graphs", False) and not dev.startswith("cuda"):
        raise ValueError("--graphs times CUDA-graph replays: it needs --device cuda")
    bench = _timer(dev, args.rep_ms)
    g = torch.Generator(device=dev).manual_seed(args.seed)
    mem = HashedMemory(args.buckets, args.slots, h, d, n_bits=args.bits, dtype=dt, device=dev, seed=args.seed)
    centres = torch.randn(h, args.clusters, d, generator=g, device=dev)
    t = args.frame_tokens
    frames = max(1, math.ceil(args.fill * mem.capacity / t))
    for f in range(frames):
        k = _clustered(centres, t, 0.6, g).to(dt)
        mem.write(k, torch.randn(k.shape, generator=g, device=dev).to(dt), f, backend="triton")
    filled = float(mem.num_entries().float().mean()) / mem.capacity
    q = _clustered(centres, args.queries, 0.6, g).to(dt)
    name = torch.cuda.get_device_name() if dev.startswith("cuda") else platform.processor() or "cpu"
    print(f"memory bench on {name}: {args.queries} queries × {mem.capacity:,} entries ({filled:.1%} full), "
          f"{h} heads, head_dim {d}, {args.bits}-bit, {args.dtype}; write = {t} tokens")

    rows: list[dict] = []

    def add(label, k, fn, rep=None, **extra):
        ms = bench(fn, rep or args.rep_ms)
        rows.append({"name": label, "top_k": k, "ms": ms, **extra})
        print(f"  {label:26s} k={k!s:>4}  {ms:9.3f} ms", flush=True)
        return ms

    keys_all = mem.keys.view(1, h, mem.capacity, d)
    vals_all = mem.values.view(1, h, mem.capacity, d)
    dense_ms = add("dense SDPA (all entries)", "-", lambda: F.scaled_dot_product_attention(q, keys_all, vals_all))
    q_sig = signatures_triton(q, mem.hasher, role="query")
    for kk in top_ks:
        _read_rows(add, rows, mem, q, q_sig, kk, dense_ms, args)
    if getattr(args, "graphs", False):
        _graph_rows(rows, mem, q, top_ks, dev, args.rep_ms, lambda: F.scaled_dot_product_attention(q, keys_all, vals_all))

    k1 = _clustered(centres, t, 0.6, g).to(dt)
    v1 = torch.randn(k1.shape, generator=g, device=dev).to(dt)
    wms = add("write triton (1 frame)", "-", lambda: mem.write(k1, v1, frames, backend="triton"))
    write_row = rows[-1]
    if not args.no_reference:
        rms = add("write reference (1 frame)", "-", lambda: mem.write(k1, v1, frames, backend="reference"), rep=max(10, args.rep_ms // 4))
        write_row["vs_reference"] = rms / wms

    # the merge policy: a separate memory of the same shape, filled as the FIFO one was
    mm = HashedMemory(args.buckets, args.slots, h, d, n_bits=args.bits, dtype=dt, device=dev, seed=args.seed, policy="merge")
    gm = torch.Generator(device=dev).manual_seed(args.seed + 1)
    for f in range(frames):
        km = _clustered(centres, t, 0.6, gm).to(dt)
        mm.write(km, torch.randn(km.shape, generator=gm, device=dev).to(dt), f, backend="triton")
    mms = add("write merge triton", "-", lambda: mm.write(k1, v1, frames, backend="triton"))
    merge_row = rows[-1]
    merge_row["merged_entries"] = float((mm.counts > 1).float().mean())
    if not args.no_reference:
        mrs = add("write merge reference", "-", lambda: mm.write(k1, v1, frames, backend="reference"),
                  rep=max(10, args.rep_ms // 4))
        merge_row["vs_reference"] = mrs / mms

    print_table(rows)
    if args.json:
        meta = {
            "device": name, "date": datetime.date.today().isoformat(), "torch": torch.__version__,
            "triton": __import__("triton").__version__, "memory_filled": filled, "frames_written": frames + 1,
        }
        write_json(args.json, {"meta": meta, "config": {k: v for k, v in vars(args).items() if not k.startswith("_")},
                               "rows": rows}, indent=2)
        print(f"wrote {args.json}")
    return 0


def print_table(rows: list[dict]) -> None:
    print()
    print("(vs dense, vs reference: how many times faster the Triton row is)")
    print(f"| {'what':26s} | top_k | {'ms':>9s} | vs dense | vs reference | recall | oracle |  ratio | top-k recall |")
    print(f"|{'-' * 28}|------:|{'-' * 10}:|---------:|-------------:|-------:|-------:|-------:|-------------:|")
    for r in rows:
        vd = f"{r['vs_dense']:.2f}×" if "vs_dense" in r else ""
        vr = f"{r['vs_reference']:.1f}×" if "vs_reference" in r else ""
        rc = f"{r['recall']:.3f}" if "recall" in r else ""
        oc = f"{r['oracle']:.3f}" if "oracle" in r else ""
        ra = f"{r['ratio']:.3f}" if r.get("ratio") is not None else ""
        tk = f"{r['topk_recall']:.3f}" if r.get("topk_recall") is not None else ""
        ms = f"{r['ms']:9.3f}" if r["ms"] is not None else "      n/a"
        print(f"| {r['name'].strip():26s} | {r['top_k']!s:>5} | {ms} | {vd:>8s} | {vr:>12s} | {rc:>6s} | {oc:>6s} "
              f"| {ra:>6s} | {tk:>12s} |")
