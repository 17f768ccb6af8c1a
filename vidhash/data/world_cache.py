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

Files are data, never code: an ``.npz`` of two arrays (``texture`` uint8, ``meta``: UTF-8 JSON of
seed, size, view and landmarks as uint8), read with ``allow_pickle=False`` and never through a
symlink. The folder is private: created mode 0700, and used only when :func:`private_folder`
finds (by ``lstat``) a real directory owned by this user that no one else can write to. The
default folder ``/dev/shm/vidhash-worlds-<uid>`` has a predictable name in a world-writable
place; one another user planted there (or a symlink) is refused, with a warning, and the
workers build their worlds themselves.
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from . import world as _world_module
from .world import ProceduralWorld

_LOCK_STALE_S = 60.0  # a lock older than this belongs to a builder that died: take over
_POLL_S = 0.01
SUFFIX = ".npz"


def default_cache_dir() -> Path:
    """``/dev/shm/vidhash-worlds-<uid>`` (memory-backed) when /dev/shm is writable, else the temp dir."""
    name = f"vidhash-worlds-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())
    return base / name


def private_folder(path: Path) -> Path:
    """``path`` created (mode 0700) if missing, then checked with ``lstat``: a directory, not a
    symlink, owned by this user, not writable by group or others. PermissionError naming the
    problem otherwise (the folder is then not used)."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except FileNotFoundError:  # a missing parent: made like ``mkdir -p`` (the leaf is checked below)
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(path, 0o700)
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise PermissionError(f"world cache folder {path} is a symlink; not used")
    if not stat.S_ISDIR(st.st_mode):
        raise PermissionError(f"world cache folder {path} is not a directory; not used")
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise PermissionError(f"world cache folder {path} belongs to uid {st.st_uid}, not to this user; not used")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise PermissionError(f"world cache folder {path} is writable by other users "
                              f"(mode {stat.S_IMODE(st.st_mode):o}); not used")
    return path


def code_digest() -> str:
    """Digest of the world generator's source: part of every file name."""
    return hashlib.sha256(Path(_world_module.__file__).read_bytes()).hexdigest()[:12]


class SharedWorldCache:
    """``get(seed, size, view)`` → the :class:`ProceduralWorld`, built at most once per machine.

    ``builds`` (every world built here, whatever the reason) / ``loads`` / ``fallbacks`` (builds
    that skipped the files: a lock held too long, a file error, a folder that is not private)
    count what this process did."""

    def __init__(self, root: str | os.PathLike | None = None, wait_s: float = 30.0):
        self.root = Path(root) if root is not None else default_cache_dir()
        self.wait_s = float(wait_s)
        self.tag = code_digest()
        self.builds = self.loads = self.fallbacks = 0
        self._broken: str | None = None  # the first file error (then this process stops using files)
        self._checked = False

    def path(self, seed: int, size: int, view: int) -> Path:
        return self.root / f"world-{self.tag}-{int(seed)}-{int(size)}-{int(view)}{SUFFIX}"

    def get(self, seed: int, size: int, view: int) -> ProceduralWorld:
        if self._broken is not None:
            return self._build(seed, size, view)
        path = self.path(seed, size, view)
        try:
            self._check_root()
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
        try:
            self._check_root()
        except OSError as err:
            self._broken = f"{type(err).__name__}: {err}"
            return
        for seed in seeds:
            try:
                self.path(seed, size, view).unlink(missing_ok=True)
            except OSError:
                pass

    # ------------------------------------------------------------------ internals
    def _check_root(self) -> None:
        """The folder, made private or refused once per process (a warning says why)."""
        if self._checked:
            return
        try:
            private_folder(self.root)
        except PermissionError as err:
            warnings.warn(f"{err}: data workers build their worlds themselves", RuntimeWarning, stacklevel=3)
            raise
        self._checked = True

    def _build(self, seed, size, view) -> ProceduralWorld:
        self.builds += 1
        return ProceduralWorld(seed=int(seed), size=int(size), view=int(view))

    def _load(self, path: Path, seed, size, view) -> ProceduralWorld | None:
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            return None
        try:
            with os.fdopen(fd, "rb") as f, np.load(f, allow_pickle=False) as blob:
                texture = np.array(blob["texture"], dtype=np.uint8)
                meta = json.loads(bytes(blob["meta"]).decode("utf-8"))
            if (meta["seed"], meta["size"], meta["view"]) != (int(seed), int(size), int(view)):
                return None
            landmarks = [(int(x), int(y), str(shape), tuple(int(c) for c in colour), int(r))
                         for x, y, shape, colour, r in meta["landmarks"]]
            world = ProceduralWorld.from_texture(texture, landmarks, seed=seed, view=view)
        except Exception:  # noqa: BLE001 - a torn or foreign file: rebuild (and replace it)
            path.unlink(missing_ok=True)
            return None
        self.loads += 1
        return world

    def _publish(self, path: Path, world: ProceduralWorld) -> None:
        meta = {"seed": world.seed, "size": world.size, "view": world.view,
                "landmarks": [list(lm[:3]) + [list(lm[3]), lm[4]] for lm in world.landmarks]}
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=path.name + ".", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, texture=np.ascontiguousarray(world.texture),
                         meta=np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8))
            os.replace(tmp, path)  # atomic: readers see the whole file or none
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @staticmethod
    def _try_lock(lock: Path) -> bool:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0), 0o600)
        except FileExistsError:
            try:
                if time.time() - lock.lstat().st_mtime > _LOCK_STALE_S:
                    lock.unlink(missing_ok=True)  # its builder died; the next attempt takes it
            except FileNotFoundError:
                pass
            return False
        os.close(fd)
        return True
