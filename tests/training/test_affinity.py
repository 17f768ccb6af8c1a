import functools
import os

import pytest

from vidhash.training.affinity import _parse_cpu_list, pin_worker, plan_affinity


def test_parse_cpu_list():
    assert _parse_cpu_list("0-3,8,10-11\n") == {0, 1, 2, 3, 8, 10, 11}
    assert _parse_cpu_list("5") == {5}


def _ht_host(n_phys):  # CPUs c and c + n_phys are hyperthread siblings (the usual Linux numbering)
    sib = {}
    for c in range(n_phys):
        sib[c] = sib[c + n_phys] = frozenset({c, c + n_phys})
    return set(sib), sib


def test_plan_keeps_siblings_together_and_apart_from_workers():
    avail, sib = _ht_host(16)
    m0, w = plan_affinity(avail, sib, 0, 2, 2)
    m1, w1 = plan_affinity(avail, sib, 1, 2, 2)
    assert m0 == {0, 1, 16, 17} and m1 == {2, 3, 18, 19}
    assert w == w1 == avail - m0 - m1  # every process's workers share the unreserved cores
    assert not (m0 & m1)


def test_plan_without_hyperthreads_and_refusals():
    avail = set(range(8))
    sib = {c: frozenset({c}) for c in avail}
    m, w = plan_affinity(avail, sib, 1, 2, 3)
    assert m == {3, 4, 5} and w == {6, 7}
    assert plan_affinity(avail, sib, 0, 2, 4) is None  # nothing left for the workers
    assert plan_affinity(avail, sib, 0, 2, 0) is None
    assert plan_affinity(avail, sib, 2, 2, 1) is None  # no such local rank
    # a sibling outside the allowed set is not handed out
    m, w = plan_affinity({0, 1, 2}, {0: frozenset({0, 9}), 1: frozenset({1}), 2: frozenset({2})}, 0, 1, 1)
    assert m == {0} and w == {1, 2}


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="Linux only")
def test_pin_worker_moves_the_calling_process():
    import multiprocessing as mp

    cores = set(os.sched_getaffinity(0))
    one = {min(cores)}
    ctx = mp.get_context("fork")
    q = ctx.Queue()

    def child():
        functools.partial(pin_worker, one)(3)
        q.put(sorted(os.sched_getaffinity(0)))

    p = ctx.Process(target=child)
    p.start()
    got = q.get(timeout=30)
    p.join(30)
    assert got == sorted(one)
    assert set(os.sched_getaffinity(0)) == cores  # the parent is untouched



MICRO = ["model.hidden_dim=16", "model.num_heads=2", "model.num_layers=1", "data.num_frames=4",
         "noise.chunk_frames=2", "batch_size=2", "checkpoint.every=1000", "optim.warmup_steps=1",
         "max_steps=2", "log_every=1", "data.world_cache=off"]


def _train(tmp_path, name, *extra):
    from vidhash.training import load_train_config
    from vidhash.training.trainer import train

    lines, during = [], []

    def log(*a, **k):
        lines.append(" ".join(str(x) for x in a))
        if lines[-1].startswith("step "):  # logged inside the training loop
            during.append(set(os.sched_getaffinity(0)))

    train(load_train_config("cpu_test", [f"out_dir={tmp_path / name}", *MICRO, *extra]),
          progress=False, export=False, log=log)
    return lines, during


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="Linux with 2+ CPUs")
def test_train_pins_the_main_thread_while_training_then_restores(tmp_path):
    before = set(os.sched_getaffinity(0))
    lines, during = _train(tmp_path, "a", "data.num_workers=1", "data.reserve_cores=1")
    assert any("main thread on CPUs" in ln for ln in lines), lines
    assert during and all(d < before for d in during)  # a strict subset while training
    assert set(os.sched_getaffinity(0)) == before  # given back afterwards

    lines, during = _train(tmp_path, "b", "data.reserve_cores=1000")  # more than the host has
    assert any("not pinned" in ln for ln in lines) and not any("main thread on CPUs" in ln for ln in lines)
    assert during and all(d == before for d in during)
