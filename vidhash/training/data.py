"""Training samples addressed by a global index: clip + per-chunk noise levels + noise, all a pure
function of ``(data.seed, index)``, so the data position of a run is one integer and resuming it
(or splitting the same stream over processes and accumulation steps) gives the same samples.

World source: a seeded pool of procedural worlds. Indices are grouped in blocks of
``pool_size · clips_per_world``; block ``b`` draws ``pool_size`` world seeds (from the training
range, never ≥ ``HELDOUT_WORLD_SEED``) and each sample picks one of them, so a worker needs at
most ``pool_size`` worlds per block (a small LRU keeps them); with ``data.world_cache`` (default)
each is built once per machine and loaded by every other worker and process
(:mod:`vidhash.data.world_cache`). A sample carries its noise's seed, not the noise
(:func:`sample_noise` draws it on the training device), and world frames as uint8
(:func:`model_frames` scales them there). Trajectories: ``out_and_back`` (walk
out, then retrace the path, so the second half revisits places seen more than a window ago),
``random`` (``RandomTrajectory`` with a high revisit probability and a short reach) or ``mixed``.

Video source: clips of ``VideoFolderDataset`` in a seeded permutation per epoch.
"""
from __future__ import annotations

import functools
import os
from collections import OrderedDict

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from vidhash.data.clips import VideoFolderDataset
from vidhash.data.world import ProceduralWorld, RandomTrajectory, revisits

from .affinity import pin_worker, process_plan
from .config import TrainConfig

INVERSE_ACTION = np.array([0, 2, 1, 4, 3, 5], dtype=np.int64)  # stay, up<->down, left<->right, null


def world_pool_seeds(cfg: TrainConfig, block: int) -> np.ndarray:
    d = cfg.data
    rng = np.random.default_rng([d.seed, 2, block])
    return d.world_seed_start + rng.integers(0, d.num_worlds, size=d.pool_size)


