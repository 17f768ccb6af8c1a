"""Built procedural worlds shared by every data worker of every training process on one machine.

Training draws its clips from a pool of worlds that moves on every ``pool_size × clips_per_world``
samples (``vidhash.training.data``). Each DataLoader worker used to build every world of the pool
itself: with W workers per process and P processes a block of samples cost ``P · W · pool_size``
builds of ~0.3 s (512² world) instead of ``pool_size``, all of them at the block boundary, so the
prefetched batches ran out and the GPUs waited (2 GPUs × 12 workers: 192 builds per 4,096
samples; BENCHMARKS.md "2-GPU scaling").

:class:`SharedWorldCache` builds a world once per machine: the first worker to need it takes a
lock file, builds it and publishes ``texture`` + ``landmarks`` with an atomic rename; the others
wait for the file (or build themselves if the builder vanished) and load it in ~1 ms. Worlds are
a pure function of ``(seed, size, view)`` and of this code, so a published file is the world a
build would give, bit for bit (the file name carries a digest of ``vidhash/data/world.py``: a
changed generator never reads an old file). Anything that goes wrong with the files — a full or
read-only disk, a corrupt file — falls back to building in the worker; training data never
depends on the cache. :meth:`evict` removes the files of worlds no longer in use.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
import time
from pathlib import Path

import numpy as np

from . import world as _world_module
from .world import ProceduralWorld

_LOCK_STALE_S = 60.0  # a lock older than this belongs to a builder that died: take over
_POLL_S = 0.01


def default_cache_dir() -> Path:
    """``/dev/shm/vidhash-worlds-<uid>`` (memory-backed) when /dev/shm is writable, else the temp dir."""
    name = f"vidhash-worlds-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())
    return base / name


def code_digest() -> str:
    """Digest of the world generator's source: part of every file name."""
    return hashlib.sha256(Path(_world_module.__file__).read_bytes()).hexdigest()[:12]


class SharedWorldCache:
    """``get(seed, size, view)`` → the :class:`ProceduralWorld`, built at most once per machine.

    ``builds`` (every world built here, whatever the reason) / ``loads`` / ``fallbacks`` (builds
    that skipped the files: a lock held too long, a file error) count what this process did."""

    def __init__(self, root: str | os.PathLike | None = None, wait_s: float = 30.0):
        self.root = Path(root) if root is not None else default_cache_dir()
        self.wait_s = float(wait_s)
        self.tag = code_digest()
        self.builds = self.loads = self.fallbacks = 0
        self._broken: str | None = None  # the first file error (then this process stops using files)

    def path(self, seed: int, size: int, view: int) -> Path:
        return self.root / f"world-{self.tag}-{int(seed)}-{int(size)}-{int(view)}.pkl"

    def get(self, seed: int, size: int, view: int) -> ProceduralWorld:
        if self._broken is not None:
            return self._build(seed, size, view)
        path = self.path(seed, size, view)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            deadline = time.monotonic() + self.wait_s
            while True:
                world = self._load(path, seed, size, view)
                if world is not None:
                    return world
                lock = path.with_suffix(".lock")
                if self._try_lock(lock):
                    try:
                        world = self._load(path, seed, size, view)  # published while we took the lock
                        if world is None:
                            world = self._build(seed, size, view)
                            self._publish(path, world)
                        return world
                    finally:
                        lock.unlink(missing_ok=True)
                if time.monotonic() > deadline:  # someone holds the lock for too long: build here
                    self.fallbacks += 1
                    return self._build(seed, size, view)
                time.sleep(_POLL_S)
        except OSError as err:  # full disk, read-only, permissions: build in this worker from now on
            self._broken = f"{type(err).__name__}: {err}"
            self.fallbacks += 1
            return self._build(seed, size, view)

    def evict(self, seeds, size: int, view: int) -> None:
        """Remove the files of worlds ``seeds`` (no longer in any pool); missing files are fine."""
        if self._broken is not None:
            return
        for seed in seeds:
            try:
                self.path(seed, size, view).unlink(missing_ok=True)
            except OSError:
                pass

    # ------------------------------------------------------------------ internals
    def _build(self, seed, size, view) -> ProceduralWorld:
        self.builds += 1
        return ProceduralWorld(seed=int(seed), size=int(size), view=int(view))

    def _load(self, path: Path, seed, size, view) -> ProceduralWorld | None:
        try:
            with open(path, "rb") as f:
                blob = pickle.load(f)
        except FileNotFoundError:
            return None
        except Exception:  # noqa: BLE001 - a torn or foreign file: rebuild (and replace it)
            path.unlink(missing_ok=True)
            return None
        if (blob.get("seed"), blob.get("size"), blob.get("view")) != (int(seed), int(size), int(view)):
            return None
        self.loads += 1
        return ProceduralWorld.from_texture(blob["texture"], blob["landmarks"], seed=seed, view=view)

    def _publish(self, path: Path, world: ProceduralWorld) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=path.name + ".", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                pickle.dump({"seed": world.seed, "size": world.size, "view": world.view,
                             "texture": np.ascontiguousarray(world.texture), "landmarks": world.landmarks}, f,
                            protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, path)  # atomic: readers see the whole file or none
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @staticmethod
    def _try_lock(lock: Path) -> bool:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                if time.time() - lock.stat().st_mtime > _LOCK_STALE_S:
                    lock.unlink(missing_ok=True)  # its builder died; the next attempt takes it
            except FileNotFoundError:
                pass
            return False
        os.close(fd)
        return True
