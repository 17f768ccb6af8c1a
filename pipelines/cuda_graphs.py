"""CUDA graphs of the transformer passes of a chunk (``VidHashPipeline.enable_cuda_graphs``).

A tiny model at 64×64 leaves the GPU idle: a pass is ~1,000 small kernels and costs what the
host spends launching them (docs/speed.md). Once a clip is in its steady state — window full,
a whole chunk — every pass has the same shapes and reads the same buffers (the window cache
and the memories are preallocated and updated in place), so each kind of pass is captured once
as a CUDA graph and replayed:

* ``denoise``: ``transformer(latents, t, actions, poses, context).sample`` (one per step);
* ``free``: the same without a context (context guidance: one per guided step);
* ``commit``: the clean pass that returns the chunk's K/V (1 per chunk).

Inputs are copied into the graph's static buffers before a replay; outputs live in the graph's
pool and are consumed at once (the scheduler step; ``state.push``). The scheduler step, the
noise, the window push and the memory write stay eager (a few dozen launches per chunk).

A graph is keyed on everything its replay depends on: shapes and dtypes, the addresses of the
window cache, of every memory buffer and of the transformer's parameters, and the read width.
A new state, a moved model or another size recaptures. Frames equal eager generation bitwise:
the replay runs the captured kernels on the same inputs. A capture that fails (an op that
syncs, say) warns once and generation continues eagerly.

``emulate=True`` (tests on CPU) keeps every step — static buffers, keys, recapture, copies of
outputs — but "replays" by calling the pass again, so the plumbing is tested without a GPU.
"""
from __future__ import annotations

import time
import warnings

import torch


def use_cuda_graphs(setting: bool | None, device) -> bool:
    """A command's ``--cuda-graphs`` / ``--no-cuda-graphs`` (None: neither) on ``device``: on for a
    CUDA device unless turned off; asking for them elsewhere is a ValueError."""
    cuda = torch.device(device).type == "cuda"
    if setting and not cuda:
        raise ValueError(f"--cuda-graphs needs a CUDA device, got {device}")
    return cuda if setting is None else bool(setting)


class _Emulated:
    """CPU stand-in for ``torch.cuda.CUDAGraph``: replay calls the pass and copies its result into
    the static outputs (what a real replay leaves there)."""

    def __init__(self, fn, out):
        self.fn, self.out = fn, out

    def replay(self):
        _copy_into(self.out, self.fn())


class _HostEvent:
    """CPU stand-in for a timing ``torch.cuda.Event`` (emulated graphs): the host clock at ``record``."""

    def __init__(self):
        self.t = None

    def record(self):
        self.t = time.perf_counter()

    def elapsed_time(self, end: _HostEvent) -> float:
        return (end.t - self.t) * 1000.0


def _copy_into(dst, src):
    if torch.is_tensor(dst):
        dst.copy_(src)
        return
    for d, s in zip(dst, src):
        _copy_into(d, s)


