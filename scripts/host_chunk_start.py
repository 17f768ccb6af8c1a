"""Host time at a chunk's start, on a CPU: from asking the pipeline for a chunk to its first pass.

On a GPU a chunk ends with a synchronize (its frames copied to the host), so whatever the host does
before the next chunk's first launch leaves the GPU idle: the camera path, the noise, the
scheduler's schedule, the context, the CUDA graphs' key. ``scripts/gpu/profile_generation.py``
showed ~3 ms of it a chunk on an H100 (under the profiler), about a fifth of a compiled chunk.
This script measures that stretch of host work without a GPU: the shipped model's steady chunks
with emulated CUDA graphs whose replays do nothing and memory writes that do nothing (the GPU's
work), timing from ``next(stream)`` to the first replay.

    python scripts/host_chunk_start.py [--model models/world-tiny-v3] [--chunks 50]
"""
from __future__ import annotations

import argparse
import statistics
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="models/world-tiny-v3")
    p.add_argument("--chunks", type=int, default=50, help="chunks timed (after 6 to fill the window)")
    args = p.parse_args(argv)
    if args.chunks < 1:
        p.error(f"--chunks must be at least 1, got {args.chunks}")

    import torch

    import vidhash.memory as memory_module
    from vidhash.bench.generation import _settings
    from vidhash.pipelines import VidHashPipeline
    from vidhash.pipelines import cuda_graphs as graphs_module

    try:
        gen = _settings({"model": args.model, "model_settings": True}, ["memory.mode=hashed"])
        pipe = VidHashPipeline.load(args.model)
    except (ValueError, OSError) as e:
        p.error(f"--model: {e}")
    pipe.set_progress_bar_config(disable=True)
    pipe.enable_cuda_graphs(emulate=True)
    kw = dict(height=gen.height, width=gen.width, chunk_frames=gen.chunk_frames, window_frames=gen.window_frames,
              memory=gen.memory, num_inference_steps=gen.num_inference_steps, action_step=gen.action_step,
              output_type="pt", guidance_scale=gen.guidance_scale, guidance_steps=gen.guidance_steps)
    warm = 6
    stream = pipe.stream((warm + args.chunks) * gen.chunk_frames + gen.window_frames,
                         generator=torch.Generator().manual_seed(0), **kw)
    for _ in range(warm):  # the window fills, the graphs are "captured"
        next(stream)

    first: list[float] = []
    run = graphs_module.PassGraphs._run

    def timed_run(self, kind):
        if not first:
            first.append(time.perf_counter())
        return run(self, kind)

    saved = (graphs_module.PassGraphs._run, graphs_module._Emulated.replay, memory_module.HashedMemory.write)
    graphs_module.PassGraphs._run = timed_run
    graphs_module._Emulated.replay = lambda self: None  # the GPU's work: nothing on the host
    memory_module.HashedMemory.write = lambda self, *a, **k: None
    ms = []
    try:
        for _ in range(args.chunks):
            first.clear()
            t0 = time.perf_counter()
            next(stream)
            ms.append(1000 * (first[0] - t0))
    finally:  # the classes as they were (a test imports this script)
        graphs_module.PassGraphs._run, graphs_module._Emulated.replay, memory_module.HashedMemory.write = saved
        stream.close()
    ms.sort()
    print(f"{args.model}: host time from a chunk's request to its first pass, {args.chunks} chunks, "
          f"{torch.get_num_threads()} threads: median {statistics.median(ms):.3f} ms, "
          f"p10 {ms[len(ms) // 10]:.3f}, p90 {ms[(9 * len(ms)) // 10]:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
