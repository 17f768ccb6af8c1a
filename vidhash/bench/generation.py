"""Time per generated frame and peak memory against clip length: hashed memory vs full context vs window only.

    vidhash bench generation --preset tiny --seconds 10,60,600 --fps 8 --json generation.json

Each (mode, clip length) runs in its own process, so peak host memory (``ru_maxrss``) and peak
device memory (``torch.cuda.max_memory_allocated``) belong to that run alone. A run builds the
random model of ``--preset``, generates one warm-up chunk on a throwaway state, then streams the
clip (no frames kept, no video written) and times every chunk. Per-frame time is reported over
the FIRST and the LAST 10% of the clip's chunks (at least 3), so a cost that grows with the clip
shows up in the last column instead of being averaged away.

Modes (same model, same seed, same chunk/window settings):

* ``hashed`` — window + per-layer ``HashedMemory`` (fixed size): the method;
* ``full`` — every past frame's K/V kept and attended densely (the growing baseline). It is
  capped at ``--full-max-seconds`` of video (default 60 s); longer rows say "skipped (cap)";
* ``window`` — window only (fixed size, no memory).

The verdict lines check the issue's flatness targets for ``hashed``: per-frame time over the
last chunks of the longest clip within 10% of the shortest clip's, and peak memory within 5%.
Time is judged twice: across processes (the longest clip's last chunks ÷ the shortest clip's,
two processes — on a shared machine one process can run ±20% slower than another), and within
the longest clip's own process (its last chunks ÷ its chunks where the shortest clip ends), which
no other job's load between runs can move; the in-process check is one-sided (only later chunks more
than 10% slower fail; faster is reported as faster). Both ratios go into the JSON (``verdict``).

``--compile`` times ``VidHashPipeline.compile_blocks()`` (``--compile-mode`` passed to
``torch.compile``); compilation happens in the warm-up, which covers window fill and memory writes.
``--cuda-graphs`` times ``VidHashPipeline.enable_cuda_graphs()``: steady chunks replay captured
passes. The timed clip is a new state, so it captures again at its first steady chunk (inside
its first 10%); rows record ``cuda_graphs`` (captures, replays, eager passes).
"""
from __future__ import annotations

import datetime
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from . import cpu_name

MODES = ("hashed", "full", "window")


# ---------------------------------------------------------------------------------- worker


