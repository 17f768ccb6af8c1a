"""CPU cores for a training process's main thread, apart from its data workers (``data.reserve_cores``).

With several training processes on one host, each main thread (which queues the GPU work) competes
for cores with every process's DataLoader workers; when a worker shares a core (or its hyperthread
sibling) with a main thread, the GPU waits for the host. ``data.reserve_cores = k`` gives each local
process ``k`` physical cores of its own (with their hyperthread siblings) and runs the data workers
of all processes on the cores nobody reserved. Linux only; elsewhere, or when the host has too few
cores (every process's k plus at least one core for the workers), nothing is pinned.

    plan = process_plan(reserve=2, local_rank=0, local_world=2)   # (main cores, worker cores) or None
    with pinned(plan): ...   # DataLoader(worker_init_fn=functools.partial(pin_worker, plan[1]))
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def _parse_cpu_list(text: str) -> set[int]:
    """'0-3,8,10-11' -> {0, 1, 2, 3, 8, 10, 11}"""
    out: set[int] = set()
    for part in text.strip().split(","):
        if not part:
            continue
        if "-" in part:
            a, b = part.split("-")
            out.update(range(int(a), int(b) + 1))
        else:
            out.add(int(part))
    return out


def host_siblings(cpus: set[int]) -> dict[int, frozenset[int]]:
    """Each CPU's hyperthread siblings (itself included), read from /sys; a CPU whose topology is not
    readable is its own physical core."""
    out = {}
    for c in cpus:
        try:
            sib = _parse_cpu_list(Path(f"/sys/devices/system/cpu/cpu{c}/topology/thread_siblings_list").read_text())
        except (OSError, ValueError):
            sib = {c}
        out[c] = frozenset(sib | {c})
    return out


def plan_affinity(available: set[int], siblings: dict[int, frozenset[int]], local_rank: int, local_world: int,
                  reserve: int) -> tuple[set[int], set[int]] | None:
    """(this process's main cores, every process's worker cores), or None when it cannot be done.

    Physical cores (sibling groups within ``available``) are ordered by their lowest CPU number;
    local process r takes groups r*reserve .. (r+1)*reserve - 1; the workers get the rest."""
    if reserve <= 0 or local_world <= 0 or not 0 <= local_rank < local_world:
        return None
    groups = sorted({frozenset(siblings.get(c, frozenset({c})) & available) for c in available}, key=min)
    if len(groups) < reserve * local_world + 1:
        return None
    main = set().union(*groups[local_rank * reserve:(local_rank + 1) * reserve])
    workers = set().union(*groups[reserve * local_world:])
    return main, workers


def process_plan(reserve: int, local_rank: int, local_world: int) -> tuple[set[int], set[int]] | None:
    """(main cores, worker cores) for this process on this host, or None (no pinning: ``reserve`` 0,
    not Linux, or too few cores). Nothing is pinned yet: see ``pinned``."""
    if reserve <= 0 or not hasattr(os, "sched_setaffinity"):
        return None
    available = set(os.sched_getaffinity(0))
    return plan_affinity(available, host_siblings(available), local_rank, local_world, reserve)


@contextlib.contextmanager
def pinned(plan: tuple[set[int], set[int]] | None):
    """Run the block with the calling thread on the plan's main cores (threads started inside inherit
    them), then give the thread back the cores it had; a None plan changes nothing."""
    if plan is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, plan[0])
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def pin_worker(cores: set[int], worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn`` (with functools.partial): move a worker off the reserved cores."""
    os.sched_setaffinity(0, cores)
