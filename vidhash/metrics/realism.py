"""No-reference realism of procedural-world frames: patch nearest neighbours in a bank of real patches.

    from vidhash.metrics.realism import realism
    r = realism(frames, world_size=512)   # frames: (T, H, W, 3) or (H, W, 3), uint8 or float in [0, 1]
    r.distance, r.real_share              # mean normalised patch distance; share of patches "inside" real
    r.frame_distance, r.frame_share       # the same per frame, float64 (T,)

    vidhash bench realism [--world-size 512] [clip.mp4[:start:stop] ...]   # validation table

Away from anything it has seen, a world model has to invent ground. PSNR against the ground
truth cannot judge that (any invention differs from the truth); this asks instead whether the
frame's local patches look like patches of *some* real world. No pretrained network, no
download: the reference is rendered by :mod:`vidhash.data.world`.

**Bank.** ``bank_frames`` random 64×64 views of each of ``bank_worlds`` worlds (seeds from
``BANK_SEED`` = 3,000,000: not training worlds, < 1,000,000, nor the default eval worlds,
1,000,000 + a few), at the world size of the model (the texture's scale depends on it: 512 for
``world-tiny-v1``, ``pos_period`` of the model). Every 8×8 patch at stride 4 becomes a feature;
``bank_size`` of them (random, seeded) are kept.

**Feature** (49 numbers per 8×8 RGB patch, values in [0, 1]):

* the patch 2×2-average-pooled (4×4×3 = 48, divided by √48: an RMS colour/structure term at half
  resolution; pooling halves the world's pixel grain, which otherwise dominates distances, and
  matches the 4:2:0 chroma of H.264, so mp4 round trips are not penalised);
* ``HF_WEIGHT`` (2) × the RMS of the patch's luma minus its 2×2 block means (detail energy): real
  patches carry the world's grain and crisp edges, blur removes them, noise adds to them. Luma
  only, because mp4 (yuv420p) erases chroma detail while keeping luma detail (measured: luma
  detail 20.6 → 19.7, chroma 20.5 → 1.6 grey levels over a crf-18 round trip; σ 0.7 blur takes
  luma to 9.3).

**Distance** (the "realism score" of Kynkäänniemi et al. 2019, inverted): every bank patch gets a
radius ``r_i``, the distance to its ``k``-th (5) nearest other bank patch; a patch ``q`` scores
``d(q) = min_i ‖q − b_i‖ / r_i``. Below 1 means inside the ball of some real patch; the
normalisation makes dense parts of patch space (flat grass, water) strict and sparse ones
(landmark outlines) lenient, which plain L2 was not (see docs/realism.md: with plain L2 the
invented texture scored *closer* to real than real frames' own landmark patches, and blur
scored more real than real). A frame's ``distance`` is the mean of ``d`` over its patches
(lower = more real). ``real_share`` is the fraction of patches with ``d ≤ threshold``, the
threshold being the 95 % quantile of ``d`` on real frames of ``cal_worlds`` other worlds
(seeds from ``CAL_SEED`` = 3,100,000), so real frames score ≈ 0.95.

Measured (world size 512, 64 frames of worlds 1,000,000-1,000,003, default bank; the shipped
``world-tiny-v1`` clips of ``vidhash generate --prompt-world 1000003 --actions
configs/paths/out_and_back_10s.json``, read back from the mp4) — docs/realism.md has the table
and how it was made; in short, real 0.850 / 0.944, after an mp4 round trip 0.847 / 0.948,
mild blur (σ 0.7) 0.949 / 0.679, noise σ 8 0.879 / 0.903, invented ground (frames 24-63)
1.019 / 0.404 (hashed memory) and 1.056 / 0.216 (window only), the clip's prompt frames
0.805 / 0.972.

Cost: building the default bank renders 12 worlds and one 16,384² k-NN pass (~6 s on 2 CPU
cores at size 512, once per process and world size: :func:`realism_bank` caches it); scoring
is one float32 matmul of the patches against the bank (min ‖q − b‖² / r² expanded; patch
distances within ~1e-3 of ``torch.cdist`` above 0.5, up to ~0.02 for near-exact matches):
7-12 ms per 64×64 frame (225 patches) on 2 CPU cores, 0.6 ms for a 16×16 frame.
Radii are floored at ``RADIUS_FLOOR`` (0.01), since flat landmark interiors repeat exactly.
Deterministic: seeds fix worlds, views and the subsample; the same frames give the same numbers
(bitwise within a process, and across runs on one machine and thread count).

Limits: it knows only this world's patch statistics at 8×8 / 16×16 pixels (no layout: a frame
of shuffled 8×8 tiles scores 0.94 / 0.67, between mild blur and invented texture); landmark-dense
real frames score somewhat higher than average; it is not a measure for other videos.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

PATCH = 8
STRIDE = 4
HF_WEIGHT = 2.0
K = 5
BANK_SEED = 3_000_000  # bank worlds: BANK_SEED + i
CAL_SEED = 3_100_000  # calibration worlds: CAL_SEED + i
QUANTILE = 0.95
RADIUS_FLOOR = 0.01  # k-NN radius floor (RMS in [0, 1], 2.5 grey levels): flat landmark interiors repeat exactly
VIEW = 64
_LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class RealismResult:
    """Mean normalised patch distance (lower = more real) and share of real-looking patches, overall
    (means over all patches of all frames) and per frame."""

    distance: float
    real_share: float
    frame_distance: np.ndarray  # (T,) float64
    frame_share: np.ndarray  # (T,) float64

    def as_dict(self) -> dict:
        return {"realism": self.distance, "real_share": self.real_share}


# ------------------------------------------------------------------------------- features


def _as_tensor(frames) -> torch.Tensor:
    """(T, H, W, 3) or (H, W, 3), uint8 or float in [0, 1], numpy or torch -> float32 (T, 3, H, W) in [0, 1]."""
    if isinstance(frames, torch.Tensor):
        x = frames.detach().cpu()
    else:
        x = torch.from_numpy(np.ascontiguousarray(np.asarray(frames)))
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"frames must be (T, H, W, 3) or (H, W, 3) RGB, got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("no frames (T = 0)")
    if x.shape[1] < PATCH or x.shape[2] < PATCH:
        raise ValueError(f"frames of {x.shape[1]}×{x.shape[2]} are smaller than a {PATCH}×{PATCH} patch")
    if x.dtype == torch.uint8:
        x = x.float() / 255
    elif x.is_floating_point():
        x = x.float()
        if not torch.isfinite(x).all():
            raise ValueError("frames contain NaN or infinite values")
        lo, hi = float(x.min()), float(x.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise ValueError(f"float frames must be in [0, 1], got values in [{lo:.3g}, {hi:.3g}] "
                             f"(uint8 frames: pass them as uint8)")
        x = x.clamp(0, 1)
    else:
        raise ValueError(f"frames must be uint8 or float, got {x.dtype}")
    return x.permute(0, 3, 1, 2).contiguous()


def patch_features(frames) -> torch.Tensor:
    """Features (T, L, 49) float32 of every 8×8 patch at stride 4 (module docstring)."""
    x = _as_tensor(frames)
    t = x.shape[0]
    u = F.unfold(x, PATCH, stride=STRIDE)  # (T, 3·p·p, L)
    n_patch = u.shape[-1]
    u = u.transpose(1, 2).reshape(t * n_patch, 3, PATCH, PATCH)
    pooled = F.avg_pool2d(u, 2)
    luma = (u * torch.tensor(_LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)
    detail = luma - F.interpolate(F.avg_pool2d(luma, 2), scale_factor=2, mode="nearest")
    energy = detail.pow(2).mean((1, 2, 3)).sqrt()[:, None]
    f = torch.cat([pooled.reshape(len(u), -1) / math.sqrt(pooled[0].numel()), HF_WEIGHT * energy], 1)
    return f.reshape(t, n_patch, -1)


# ----------------------------------------------------------------------------------- bank


def _real_frames(seed: int, count: int, world_size: int) -> np.ndarray:
    from vidhash.data.world import ProceduralWorld

    world = ProceduralWorld(seed=seed, size=world_size, view=VIEW)
    poses = np.random.default_rng([seed, 0xBA2C]).integers(0, world_size, size=(count, 2)).astype(np.float64)
    return world.render_many(poses)


class RealismBank:
    """Bank features (N, 49), their k-NN radii (N,), the real-share threshold; see the module docstring.

    Build with :meth:`build` (or the cached :func:`realism_bank`); score with :meth:`score`.
    """

    def __init__(self, features: torch.Tensor, radii: torch.Tensor, threshold: float, calibration_distance: float,
                 settings: dict):
        self.features, self.radii = features, radii
        # min_i ‖q − b_i‖² / r_i² as one matmul: [q, ‖q‖², 1] · [−2 b_i / r_i², 1 / r_i², ‖b_i‖² / r_i²]
        # (features centred on the bank mean first, so the squares stay small in float32)
        self._centre = features.mean(0)
        b = features - self._centre
        inv = radii.double().pow(-2)
        self._keys = torch.cat([-2 * b.double() * inv[:, None], inv[:, None], (b.double().pow(2).sum(1) * inv)[:, None]],
                               1).float().T.contiguous()
        self.threshold, self.calibration_distance, self.settings = float(threshold), float(calibration_distance), settings

    @classmethod
    @torch.no_grad()
    def build(cls, world_size: int = 512, bank_worlds: int = 8, bank_frames: int = 64, bank_size: int = 16384,
              cal_worlds: int = 4, cal_frames: int = 32, k: int = K, quantile: float = QUANTILE) -> "RealismBank":
        if world_size < 2 * VIEW:
            raise ValueError(f"world_size {world_size} must be at least {2 * VIEW}")
        if min(bank_worlds, bank_frames, bank_size, cal_worlds, cal_frames, k) < 1:
            raise ValueError("bank_worlds, bank_frames, bank_size, cal_worlds, cal_frames and k must be positive")
        frames = np.concatenate([_real_frames(BANK_SEED + i, bank_frames, world_size) for i in range(bank_worlds)])
        feats = patch_features(frames).reshape(-1, 1 + 3 * (PATCH // 2) ** 2)
        if len(feats) > bank_size:
            keep = torch.randperm(len(feats), generator=torch.Generator().manual_seed(BANK_SEED))[:bank_size]
            feats = feats[keep.sort().values]
        if len(feats) <= k:
            raise ValueError(f"a bank of {len(feats)} patches is too small for k = {k}")
        radii = torch.cat([torch.cdist(c, feats).topk(k + 1, largest=False).values[:, -1]
                           for c in feats.split(2048)]).clamp_min(RADIUS_FLOOR)  # k+1: the patch itself is the first
        bank = cls(feats.contiguous(), radii, threshold=float("inf"), calibration_distance=float("nan"),
                   settings={"world_size": world_size, "bank_worlds": bank_worlds, "bank_frames": bank_frames,
                             "bank_size": len(feats), "cal_worlds": cal_worlds, "cal_frames": cal_frames, "k": k,
                             "quantile": quantile, "patch": PATCH, "stride": STRIDE, "hf_weight": HF_WEIGHT})
        cal = np.concatenate([_real_frames(CAL_SEED + i, cal_frames, world_size) for i in range(cal_worlds)])
        d = bank.patch_distances(cal).flatten()
        bank.threshold = float(torch.quantile(d.double(), quantile))
        bank.calibration_distance = float(d.double().mean())
        return bank

    @torch.no_grad()
    def patch_distances(self, frames, chunk: int = 1024, device: torch.device | str | None = None) -> torch.Tensor:
        """Normalised nearest-bank distance (T, L) float32 (on the CPU) of every patch of ``frames``.

        ``device``: where the nearest-bank search (one matmul per chunk of patches: ~0.4 GFLOP per
        64×64 frame) runs — a GPU (in float64) takes it from ~13 ms per frame on a 2-core CPU to well
        under 1 ms; features are made on the CPU either way. Results differ only in rounding."""
        q = patch_features(frames)
        t, n_patch = q.shape[:2]
        flat = q.reshape(t * n_patch, -1)
        q = flat - self._centre
        q = torch.cat([q, q.pow(2).sum(1, keepdim=True), torch.ones(len(q), 1)], 1)
        device = torch.device(device) if device is not None else torch.device("cpu")
        keys = self._keys_on(device)
        if device.type != "cpu":
            chunk = max(chunk, 16384)
        dt = keys.dtype  # float64 on a GPU: immune to TF32 matmul settings, still ~ms per frame batch
        out = torch.cat([(c.to(device, dt) @ keys).amin(1).float().cpu() for c in q.split(chunk)])
        return out.clamp_min(0).sqrt().reshape(t, n_patch)

    def _keys_on(self, device: torch.device) -> torch.Tensor:
        if device.type == "cpu":
            return self._keys
        cached = getattr(self, "_device_keys", None)
        if cached is None or cached.device != device:
            self._device_keys = cached = self._keys.to(device, torch.float64)
        return cached

    def score(self, frames, device: torch.device | str | None = None) -> RealismResult:
        """:class:`RealismResult` of ``frames`` ((T, H, W, 3) or (H, W, 3), uint8 or float in [0, 1]);
        ``device``: where the search runs (:meth:`patch_distances`)."""
        d = self.patch_distances(frames, device=device).double()
        inside = (d <= self.threshold).double()
        return RealismResult(distance=float(d.mean()), real_share=float(inside.mean()),
                             frame_distance=d.mean(1).numpy(), frame_share=inside.mean(1).numpy())


@functools.lru_cache(maxsize=4)
def realism_bank(world_size: int = 512) -> RealismBank:
    """The default :class:`RealismBank` for ``world_size`` (built once per process)."""
    return RealismBank.build(world_size=int(world_size))


def realism(frames, world_size: int = 512, bank: RealismBank | None = None,
            device: torch.device | str | None = None) -> RealismResult:
    """Realism of ``frames`` against the default bank of ``world_size`` (or ``bank``); the nearest-bank
    search runs on ``device`` (default the CPU)."""
    return (bank or realism_bank(world_size)).score(frames, device=device)


# ------------------------------------------------------------------------------ validation


def distortions(frames: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """The validation's degraded copies of uint8 frames (T, H, W, 3)."""
    import cv2

    rng = np.random.default_rng(seed)
    f = frames.astype(np.float64)

    def blur(s):
        return np.stack([cv2.GaussianBlur(x, (0, 0), s) for x in frames])

    def noise(s):
        return np.clip(np.round(f + rng.normal(0, s, f.shape)), 0, 255).astype(np.uint8)

    def shift(d):
        return np.clip(f + np.asarray(d, dtype=np.float64), 0, 255).astype(np.uint8)

    def shuffle(b):
        out = frames.copy()
        _, h, w, _ = frames.shape
        cells = [(i, j) for i in range(0, h - b + 1, b) for j in range(0, w - b + 1, b)]
        for t in range(len(frames)):
            perm = rng.permutation(len(cells))
            for (i, j), k in zip(cells, perm):
                si, sj = cells[k]
                out[t, i:i + b, j:j + b] = frames[t, si:si + b, sj:sj + b]
        return out

    return {"blur σ 0.7": blur(0.7), "blur σ 1.0": blur(1.0), "blur σ 2.0": blur(2.0), "noise σ 4": noise(4),
            "noise σ 8": noise(8), "noise σ 20": noise(20), "colour +20 R": shift([20, 0, 0]),
            "colour −20 R +40 G −20 B": shift([-20, 40, -20]), "shuffled 8×8 tiles": shuffle(8),
            "shuffled 16×16 tiles": shuffle(16)}


