"""Shared world cache: the world a build gives, built once per machine, never a failure point."""
import multiprocessing as mp
import os
import time

import numpy as np
import pytest
import torch

from vidhash.data.world import ProceduralWorld
from vidhash.data.world_cache import SharedWorldCache, code_digest
from vidhash.training import load_train_config
from vidhash.training.data import TrainSamples, world_cache_folder, world_pool_seeds

SIZE, VIEW = 128, 32


def _same(a: ProceduralWorld, b: ProceduralWorld):
    assert np.array_equal(a.texture, b.texture) and np.array_equal(a._padded, b._padded)
    assert a.landmarks == b.landmarks and (a.seed, a.size, a.view) == (b.seed, b.size, b.view)
    poses = np.array([[0.0, 0.0], [127.5, 3.0], [64.0, 100.0]])
    assert np.array_equal(a.render_many(poses), b.render_many(poses))


def test_cached_world_is_the_built_world(tmp_path):
    first = SharedWorldCache(tmp_path)
    built = first.get(7, SIZE, VIEW)
    assert (first.builds, first.loads) == (1, 0)
    assert first.path(7, SIZE, VIEW).name.startswith(f"world-{code_digest()}-7-")
    second = SharedWorldCache(tmp_path)
    loaded = second.get(7, SIZE, VIEW)
    assert (second.builds, second.loads) == (0, 1)
    _same(loaded, ProceduralWorld(seed=7, size=SIZE, view=VIEW))
    _same(built, loaded)
    assert not list(tmp_path.glob("*.lock")) and not list(tmp_path.glob("*.tmp"))


def _worker(root, seed, q):
    cache = SharedWorldCache(root)
    w = cache.get(seed, SIZE, VIEW)
    q.put((cache.builds, int(w.texture.sum())))


def test_processes_build_a_world_once(tmp_path):
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(tmp_path, 11, q)) for _ in range(4)]
    for p in procs:
        p.start()
    res = [q.get(timeout=60) for _ in procs]
    for p in procs:
        p.join()
    assert sum(b for b, _ in res) == 1  # one builder; the others waited for its file
    assert len({s for _, s in res}) == 1


def test_stale_lock_is_taken_over(tmp_path):
    cache = SharedWorldCache(tmp_path, wait_s=30)
    lock = cache.path(3, SIZE, VIEW).with_suffix(".lock")
    lock.write_text("")
    old = time.time() - 3600
    os.utime(lock, (old, old))
    t0 = time.monotonic()
    _same(cache.get(3, SIZE, VIEW), ProceduralWorld(seed=3, size=SIZE, view=VIEW))
    assert time.monotonic() - t0 < 10 and cache.builds == 1 and cache.path(3, SIZE, VIEW).exists()


def test_held_lock_times_out_to_a_local_build(tmp_path):
    cache = SharedWorldCache(tmp_path, wait_s=0.2)
    cache.path(4, SIZE, VIEW).with_suffix(".lock").write_text("")  # a live builder that never finishes
    _same(cache.get(4, SIZE, VIEW), ProceduralWorld(seed=4, size=SIZE, view=VIEW))
    assert cache.fallbacks == 1 and cache.builds == 1


def test_corrupt_file_is_rebuilt(tmp_path):
    cache = SharedWorldCache(tmp_path)
    tmp_path.mkdir(exist_ok=True)
    cache.path(5, SIZE, VIEW).write_bytes(b"not a pickle")
    _same(cache.get(5, SIZE, VIEW), ProceduralWorld(seed=5, size=SIZE, view=VIEW))
    assert cache.builds == 1
    assert SharedWorldCache(tmp_path).get(5, SIZE, VIEW) is not None  # replaced by a good file


