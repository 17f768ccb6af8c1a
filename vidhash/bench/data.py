"""Training data throughput: the trainer's DataLoader for P processes × W workers, with and without
the shared world cache (``data.world_cache``), no GPU.

    vidhash bench data configs/train/world_tiny.yaml --processes 2 --workers 12 --steps 96 --cache off,auto

Each variant starts P processes at once (rank r of P reads the same global index stream as
training rank r: ``IndexBatches``), each with W DataLoader workers and a fresh world-cache folder.
A process takes ``--steps`` batches of ``batch_size / P`` samples; after each it "computes" for
``--consumer-ms`` (sleep: a stand-in for the GPU step, 0 = drain as fast as possible) and
records how long it waited for the batch. Rows: samples/s over all processes (after the first
batch: worker start-up), wait per batch (median, p99, max, total) and the worlds built per
process (all workers), which is what the cache removes: without it every worker of every
process builds every world of the pool at each block boundary.
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import cpu_name


def _worker(spec: dict) -> dict:
    import torch

    from vidhash.training.recipes import load_train_config
    from vidhash.training.data import IndexBatches, TrainSamples

    torch.set_num_threads(1)
    cfg = load_train_config(spec["config"], spec["overrides"])
    ds = TrainSamples(cfg)
    ds.build_counter = torch.multiprocessing.get_context("fork").Value("i", 0)  # shared with forked workers
    loader = torch.utils.data.DataLoader(
        ds, batch_sampler=IndexBatches(0, cfg.batch_size, 1, spec["processes"], spec["rank"]),
        num_workers=spec["workers"], prefetch_factor=cfg.data.prefetch_factor if spec["workers"] else None,
        multiprocessing_context="fork" if spec["workers"] else None)
    waits, t_first = [], None
    it = iter(loader)
    for step in range(spec["steps"]):
        t0 = time.perf_counter()
        batch = next(it)
        waits.append(time.perf_counter() - t0)
        if step == 0:
            t_first = time.perf_counter()
        if spec["consumer_ms"]:
            time.sleep(spec["consumer_ms"] / 1000.0)
    wall = time.perf_counter() - t_first
    n = len(batch["frames"])
    built = ds.build_counter.value
    return {"rank": spec["rank"], "samples_per_s": n * (spec["steps"] - 1) / max(wall, 1e-9), "waits_s": waits[1:],
            "first_batch_s": waits[0], "worlds_built": built, "batch": n}


def run(args) -> int:
    from vidhash.training.recipes import load_train_config

    if "=" in args.config:  # `vidhash bench data key=value`: an override, the default config
        args.overrides, args.config = [args.config, *args.overrides], "world_tiny"
    cfg = load_train_config(args.config, list(args.overrides))  # a bad key fails here
    workers = cfg.data.num_workers if args.workers is None else args.workers
    if args.steps < 2:
        raise ValueError(f"--steps must be at least 2 (the first batch is not timed), got {args.steps}")
    if cfg.batch_size % args.processes:
        raise ValueError(f"batch_size {cfg.batch_size} does not split over {args.processes} processes")
    print(f"# vidhash bench data — {cpu_name()}, {args.config}, {args.processes} process(es) × {workers} worker(s), "
          f"batch {cfg.batch_size} ({cfg.batch_size // args.processes} per process), {args.steps} steps, "
          f"consumer {args.consumer_ms:g} ms/step; block = {cfg.data.pool_size * cfg.data.clips_per_world} samples", flush=True)
    rows = []
    for mode in [m for m in args.cache.split(",") if m]:
        with tempfile.TemporaryDirectory() as tmp:
            setting = "off" if mode == "off" else str(Path(tmp) / "worlds")  # "auto": a fresh folder, not a warm one
            specs = [{"config": args.config, "overrides": [*args.overrides, f"data.world_cache={setting}"],
                      "processes": args.processes, "rank": r, "workers": workers, "steps": args.steps,
                      "consumer_ms": args.consumer_ms} for r in range(args.processes)]
            procs = [subprocess.Popen([sys.executable, "-m", "vidhash.bench.data", "--worker", json.dumps(s)],
                                      stdout=subprocess.PIPE, text=True) for s in specs]
            outs = [p.communicate()[0] for p in procs]
            if any(p.returncode for p in procs):
                raise RuntimeError(f"a data process failed (cache {mode})")
        res = [json.loads(o.strip().splitlines()[-1]) for o in outs]
        waits = sorted(w for r in res for w in r["waits_s"])
        row = {"cache": mode, "samples_per_s": sum(r["samples_per_s"] for r in res),
               "wait_median_ms": 1000 * statistics.median(waits), "wait_p99_ms": 1000 * waits[int(0.99 * (len(waits) - 1))],
               "wait_max_ms": 1000 * waits[-1], "wait_total_s": sum(waits) / len(res),
               "worlds_built_per_process": statistics.mean(r["worlds_built"] for r in res), "per_process": res}
        rows.append(row)
    print("| world cache | samples/s | wait median ms | p99 ms | max ms | wait total s (per process) | worlds built per process |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['cache']} | {r['samples_per_s']:.0f} | {r['wait_median_ms']:.1f} | {r['wait_p99_ms']:.1f} | "
              f"{r['wait_max_ms']:.0f} | {r['wait_total_s']:.1f} | {r['worlds_built_per_process']:.0f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cpu": cpu_name(), "config": args.config, "overrides": list(args.overrides),
                       "processes": args.processes, "workers": workers, "steps": args.steps,
                       "consumer_ms": args.consumer_ms, "rows": rows}, f)
    return 0


if __name__ == "__main__":  # one process of a run: python -m vidhash.bench.data --worker SPEC
    if len(sys.argv) != 3 or sys.argv[1] != "--worker":
        sys.exit("usage: python -m vidhash.bench.data --worker SPEC (internal; the command is `vidhash bench data`)")
    print(json.dumps(_worker(json.loads(sys.argv[2]))))
