"""Where a steady chunk's wall time goes on a GPU: host issue, GPU kernels, GPU idle (torch.profiler).

``vidhash bench generation`` times chunks and the GPU time inside the CUDA graphs' replays; this
script looks inside a few steady chunks of the same run (the bench's own loading, warm-up and
per-chunk synchronize) with torch.profiler and prints, per chunk:

* wall: the chunk's time, synchronize included (what the bench reports);
* issue: host time until the pipeline yields the chunk (before the synchronize): when it is
  close to wall, the host is the bottleneck (the GPU waits for launches);
* GPU busy: the union of the chunk's kernel and copy intervals on the device; wall − busy is
  time the GPU sat idle;

then the host's ops by self CPU time outside the graphs' replays and the GPU's kernels by time.
Writes ``profile_generation.json`` (the per-chunk rows and both tables) and a Chrome trace of
the profiled chunks (``trace.json.gz``) under ``--out``.

    source scripts/gpu/setup.sh
    python3 scripts/gpu/profile_generation.py --model models/world-tiny-v3 --cuda-graphs [--compile]
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import time


def _union_ms(intervals: list[tuple[float, float]]) -> float:
    """Total length (ms) of the union of ``(start_us, end_us)`` intervals."""
    total, end = 0.0, None
    for a, b in sorted(intervals):
        if end is None or a > end:
            total += b - a
            end = b
        elif b > end:
            total += b - end
            end = b
    return total / 1000.0


def trace_summary(trace: dict) -> list[dict]:
    """Per profiled chunk of a Chrome trace (``prof.export_chrome_trace``): the GPU's idle time before
    its first kernel or copy, its busy time, its idle time between ops and after the last, and the
    span of the CUDA graphs' kernels (first to last kernel launched by a ``cudaGraphLaunch``), ms."""
    ev = trace["traceEvents"]
    chunks = sorted((e for e in ev if e.get("name") == "chunk" and e.get("cat") == "user_annotation"),
                    key=lambda e: e["ts"])
    launches = {e["args"]["correlation"] for e in ev
                if e.get("cat") == "cuda_runtime" and e.get("name") == "cudaGraphLaunch" and "args" in e}
    ops = sorted((e for e in ev if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")), key=lambda e: e["ts"])
    rows = []
    for c in chunks:
        a, b = c["ts"], c["ts"] + c["dur"]
        mine = [e for e in ops if a <= e["ts"] < b]
        if not mine:
            continue
        busy, idle, end = 0.0, 0.0, None
        for e in mine:
            s, f = e["ts"], e["ts"] + e["dur"]
            if end is not None and s > end:
                idle += s - end
            busy += f - s if end is None else max(0.0, f - max(s, end))
            end = f if end is None else max(end, f)
        graph = [e for e in mine if e.get("args", {}).get("correlation") in launches]
        span = (max(e["ts"] + e["dur"] for e in graph) - min(e["ts"] for e in graph)) if graph else 0.0
        rows.append({"chunk_ms": c["dur"] / 1e3, "idle_before_ms": (mine[0]["ts"] - a) / 1e3, "busy_ms": busy / 1e3,
                     "idle_between_ms": idle / 1e3, "idle_after_ms": (b - end) / 1e3, "graphs_span_ms": span / 1e3,
                     "first_graph_ms": ((min(e["ts"] for e in graph) - a) / 1e3) if graph else None})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="models/world-tiny-v3")
    p.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
    p.add_argument("--warm-chunks", type=int, default=40, help="steady chunks run before the profiled ones")
    p.add_argument("--chunks", type=int, default=6, help="chunks profiled")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--cuda-graphs", action="store_true")
    p.add_argument("--device", default="cuda", help="cuda, or cpu to try the script without a GPU")
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    p.add_argument("--tag", default="", help="file name suffix (several runs into one --out)")
    args = p.parse_args(argv)

    import torch
    from torch.profiler import ProfilerActivity, profile

    from vidhash.bench.generation import _settings
    from vidhash.pipelines import VidHashPipeline

    gen = _settings({"model": args.model, "model_settings": True}, ["memory.mode=hashed"])
    cuda = args.device.startswith("cuda")
    pipe = VidHashPipeline.load(args.model).to(args.device)
    if args.dtype != "float32":
        pipe.transformer.to(getattr(torch, args.dtype))
    pipe.set_progress_bar_config(disable=True)
    if args.compile:
        pipe.compile_blocks()
    if args.cuda_graphs:
        pipe.enable_cuda_graphs(emulate=not cuda)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    kw = dict(height=gen.height, width=gen.width, chunk_frames=gen.chunk_frames, window_frames=gen.window_frames,
              memory=gen.memory, num_inference_steps=gen.num_inference_steps, action_step=gen.action_step,
              output_type="pt", guidance_scale=gen.guidance_scale, guidance_steps=gen.guidance_steps)
    frames = (args.warm_chunks + args.chunks) * gen.chunk_frames
    stream = pipe.stream(frames, generator=torch.Generator().manual_seed(0), **kw)
    for _ in range(args.warm_chunks):
        next(stream)
    sync()

    marks = []  # per chunk (start, yielded, synced) host perf_counter seconds
    with profile(activities=[ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]) as prof:
        for _ in range(args.chunks):
            t0 = time.perf_counter()
            with torch.profiler.record_function("chunk"):
                next(stream)
                t1 = time.perf_counter()
                sync()
            marks.append((t0, t1, time.perf_counter()))

    events = prof.events()
    chunks = sorted((e for e in events if e.name == "chunk" and e.device_type.name == "CPU"),
                    key=lambda e: e.time_range.start)
    # kernels and copies on the device; not the "chunk" annotation's own device-side range (it spans the
    # chunk's first to last kernel: counted as busy it hid the idle time in this script's first run)
    gpu = [(e.time_range.start, e.time_range.end) for e in events
           if e.device_type.name == "CUDA" and e.name != "chunk" and e.time_range.end > e.time_range.start]
    rows = []
    for (t0, t1, t2), ev in zip(marks, chunks):
        a, b = ev.time_range.start, ev.time_range.end
        busy = _union_ms([(max(x, a), min(y, b)) for x, y in gpu if y > a and x < b])
        rows.append({"wall_ms": 1000 * (t2 - t0), "issue_ms": 1000 * (t1 - t0), "gpu_busy_ms": busy,
                     "gpu_idle_ms": (b - a) / 1000.0 - busy})
    print(f"# {torch.cuda.get_device_name(0) if cuda else 'CPU'}, {args.model}, {args.dtype}, "
          f"{'compiled blocks' if args.compile else 'eager'}{', CUDA graphs' if args.cuda_graphs else ''}, "
          f"chunks {args.warm_chunks}..{args.warm_chunks + args.chunks - 1}, stats {pipe.cuda_graph_stats}")
    print("| chunk | wall ms | host issue ms | GPU busy ms | GPU idle ms |\n|---|---|---|---|---|")
    for i, r in enumerate(rows):
        print(f"| {args.warm_chunks + i} | {r['wall_ms']:.2f} | {r['issue_ms']:.2f} | {r['gpu_busy_ms']:.2f} | "
              f"{r['gpu_idle_ms']:.2f} |")
    ka = prof.key_averages()
    cpu_table = ka.table(sort_by="self_cpu_time_total", row_limit=30)
    gpu_table = ka.table(sort_by="self_cuda_time_total" if hasattr(ka[0], "self_cuda_time_total")
                         else "self_device_time_total", row_limit=25)
    print("\n## host ops by self CPU time (all profiled chunks)\n" + cpu_table)
    print("\n## device time by op\n" + gpu_table)
    os.makedirs(args.out, exist_ok=True)
    tag = f"_{args.tag}" if args.tag else ""
    with open(os.path.join(args.out, f"profile_generation{tag}.json"), "w") as f:
        json.dump({"args": vars(args), "rows": rows, "cpu_table": cpu_table, "gpu_table": gpu_table,
                   "cuda_graph_stats": pipe.cuda_graph_stats}, f, indent=1)
    trace = os.path.join(args.out, f"trace{tag}.json")
    prof.export_chrome_trace(trace)
    with open(trace) as f:
        timeline = trace_summary(json.load(f))
    if timeline:
        print("\n## the device's timeline per chunk (ms; from the trace)\n| chunk | GPU idle before its first op | "
              "busy | idle between ops | idle after | first graph kernel at | graphs' span |\n|---|---|---|---|---|---|---|")
        for i, r in enumerate(timeline):
            first = "-" if r["first_graph_ms"] is None else f"{r['first_graph_ms']:.2f}"
            print(f"| {args.warm_chunks + i} | {r['idle_before_ms']:.2f} | {r['busy_ms']:.2f} | {r['idle_between_ms']:.2f} | "
                  f"{r['idle_after_ms']:.2f} | {first} | {r['graphs_span_ms']:.2f} |")
    with open(os.path.join(args.out, f"profile_generation{tag}.json"), "r+") as f:
        saved = json.load(f)
        saved["timeline"] = timeline
        f.seek(0)
        json.dump(saved, f, indent=1)
        f.truncate()
    with open(trace, "rb") as src, gzip.open(trace + ".gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    os.remove(trace)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