def _worker(spec: dict) -> dict:
    """One clip in this process; returns timings and memory."""
    import torch

    from vidhash.pipelines import VidHashPipeline

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    dtype = getattr(torch, spec["dtype"])
    gen = _settings(spec, [*spec.get("overrides", []), f"memory.mode={spec['mode']}"])
    pipe = VidHashPipeline.load(spec.get("model") or f"random-{spec['preset']}").to(device)
    if dtype != torch.float32:
        pipe.transformer.to(dtype)
    pipe.set_progress_bar_config(disable=True)
    if spec.get("compile"):
        pipe.compile_blocks(**({"mode": spec["compile_mode"]} if spec.get("compile_mode") else {}))
    if spec.get("cuda_graphs"):
        pipe.enable_cuda_graphs()
    kwargs = dict(height=gen.height, width=gen.width, chunk_frames=gen.chunk_frames, window_frames=gen.window_frames,
                  memory=gen.memory, num_inference_steps=spec["steps"] or gen.num_inference_steps,
                  action_step=gen.action_step, output_type="pt", guidance_scale=gen.guidance_scale,
                  guidance_steps=gen.guidance_steps)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    # 1. warm-up on a throwaway state, long enough that frames leave the window (memory writes
    #    and reads on a non-empty memory): kernels, allocator, lookup tables
    warm = gen.window_frames + 2 * gen.chunk_frames
    for _ in pipe.stream(warm, generator=torch.Generator().manual_seed(spec["seed"] + 1), **kwargs):
        pass
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss_after_warmup = _rss_now()
    # 2. the clip, timed per chunk; on a GPU its clock, temperature, power and clock-event reasons
    #    after every chunk (NVML, outside the timed interval)
    from .nvml import GpuClocks

    clocks = GpuClocks.for_torch_device(device) if device.type == "cuda" else None
    graphs = pipe.pass_graphs  # with CUDA graphs: the GPU time of each chunk's replays (timing events)
    if graphs is not None:
        graphs.time_replays()
    times, frames, samples, in_graphs = [], [], [], []
    start = graphs.new_event() if graphs is not None else None  # where each chunk began, on the GPU's clock
    t0 = time.perf_counter()
    if start is not None:
        start.record()
    state = None
    for chunk in pipe.stream(spec["frames"], generator=torch.Generator().manual_seed(spec["seed"]), **kwargs):
        sync()
        t1 = time.perf_counter()
        times.append(t1 - t0)
        frames.append(chunk.frames.shape[1])
        state = chunk.state
        if clocks is not None:
            samples.append(clocks.sample())
        if graphs is not None:
            lead = graphs.lead_ms(start)  # before replay_ms, which clears the replays' events
            replays = graphs.replay_ms()
            in_graphs.append([sum(replays), len(replays), lead])
        t1 = time.perf_counter()
        t0 = t1
        if start is not None:
            start = graphs.new_event()
            start.record()
    return {
        **spec,
        "chunk_seconds": times, "chunk_frames": frames,
        "gpu_samples": samples if clocks is not None else None,  # per chunk [SM MHz, °C, W, reason mask]
        # per chunk [GPU ms inside replays, replays, ms from the chunk's start to its first replay (None: no replay)]
        "graph_replays": in_graphs if graphs is not None else None,
        "state_bytes": state.nbytes,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "rss_after_warmup_bytes": rss_after_warmup,
        "peak_device_bytes": torch.cuda.max_memory_allocated() if device.type == "cuda" else None,
        "torch_threads": torch.get_num_threads(),
        "memory_config": {k: getattr(gen.memory, k) for k in ("num_buckets", "slots", "n_bits", "top_k", "policy", "mass_cap",
                                                                    "select")},
        "chunk": gen.chunk_frames, "window": gen.window_frames, "height": gen.height, "width": gen.width,
        "steps_used": kwargs["num_inference_steps"],
        "cuda_graph_stats": pipe.cuda_graph_stats,
    }


def _settings(spec: dict, overrides: list[str]):
    """The generation settings of a run: ``--preset``'s when given, else the ``--model``'s own
    (its saved settings, else its size's preset: what ``vidhash generate`` uses), with ``overrides``."""
    from vidhash.config import apply_overrides, generation_for, generation_preset

    base = generation_for(spec["model"]) if spec.get("model_settings") else generation_preset(spec["preset"])
    return apply_overrides(base, overrides)


def check_overrides(overrides: list[str]) -> None:
    """``--set`` items the rows would not run with: ``memory.mode`` (each row's mode is ``--modes``'s,
    set after the overrides) and a whole ``memory=…`` section; ValueError naming ``--set`` and what to give."""
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key == "memory.mode":
            raise ValueError(f"--set {item}: each row runs the mode --modes names (hashed, full, window); "
                             "give --modes instead")
        if key == "memory":
            raise ValueError(f"--set {item}: set the memory's fields one by one (e.g. --set memory.top_k=64)")


def _rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# ---------------------------------------------------------------------------------- driver


def _per_frame_ms(row: dict) -> list[float]:
    return [1000 * t / f for t, f in zip(row["chunk_seconds"], row["chunk_frames"])]


def _edge_ms_per_frame(row: dict, last: bool) -> float:
    """Median ms per frame over the first or last 10% of the chunks (at least 5): the median
    keeps one scheduler hiccup on a shared machine from moving the number."""
    start, stop = _edge_chunks(row, last)
    return statistics.median(_per_frame_ms(row)[start:stop])