def validation_table(clips: list[str] = (), world_size: int = 512,
                     seeds: tuple[int, ...] = (1_000_000, 1_000_001, 1_000_002, 1_000_003), frames: int = 16) -> None:
    """Print the metric on real frames of held-out worlds ``seeds`` (``frames`` each), on their mp4 round
    trip, on :func:`distortions` of them and on ``clips`` (mp4 files, optionally ``PATH:START:STOP``)."""
    import tempfile
    import time

    from vidhash.data.video import Mp4Writer, read_frames

    t0 = time.perf_counter()
    bank = realism_bank(world_size)
    print(f"bank: {bank.settings}; built in {time.perf_counter() - t0:.1f} s; calibration mean "
          f"{bank.calibration_distance:.3f}, threshold ({bank.settings['quantile']:.0%}) {bank.threshold:.3f}")
    seeds = list(seeds)
    real = np.concatenate([_real_frames(s, frames, world_size) for s in seeds])
    sets = {f"real, worlds {seeds[0]}…{seeds[-1]}": real}
    with tempfile.TemporaryDirectory() as tmp:
        writer = Mp4Writer(f"{tmp}/real.mp4", 8)
        writer.write(real)
        writer.close()
        sets["real, mp4 round trip (crf 18)"] = read_frames(f"{tmp}/real.mp4")
    sets.update(distortions(real))
    for spec in clips:
        path, *rng = spec.split(":")
        clip = read_frames(path)
        if rng:
            clip = clip[int(rng[0]):int(rng[1])]
        sets[spec] = clip
    print(f"{'frames':44s} {'n':>4s} {'realism':>8s} {'real share':>10s} {'ms/frame':>8s}")
    for name, x in sets.items():
        t0 = time.perf_counter()
        r = bank.score(x)
        ms = (time.perf_counter() - t0) / len(x) * 1e3
        print(f"{name:44s} {len(x):4d} {r.distance:8.3f} {r.real_share:10.3f} {ms:8.1f}")