def test_unusable_folder_falls_back_to_building(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cache = SharedWorldCache(blocker / "worlds")  # under a file: mkdir fails
    _same(cache.get(6, SIZE, VIEW), ProceduralWorld(seed=6, size=SIZE, view=VIEW))
    assert cache.fallbacks == 1 and cache._broken
    cache.get(8, SIZE, VIEW)  # no more file attempts
    assert cache.builds == 2


@pytest.mark.parametrize("setting, want", [("off", False), (False, False), ("none", False), ("", False),
                                           ("auto", None), (True, None), ("/x/y", "/x/y")])
def test_world_cache_setting(setting, want):
    assert world_cache_folder(setting) == want


def _cfg(cache, **data):
    over = [f"data.world_cache={cache}", "data.world_size=128", "data.view=32", "data.pool_size=2",
            "data.clips_per_world=2", "data.num_frames=8", "model.sample_size=32"]
    return load_train_config("configs/train/world_tiny.yaml", over + [f"data.{k}={v}" for k, v in data.items()])


def test_samples_equal_with_and_without_cache(tmp_path):
    on, off = TrainSamples(_cfg(tmp_path)), TrainSamples(_cfg("off"))
    for i in (0, 3, 4, 9):
        a, b = on[i], off[i]
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert on.cache is not None and off.cache is None and on.cache.builds > 0
    again = TrainSamples(_cfg(tmp_path))
    for i in (0, 3):
        again[i]
    assert again.cache.builds == 0 and again.cache.loads > 0


def test_old_blocks_are_evicted(tmp_path):
    ds = TrainSamples(_cfg(tmp_path))
    cfg = ds.cfg
    for i in range(0, 4 * ds.block_len):  # blocks 0..3
        ds[i]
    files = {p.name for p in tmp_path.glob("*.npz")}
    block0 = {int(s) for s in world_pool_seeds(cfg, 0)} - {int(s) for b in (1, 2, 3) for s in world_pool_seeds(cfg, b)}
    assert block0 and not any(ds.cache.path(s, 128, 32).name in files for s in block0)
    assert any(ds.cache.path(int(s), 128, 32).name in files for s in world_pool_seeds(cfg, 3))


# ---------------------------------------------------------------------------------- no code from the files


class _Payload:
    """A pickle that creates ``marker`` when it is unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_planted_pickle_never_runs(tmp_path):
    """A file planted under a world's name (the old cache unpickled it) is read as data: its
    payload never runs, the world is built and the file replaced."""
    import pickle

    root, marker = tmp_path / "worlds", tmp_path / "ran"
    root.mkdir(mode=0o700)
    cache = SharedWorldCache(root)
    blob = pickle.dumps({"seed": 9, "size": SIZE, "view": VIEW, "x": _Payload(marker)})
    for name in (cache.path(9, SIZE, VIEW).name, f"world-{code_digest()}-9-{SIZE}-{VIEW}.pkl"):
        (root / name).write_bytes(blob)
    _same(cache.get(9, SIZE, VIEW), ProceduralWorld(seed=9, size=SIZE, view=VIEW))
    assert not marker.exists() and cache.builds == 1
    assert SharedWorldCache(root).get(9, SIZE, VIEW) is not None and not marker.exists()


def _refused(root, capsys=None):
    with pytest.warns(RuntimeWarning, match="not used") as record:
        cache = SharedWorldCache(root)
        _same(cache.get(2, SIZE, VIEW), ProceduralWorld(seed=2, size=SIZE, view=VIEW))
    assert cache.fallbacks == 1 and cache.loads == 0 and len(str(record[0].message).splitlines()) == 1
    return cache


def test_folder_of_another_user_is_refused(tmp_path):
    """/dev/shm/vidhash-worlds-<uid> planted by someone else: not used (no file read or written there)."""
    if not hasattr(os, "getuid"):
        pytest.skip("POSIX owners")
    root = tmp_path / "planted"
    root.mkdir(mode=0o700)
    if os.getuid() == 0:
        os.chown(root, 12345, 12345)
    else:
        pytest.skip("changing a folder's owner needs root")
    _refused(root)
    assert not list(root.iterdir())


def test_shared_writable_or_symlinked_folder_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    _refused(shared)
    assert not list(shared.iterdir())
    target = tmp_path / "target"
    target.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(target)
    _refused(tmp_path / "link")
    assert not list(target.iterdir())


def test_folder_is_created_private(tmp_path, monkeypatch):
    import vidhash.data.world_cache as wc

    monkeypatch.setattr(wc, "default_cache_dir", lambda: tmp_path / "a" / "worlds")
    cache = SharedWorldCache()
    cache.get(1, SIZE, VIEW)
    assert (tmp_path / "a" / "worlds").stat().st_mode & 0o777 == 0o700 and cache.path(1, SIZE, VIEW).is_file()