def _chunks_at_ms_per_frame(row: dict, chunks: int) -> tuple[float, int, int]:
    """``(median ms per frame, start, stop)`` over the chunks of ``row`` that end where a clip of
    ``chunks`` chunks ends: as many as :func:`_edge_ms_per_frame` takes from that clip's end (10%,
    at least 5), i.e. chunks ``[stop − k, stop)`` with ``stop = max(chunks, k)`` (within the row)."""
    per_frame = _per_frame_ms(row)
    k = min(len(per_frame), max(5, chunks // 10))
    stop = min(len(per_frame), max(chunks, k))
    start = max(0, stop - k)
    return statistics.median(per_frame[start:stop]), start, stop


def _sm_mhz(row: dict, start: int, stop: int) -> float | None:
    """Median SM clock (MHz) over chunks ``[start, stop)`` of ``row``; None without samples."""
    got = [s[0] for s in (row.get("gpu_samples") or [])[start:stop] if s and s[0]]
    return statistics.median(got) if got else None


def _edge_chunks(row: dict, last: bool) -> tuple[int, int]:
    """The first or last 10% of ``row``'s chunks (at least 5): ``[start, stop)``."""
    n = len(row["chunk_seconds"])
    k = min(n, max(5, n // 10))
    return (n - k, n) if last else (0, k)


def _world_speed(seconds: float = 1.0) -> float:
    """Procedural world frames per second on this thread (64×64, trajectory + render)."""
    from vidhash.data.world import ProceduralWorld, RandomTrajectory

    world = ProceduralWorld(seed=0)
    traj = RandomTrajectory(world.size, seed=0)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        _, poses = traj.take(256)
        world.render_many(poses)
        n += 256
    return n / (time.perf_counter() - t0)


def run(args) -> int:
    import torch

    from vidhash.config import preset_for_model

    if args.compile_mode is not None and not args.compile:
        raise ValueError("--compile-mode sets how --compile compiles: add --compile, or leave --compile-mode out")
    short = [s for s in args.seconds.split(",") if s.strip() and round(float(s) * args.fps) < 1]
    if short:  # (before any model loads: the worker would fail on a clip of 0 frames)
        raise ValueError(f"--seconds {short[0]} at --fps {args.fps} is less than one frame; give at least {1 / args.fps:g} s")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.cuda_graphs and not device.startswith("cuda"):
        raise ValueError(f"--cuda-graphs replays CUDA graphs: it needs a CUDA device, not {device}")
    model_settings = args.preset is None and bool(args.model)  # a model without --preset: its own settings
    if args.preset is None:
        args.preset = preset_for_model(args.model) if args.model else "tiny"
    check_overrides(args.set)
    _settings({"model": args.model, "preset": args.preset, "model_settings": model_settings},
              [*args.set, "memory.mode=hashed"])  # a bad key fails here, not in every worker
    if args.model:
        from vidhash.pipelines import VidHashPipeline

        VidHashPipeline.load(args.model)  # a clear error before any run
    lengths = [float(s) for s in args.seconds.split(",") if s]
    modes = [m for m in args.modes.split(",") if m]
    bad = [m for m in modes if m not in MODES]
    if not modes:
        raise ValueError(f"--modes lists no mode; known: {', '.join(MODES)}")
    if bad:
        raise ValueError(f"unknown modes {bad}; known: {', '.join(MODES)}")
    if not lengths or min(lengths) <= 0:
        raise ValueError(f"--seconds must list positive clip lengths, got {args.seconds!r}")
    dev_name = torch.cuda.get_device_name() if device.startswith("cuda") else cpu_name()
    print(f"# vidhash bench generation — {dev_name}, {args.model or 'random model'}, preset {args.preset}"
          f"{' ' + ' '.join(args.set) if args.set else ''}, {args.fps} fps, {args.dtype}, "
          f"{'compiled blocks' + (f' ({args.compile_mode})' if args.compile_mode else '') if args.compile else 'eager'}"
          f"{', CUDA graphs' if args.cuda_graphs else ''}, "
          f"{datetime.date.today().isoformat()}", flush=True)
    world_fps = _world_speed()
    print(f"procedural world (64×64, one thread): {world_fps:,.0f} frames/s", flush=True)
    rows = []
    for mode in modes:
        for seconds in lengths:
            frames = int(round(seconds * args.fps))
            if mode == "full" and seconds > args.full_max_seconds:
                rows.append({"mode": mode, "seconds": seconds, "frames": frames, "skipped": "cap"})
                print(f"{mode:>6} {seconds:>6g} s: skipped (cap {args.full_max_seconds:g} s)", flush=True)
                continue
            spec = {"mode": mode, "seconds": seconds, "frames": frames, "preset": args.preset, "steps": args.steps,
                    "model": args.model, "model_settings": model_settings, "overrides": list(args.set),
                    "device": device, "dtype": args.dtype, "threads": args.threads, "seed": args.seed,
                    "compile": bool(args.compile), "compile_mode": args.compile_mode,
                    "cuda_graphs": bool(args.cuda_graphs)}
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "vidhash.bench.generation", "--worker", json.dumps(spec)],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                err = (proc.stderr.strip().splitlines() or ["?"])[-1]
                rows.append({**spec, "skipped": f"failed: {err}"})
                print(f"{mode:>6} {seconds:>6g} s: failed ({err})", flush=True)
                continue
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            row["wall_seconds"] = time.perf_counter() - t0
            rows.append(row)
            f_first, f_last = (_sm_mhz(row, *_edge_chunks(row, e)) for e in (False, True))
            clock = f", SM clock {f_first:.0f} → {f_last:.0f} MHz" if f_first and f_last else ""
            print(f"{mode:>6} {seconds:>6g} s: {_edge_ms_per_frame(row, False):.1f} → {_edge_ms_per_frame(row, True):.1f} "
                  f"ms/frame, peak RSS {row['peak_rss_bytes'] / 2**20:.0f} MiB, state {row['state_bytes'] / 2**20:.1f} MiB"
                  f"{clock}", flush=True)
    print()
    print(table(rows, device))
    print()
    for line in verdict(rows):
        print(line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": dev_name, "world_fps": world_fps, "dtype": args.dtype, "compile": bool(args.compile),
                       "compile_mode": args.compile_mode, "cuda_graphs": bool(args.cuda_graphs), "verdict": time_flatness(rows), "rows": rows}, f)
    failed = sum(str(r.get("skipped", "")).startswith("failed") for r in rows)
    if failed:
        print(f"vidhash bench generation: {failed} of {len(rows)} rows failed", file=sys.stderr)
    return 1 if failed else 0


def table(rows: list[dict], device: str) -> str:
    """Markdown table; ratios against the hashed row of the same clip length."""
    dev = device.startswith("cuda")
    head = ("| mode | clip | frames | ms/frame first 10% | ms/frame last 10% | last ÷ first | last ÷ hashed | "
            f"peak RSS MiB | RSS growth MiB |{' peak device MiB |' if dev else ''} state MiB |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    hashed_last = {r["seconds"]: _edge_ms_per_frame(r, True) for r in rows if r["mode"] == "hashed" and "skipped" not in r}
    for r in rows:
        clip = f"{r['seconds']:g} s"
        if "skipped" in r:
            cells = ["—"] * (8 + dev)
            cells[0] = "skipped (cap)" if r["skipped"] == "cap" else r["skipped"]
            lines.append(f"| {r['mode']} | {clip} | {r['frames']:,} | " + " | ".join(cells) + " |")
            continue
        first, last = _edge_ms_per_frame(r, False), _edge_ms_per_frame(r, True)
        ref = hashed_last.get(r["seconds"])
        ratio = f"{last / ref:.2f}×" if ref else "—"
        cells = [f"{first:.1f}", f"{last:.1f}", f"{last / first:.2f}", ratio,
                 f"{r['peak_rss_bytes'] / 2**20:.0f}", f"{(r['peak_rss_bytes'] - r['rss_after_warmup_bytes']) / 2**20:.0f}"]
        if dev:
            cells.append(f"{r['peak_device_bytes'] / 2**20:.0f}")
        cells.append(f"{r['state_bytes'] / 2**20:.2f}")
        lines.append(f"| {r['mode']} | {clip} | {r['frames']:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def time_flatness(rows: list[dict]) -> dict | None:
    """Per-frame time flatness of the ``hashed`` rows, two ways (None without two hashed rows):

    * ``cross_process_ratio``: the longest clip's last chunks ÷ the shortest clip's last chunks
      (two processes: host load that differs between them moves it);
    * ``in_process_ratio``: the longest clip's last chunks ÷ its own chunks where the shortest
      clip ends (``in_process_chunks`` = ``[start, stop)``), one process."""
    hashed = sorted((r for r in rows if r["mode"] == "hashed" and "skipped" not in r), key=lambda r: r["seconds"])
    if len(hashed) < 2:
        return None
    short, long = hashed[0], hashed[-1]
    long_last = _edge_ms_per_frame(long, True)
    at_short, start, stop = _chunks_at_ms_per_frame(long, len(short["chunk_seconds"]))
    out = {
        "short_seconds": short["seconds"], "long_seconds": long["seconds"],
        "long_last_ms_per_frame": long_last, "short_last_ms_per_frame": _edge_ms_per_frame(short, True),
        "cross_process_ratio": long_last / _edge_ms_per_frame(short, True),
        "long_at_short_end_ms_per_frame": at_short, "in_process_chunks": [start, stop],
        "in_process_ratio": long_last / at_short,
    }
    last = _edge_chunks(long, True)
    f_at, f_last = _sm_mhz(long, start, stop), _sm_mhz(long, *last)
    for name, (a, b) in (("at_short_end", (start, stop)), ("last", last)):
        split = graph_split(long, a, b)
        if split:
            out[f"long_{name}_graphs"] = split
    spread = graph_spread(long)
    if spread:
        out["long_spread_ms"] = spread
    if f_at and f_last:  # time × clock = cycles: the in-process ratio had the clock stayed where it was (as far
        # as time scales with 1 / clock: work bound by DRAM would slow less than the clock fell)
        out.update(long_at_short_end_sm_mhz=f_at, long_last_sm_mhz=f_last, in_process_cycles_ratio=long_last * f_last / (at_short * f_at))
    return out


def _steady_graph_chunks(row: dict, start: int, stop: int) -> list[tuple[float, float, float | None]]:
    """``(wall ms, GPU ms inside the replays, ms from the chunk's start to its first replay)`` of chunks
    ``[start, stop)`` that replayed graphs; the third is None for runs before 2026-12-06 (twenty-fourth
    session), whose ``graph_replays`` entries have two items."""
    g = row.get("graph_replays") or []
    return [(row["chunk_seconds"][i] * 1000.0, g[i][0], g[i][2] if len(g[i]) > 2 else None)
            for i in range(start, min(stop, len(g))) if g[i] and g[i][1]]


def graph_split(row: dict, start: int, stop: int) -> dict | None:
    """Medians over chunks ``[start, stop)`` of the wall ms a chunk and the GPU ms inside its graph
    replays (``--cuda-graphs``: timing events around each replay); None without them."""
    got = _steady_graph_chunks(row, start, stop)
    if not got:
        return None
    out = {"wall_ms": statistics.median(w for w, _, _ in got), "graphs_ms": statistics.median(g for _, g, _ in got),
           "outside_ms": statistics.median(w - g for w, g, _ in got)}
    leads = [lead for _, _, lead in got if lead is not None]
    if leads:  # of the time outside: the GPU's wait for the chunk's first pass (the host preparing it)
        out["lead_ms"] = statistics.median(leads)
    return out


def graph_spread(row: dict) -> dict | None:
    """How much chunks differ from one another after the first 10 % (p90 − p10, ms a chunk): the wall
    time, the GPU time inside the replays and the rest (host, eager launches, the sync). A wander that
    is in the wall time but not inside the graphs is outside them."""
    got = _steady_graph_chunks(row, _edge_chunks(row, False)[1], len(row["chunk_seconds"]))
    if len(got) < 10:
        return None

    def p90_p10(xs):
        q = statistics.quantiles(xs, n=10)
        return q[-1] - q[0]

    return {"chunks": len(got), "wall": p90_p10([w for w, _, _ in got]), "graphs": p90_p10([g for _, g, _ in got]),
            "outside": p90_p10([w - g for w, g, _ in got])}


def _later_cost(ratio: float, limit: float = 0.10) -> str:
    """One-sided: the target is that later frames cost no more, so only ``ratio > 1 + limit`` fails;
    later frames that run faster are reported as faster, not as a miss."""
    if ratio > 1 + limit:
        return f"NOT within {limit:.0%}: later frames slower"
    return "later frames faster: ok" if ratio < 1 else f"within {limit:.0%}"


def verdict(rows: list[dict]) -> list[str]:
    hashed = sorted((r for r in rows if r["mode"] == "hashed" and "skipped" not in r), key=lambda r: r["seconds"])
    if len(hashed) < 2:
        return ["flatness: needs hashed rows at two clip lengths"]
    short, long = hashed[0], hashed[-1]
    flat = time_flatness(rows)
    t_ratio, in_ratio = flat["cross_process_ratio"], flat["in_process_ratio"]
    start, stop = flat["in_process_chunks"]
    m_ratio = long["peak_rss_bytes"] / short["peak_rss_bytes"]
    out = [
        f"hashed, per-frame time, cross-process (last chunks of the {long['seconds']:g} s run ÷ last chunks of the "
        f"{short['seconds']:g} s run): {t_ratio:.3f} ({'within' if abs(t_ratio - 1) <= 0.10 else 'NOT within'} 10%)",
        f"hashed, per-frame time, in-process (the {long['seconds']:g} s run: last chunks ÷ its chunks {start}-{stop - 1}, "
        f"where {short['seconds']:g} s ends): {in_ratio:.3f} ({_later_cost(in_ratio)})",
        f"hashed, peak host RSS {long['seconds']:g} s ÷ {short['seconds']:g} s: {m_ratio:.3f} "
        f"({'grew more than' if m_ratio > 1.05 else 'no growth over'} 5%)",  # a smaller peak is no failure
        f"hashed, state bytes {long['state_bytes']:,} vs {short['state_bytes']:,} "
        f"({'equal' if long['state_bytes'] == short['state_bytes'] else 'DIFFERENT'})",
    ]
    if "in_process_cycles_ratio" in flat:
        from .nvml import reasons

        # the reasons over the last chunks' samples; gpu_idle left out: each sample follows a synchronize
        last0, last1 = _edge_chunks(long, True)
        seen = sorted({r for smp in long["gpu_samples"][last0:last1] if smp for r in reasons(smp[3]) if r != "gpu_idle"})
        out.append(f"hashed, SM clock of the {long['seconds']:g} s run: {flat['long_at_short_end_sm_mhz']:.0f} MHz at chunks "
                   f"{start}-{stop - 1}, {flat['long_last_sm_mhz']:.0f} MHz at its last chunks (clock-event reasons there: "
                   f"{', '.join(seen) or 'none'}); in-process ratio at equal clock (cycles): {flat['in_process_cycles_ratio']:.3f}")
    if "long_last_graphs" in flat:
        a, b = flat.get("long_at_short_end_graphs"), flat["long_last_graphs"]
        at = f"{a['graphs_ms']:.1f} of {a['wall_ms']:.1f} ms a chunk at chunks {start}-{stop - 1}, " if a else ""
        line = (f"hashed, GPU time inside the CUDA graphs' replays in the {long['seconds']:g} s run: {at}"
                f"{b['graphs_ms']:.1f} of {b['wall_ms']:.1f} at its last chunks")
        if "lead_ms" in b:
            line += f" (of the rest, {b['lead_ms']:.2f} ms from a chunk's start to its first pass)"
        if "long_spread_ms" in flat:
            sp = flat["long_spread_ms"]
            line += (f"; chunk-to-chunk spread (p90 − p10 of {sp['chunks']} chunks): wall {sp['wall']:.2f} ms, "
                     f"inside the graphs {sp['graphs']:.2f}, outside them {sp['outside']:.2f}")
        out.append(line)
    if long.get("peak_device_bytes") is not None:
        d_ratio = long["peak_device_bytes"] / short["peak_device_bytes"]
        out.append(f"hashed, peak device memory ratio: {d_ratio:.3f} ({'within' if abs(d_ratio - 1) <= 0.05 else 'NOT within'} 5%)")
    return out


if __name__ == "__main__":  # one clip of a run: python -m vidhash.bench.generation --worker SPEC
    if len(sys.argv) != 3 or sys.argv[1] != "--worker":
        sys.exit("usage: python -m vidhash.bench.generation --worker SPEC (internal; the command is `vidhash bench generation`)")
    print(json.dumps(_worker(json.loads(sys.argv[2]))))