class PassGraphs:
    """Captured passes of one transformer; see the module docstring."""

    def __init__(self, transformer, emulate: bool = False):
        self.transformer = transformer
        self.emulate = emulate
        self.captures = 0  # graphs captured
        self.replays = 0  # passes run as a replay
        self.eager_passes = 0  # passes run eagerly (not steady, or capture failed): count_eager()
        self.failed: str | None = None  # why capture failed (then everything runs eagerly)
        self._key = None  # what the captured graphs depend on (see _make_key)
        self._static: dict[str, torch.Tensor] = {}
        self._graphs: dict[str, tuple] = {}
        self._context = None
        self._active = False
        self._timed: list | None = None  # event pairs around replays (time_replays)
        self._params: tuple | None = None  # the transformer's parameters, listed once per call (new_call)

    # ------------------------------------------------------------------ per call, per chunk
    def new_call(self) -> None:
        """A pipeline call begins: list the transformer's parameters once for the call's chunks (walking
        the modules costs ~0.2 ms of host time a chunk, while the GPU waits at a chunk's start). Their
        addresses are still read at every chunk, so a model moved between chunks captures again."""
        self._params = tuple(self.transformer.parameters())

    def steady(self, state, c: int, chunk_frames: int) -> bool:
        """True when this chunk can replay: a whole chunk against a full window (fixed shapes)."""
        return (self.failed is None and state.mode != "full" and c == chunk_frames
                and state.window_filled == state.window_frames)

    def begin_chunk(self, state, context, c: int, chunk_frames: int, act: torch.Tensor, pos: torch.Tensor,
                    latents: torch.Tensor) -> bool:
        """Prepare the chunk's passes; True if they replay graphs (else the caller runs them eagerly)."""
        self._active = self.steady(state, c, chunk_frames)
        if not self._active:
            return False
        key = self._make_key(state, context, act, pos, latents)
        if key != self._key:  # another state, size, device or read: capture again
            self._graphs.clear()
            self._static = {"latents": latents.clone(), "t": torch.zeros(latents.shape[:2], dtype=latents.dtype,
                                                                          device=latents.device),
                            "zero": torch.zeros(latents.shape[:2], dtype=latents.dtype, device=latents.device),
                            "act": act.clone(), "pos": pos.clone()}
            self._key, self._context = key, context
        self._static["act"].copy_(act)
        self._static["pos"].copy_(pos)
        return True

    def _make_key(self, state, context, act, pos, latents) -> tuple:
        ptrs = []
        for ctx in context:
            ptrs += [0 if ctx.k is None else ctx.k.data_ptr(), 0 if ctx.v is None else ctx.v.data_ptr(), ctx.read]
            if ctx.memory is not None:
                ptrs += [b.data_ptr() for b in ctx.memory.buffers()]
                hasher = ctx.memory.hasher
                ptrs += [id(hasher)]
        params = tuple(p.data_ptr() for p in (self._params if self._params is not None
                                               else self.transformer.parameters()))
        return (id(state), tuple(latents.shape), latents.dtype, latents.device, tuple(act.shape), act.dtype,
                tuple(pos.shape), pos.dtype, tuple(ptrs), params, torch.is_autocast_enabled())

    def release(self) -> None:
        """Drop the captured graphs, their static buffers and the context they were captured with
        (which keeps the last clip's window and memories alive); the next steady chunk captures again."""
        self._graphs.clear()
        self._static = {}
        self._key = self._context = None

    # ------------------------------------------------------------------ passes
    def denoise(self, latents: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Velocity of ``latents`` at timesteps ``t`` ``(1, c)`` (a buffer of the graph: consume it
        before the next denoise pass)."""
        self._static["latents"].copy_(latents)
        self._static["t"].copy_(t)
        return self._run("denoise")

    def free(self, latents: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Velocity of ``latents`` at ``t`` with no window and no memory (context guidance); a buffer
        of its own graph, distinct from ``denoise``'s."""
        self._static["latents"].copy_(latents)
        self._static["t"].copy_(t)
        return self._run("free")

    def commit(self, latents: torch.Tensor) -> list:
        """The clean pass's per-layer K/V (buffers of the graph: consume them before the next commit)."""
        self._static["latents"].copy_(latents)
        return self._run("commit")

    def _forward(self, kind: str):
        s = self._static
        if kind == "denoise":
            return self.transformer(s["latents"], s["t"], s["act"], s["pos"], context=self._context).sample
        if kind == "free":
            return self.transformer(s["latents"], s["t"], s["act"], s["pos"]).sample
        return self.transformer(s["latents"], s["zero"], s["act"], s["pos"], context=self._context,
                                return_kv=True).kv

    def _run(self, kind: str):
        if self.failed is not None:  # an earlier capture failed in this chunk: the rest runs eagerly
            self.eager_passes += 1
            return self._forward(kind)
        if kind not in self._graphs:
            try:
                self._graphs[kind] = self._capture(kind)
            except Exception as e:  # noqa: BLE001 - any capture failure: generate eagerly instead
                self.failed = f"{type(e).__name__}: {e}"
                self._graphs.clear()
                warnings.warn(f"CUDA graph capture of the {kind} pass failed ({self.failed}); generating eagerly",
                              RuntimeWarning, stacklevel=3)
                self.eager_passes += 1
                return self._forward(kind)
        graph, out = self._graphs[kind]
        if self._timed is None:
            graph.replay()
        else:
            a, b = self.new_event(), self.new_event()
            a.record()
            graph.replay()
            b.record()
            self._timed.append((a, b))
        self.replays += 1
        return out

    def _capture(self, kind: str):
        self.captures += 1
        if self.emulate:
            out = self._forward(kind)
            out = out.clone() if torch.is_tensor(out) else [tuple(x.clone() for x in kv) for kv in out]
            return _Emulated(lambda: self._forward(kind), out), out
        # warm up on a side stream (lazy inits, compiled variants), then capture
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            self._forward(kind)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self._forward(kind)
        return graph, out

    def time_replays(self, on: bool = True) -> None:
        """Record a timing event pair around every replay (``vidhash bench generation``: how much of a
        chunk the GPU spends inside the graphs). Each pair brackets one replay on the current stream:
        the first event completes when the work before it does, so a pair's elapsed time is the
        replay's GPU time whether or not the host was ahead. Off by default."""
        self._timed = [] if on else None

    def new_event(self):
        """A timing event of the kind the replays are bracketed with (a CUDA event, or a host stand-in
        when emulated): record it where a chunk starts and :meth:`lead_ms` gives the time to its first pass."""
        return _HostEvent() if self.emulate else torch.cuda.Event(enable_timing=True)

    def lead_ms(self, start) -> float | None:
        """Milliseconds from the event ``start`` (recorded where a chunk began, on the current stream)
        to the start of the first replay timed since the last :meth:`replay_ms`, or None if none was
        (call after a synchronize, before ``replay_ms`` clears them). On a GPU that begins a chunk idle
        (the previous one ended in a synchronize) this is the host's preparation of the chunk, plus any
        eager work queued before the first pass."""
        if not self._timed:
            return None
        return start.elapsed_time(self._timed[0][0])

    def replay_ms(self) -> list[float]:
        """GPU milliseconds of each replay since the last call (call after a synchronize), then clears."""
        if not self._timed:
            return []
        out = [a.elapsed_time(b) for a, b in self._timed]
        self._timed.clear()
        return out

    def count_eager(self) -> None:
        """The pipeline ran a pass eagerly (window filling, a short chunk)."""
        self.eager_passes += 1

    def stats(self) -> dict:
        return {"captures": self.captures, "replays": self.replays, "eager_passes": self.eager_passes,
                "failed": self.failed}