def trajectory(cfg: TrainConfig, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Actions (T,) and poses (T, 2) of sample ``index``."""
    d = cfg.data
    kind = d.trajectory
    if kind == "mixed":
        kind = "out_and_back" if rng.random() < 0.5 else "random"
    tseed = [d.seed, 3, index]
    n = d.num_frames
    if kind == "random":
        traj = RandomTrajectory(d.world_size, d.step, seed=tseed, reach=d.reach, revisit=d.revisit, max_pause=3)
        actions, poses = traj.take(n)
    else:
        half = (n + 1) // 2
        traj = RandomTrajectory(d.world_size, d.step, seed=tseed, reach=2 * d.reach, revisit=0.0, max_pause=2)
        out_a, out_p = traj.take(half)
        back_p = out_p[-2::-1]  # retrace: p[h-2], ..., p[0]
        back_a = INVERSE_ACTION[out_a[:0:-1]]  # the move that undoes p[k] -> p[k+1]
        actions = np.concatenate([out_a, back_a])
        poses = np.concatenate([out_p, back_p])
        if len(actions) < n:  # pad by staying at the start
            pad = n - len(actions)
            actions = np.concatenate([actions, np.zeros(pad, np.int64)])
            poses = np.concatenate([poses, np.repeat(poses[-1:], pad, axis=0)])
        actions, poses = actions[:n], poses[:n]
    actions = actions.copy()
    actions[0] = 0  # nothing brought the camera to the first frame
    return actions, poses


def revisit_share(cfg: TrainConfig, num_clips: int = 256, radius: float | None = None) -> float:
    """Share of frames that show (within ``radius`` px, default view/4) a place seen more than
    ``noise.window_frames`` frames earlier in the same clip. Poses only (no rendering)."""
    d = cfg.data
    radius = d.view / 4 if radius is None else radius
    hits = total = 0
    for i in range(num_clips):
        rng = np.random.default_rng([d.seed, 1, i])
        rng.integers(1 << 30)  # the world choice, as in make_sample
        _, poses = trajectory(cfg, i, rng)
        hits += len(revisits(poses, cfg.noise.window_frames + 1, radius, d.world_size))
        total += len(poses)
    return hits / total


def noise_levels(cfg: TrainConfig, rng: np.random.Generator) -> np.ndarray:
    """Per-chunk sigma in [0, 1]: 0 = clean context (no loss), else uniform or logit-normal."""
    n = cfg.noise
    chunks = cfg.data.num_frames // n.chunk_frames
    clean = rng.random(chunks) < n.clean_prob
    clean[0] = rng.random() < n.first_clean_prob
    if n.sigma_sampling == "uniform":
        sig = 1.0 - rng.random(chunks)  # (0, 1]
    else:
        sig = 1.0 / (1.0 + np.exp(-(n.logit_mean + n.logit_std * rng.standard_normal(chunks))))
    sig = np.where(clean, 0.0, sig)
    return np.repeat(sig, n.chunk_frames).astype(np.float32)


def model_frames(frames: torch.Tensor) -> torch.Tensor:
    """A batch's frames as the model takes them: uint8 (world clips, ``(…, 3, H, W)``) → float32 in
    [−1, 1] exactly as :func:`vidhash.data.clips.to_model_frames`; float frames (video clips) as they are."""
    return frames.float() / 127.5 - 1.0 if frames.dtype == torch.uint8 else frames


def sample_noise(seeds: torch.Tensor, shape, device: torch.device | str = "cpu") -> torch.Tensor:
    """The noise of a batch ``(len(seeds), *shape)`` on ``device``: sample i is ``torch.randn(shape)``
    from a generator on ``device`` seeded with ``seeds[i]`` (``item["noise_seed"]``, a function of
    ``(data.seed, index)`` only). Drawn where it is used — on the GPU in training — rather than by
    the data workers, where it was 59% of a sample's CPU time and half of what they sent through
    shared memory (BENCHMARKS.md "training data"). On the CPU it is the noise the workers drew."""
    gen = torch.Generator(device=device)
    return torch.stack([torch.randn(tuple(shape), generator=gen.manual_seed(int(s)), device=device)
                        for s in seeds.tolist()])


def world_cache_folder(setting) -> str | None | bool:
    """``data.world_cache`` → False (off: "off"/"false"/"no"/"none"/"", also YAML's off → False),
    None ("auto"/"on"/"true": the default folder) or the folder given."""
    s = str(setting).strip()
    if s.lower() in ("off", "false", "no", "none", "0", ""):
        return False
    if s.lower() in ("auto", "on", "true", "yes", "1"):
        return None
    return s


class IndexedSamples(Dataset):
    """What the trainer needs of a model family's samples (``ModelFamily.samples``): ``samples[i]``
    a dict of tensors, a pure function of (seed, ``i``) for every ``i`` ≥ 0, so a run's data
    position is one integer; :meth:`describe` for the run's header, :meth:`release` at its end."""

    def __len__(self) -> int:  # indices are unbounded; len only for DataLoader bookkeeping
        return 1 << 62

    def describe(self) -> str | None:
        """One line about the data for the run's header (None: none)."""
        return None

    def release(self, position: int) -> None:
        """The run ended at data ``position`` (local main process): free what is shared beyond it."""


class TrainSamples(IndexedSamples):
    """``samples[i]``: frames (T, C, H, W: uint8 for world clips, :func:`model_frames` scales them),
    actions, poses, sigmas (T,), noise_seed (the seed of its noise: :func:`sample_noise`);
    deterministic in (seed, i)."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        d = cfg.data
        self.videos = None
        if d.source == "video":
            try:
                self.videos = VideoFolderDataset(d.video_root, d.num_frames, d.view, d.view, d.frame_stride)
            except ValueError as err:
                raise ValueError(f"data.video_root: {err}") from None
            except Exception as err:  # PyAV: a file that is not a readable video
                raise ValueError(f"data.video_root {d.video_root}: a video could not be read ({err})") from None
        self.block_len = d.pool_size * d.clips_per_world
        self._worlds: OrderedDict[int, ProceduralWorld] = OrderedDict()
        self.cache = None  # SharedWorldCache, made lazily in each worker (it holds no open files)
        self.build_counter = None  # optional multiprocessing.Value: worlds built, over all workers (benchmarks)
        self._newest_block = -1

    def describe(self) -> str | None:
        """World source: the training seeds, trajectories, and how many frames revisit a place."""
        cfg, d = self.cfg, self.cfg.data
        if d.source != "world":
            return None
        share = revisit_share(cfg, 128)
        return (f"data: worlds {d.world_seed_start}..{d.world_seed_start + d.num_worlds - 1} "
                f"(seeds >= 1000000 held out), {d.trajectory} trajectories; {share:.0%} of frames revisit "
                f"a place seen more than {cfg.noise.window_frames} frames earlier")

    def world(self, seed: int) -> ProceduralWorld:
        w = self._worlds.get(seed)
        if w is None:
            d = self.cfg.data
            cache = self._cache()
            if cache is not None:
                before = cache.builds
                w = cache.get(int(seed), d.world_size, d.view)
                built = cache.builds - before
            else:
                w, built = ProceduralWorld(seed=int(seed), size=d.world_size, view=d.view), 1
            if self.build_counter is not None and built:
                with self.build_counter.get_lock():
                    self.build_counter.value += built
            self._worlds[seed] = w
            while len(self._worlds) > d.pool_size:
                self._worlds.popitem(last=False)
        else:
            self._worlds.move_to_end(seed)
        return w

    def _cache(self):
        folder = world_cache_folder(self.cfg.data.world_cache)
        if folder is False:
            return None
        if self.cache is None:
            from vidhash.data.world_cache import SharedWorldCache

            self.cache = SharedWorldCache(folder)
        return self.cache

    def _enter_block(self, block: int) -> None:
        """First sample of a newer block: the shared files of worlds three blocks back (in no pool
        a lagging worker of another process may still be filling) are removed."""
        if block <= self._newest_block:
            return
        self._newest_block = block
        cache, d = self._cache(), self.cfg.data
        if cache is None or block < 3:
            return
        live = set()
        for b in range(block - 2, block + 1):
            live.update(int(s) for s in world_pool_seeds(self.cfg, b))
        cache.evict([int(s) for s in world_pool_seeds(self.cfg, block - 3) if int(s) not in live], d.world_size, d.view)

    def release(self, position: int) -> None:
        """End of a run at data ``position``: remove the shared files of the worlds its workers may
        have published (the blocks from three back to one ahead), so nothing is left in /dev/shm."""
        cache, d = self._cache(), self.cfg.data
        if cache is None or self.videos is not None:
            return
        block = int(position) // self.block_len
        seeds = {int(s) for b in range(max(0, block - 3), block + 2) for s in world_pool_seeds(self.cfg, b)}
        cache.evict(sorted(seeds), d.world_size, d.view)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        cfg, d = self.cfg, self.cfg.data
        index = int(index)
        rng = np.random.default_rng([d.seed, 1, index])
        pick = int(rng.integers(1 << 30))
        if self.videos is None:
            self._enter_block(index // self.block_len)
            seeds = world_pool_seeds(cfg, index // self.block_len)
            world = self.world(int(seeds[pick % len(seeds)]))
            actions, poses = trajectory(cfg, index, rng)
            # uint8 (T, 3, H, W): a quarter of the bytes through the loader; model_frames scales it on the device
            item = {"frames": torch.from_numpy(world.render_many(poses)).permute(0, 3, 1, 2).contiguous(),
                    "actions": torch.from_numpy(actions),
                    "poses": torch.from_numpy(poses.astype(np.float32))}
        else:
            n = len(self.videos)
            epoch, k = divmod(index, n)
            item = dict(self.videos[int(np.random.default_rng([d.seed, 4, epoch]).permutation(n)[k])])
        sig = noise_levels(cfg, rng)
        item["sigmas"] = torch.from_numpy(sig)
        item["noise_seed"] = torch.tensor(int(rng.integers(1 << 62)), dtype=torch.int64)  # sample_noise draws it
        return item


class IndexBatches(Sampler):
    """Micro-batches of global sample indices for one process, from data position ``start``:
    optimizer step s covers ``start + s·batch_size ..`` split into ``grad_accum × processes`` micro-batches."""

    def __init__(self, start: int, batch_size: int, grad_accum: int, num_processes: int, rank: int):
        self.start, self.batch_size, self.grad_accum = int(start), int(batch_size), int(grad_accum)
        self.num_processes, self.rank = int(num_processes), int(rank)
        self.micro = batch_size // (grad_accum * num_processes)

    def __iter__(self):
        base = self.start
        while True:
            for k in range(self.grad_accum):
                first = base + (k * self.num_processes + self.rank) * self.micro
                yield list(range(first, first + self.micro))
            base += self.batch_size

    def __len__(self) -> int:
        return 1 << 62


def make_loader(cfg: TrainConfig, dataset: TrainSamples, accelerator, start: int, log):
    """(DataLoader of this process's micro-batches from data position ``start``, the CPU plan of
    ``data.reserve_cores`` or None): ``num_workers`` workers, pinned batches on CUDA."""
    nproc, rank = accelerator.num_processes, accelerator.process_index
    workers = cfg.data.num_workers
    pinned_cpus = None
    if cfg.data.reserve_cores > 0:
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", nproc))
        pinned_cpus = process_plan(cfg.data.reserve_cores, accelerator.local_process_index, local_world)
        if pinned_cpus is None and accelerator.is_main_process:
            log(f"data.reserve_cores={cfg.data.reserve_cores}: not pinned (needs Linux and more than "
                f"{cfg.data.reserve_cores} × {local_world} physical cores)")
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=IndexBatches(start, cfg.batch_size, cfg.grad_accum, nproc, rank),
        num_workers=workers, pin_memory=accelerator.device.type == "cuda" and cfg.data.pin_memory,
        persistent_workers=False, prefetch_factor=cfg.data.prefetch_factor if workers else None,
        worker_init_fn=functools.partial(pin_worker, pinned_cpus[1]) if (pinned_cpus and workers) else None,
    )
    return loader, pinned_cpus
