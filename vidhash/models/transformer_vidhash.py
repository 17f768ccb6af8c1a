"""``VidHashTransformer3DModel``: a pixel-space video DiT whose temporal attention is exact over
recent frames and reads a fixed-size ``HashedMemory`` for everything older.

    python -c "from vidhash.models import VidHashTransformer3DModel; m = VidHashTransformer3DModel(); print(m.num_parameters())"

Letters: b batch, f frames, n tokens per frame, d hidden dim, h heads, e head dim,
y x patch rows and columns, p q pixels inside a patch, c channels, m context tokens.

Each block: spatial attention (dense within a frame) → temporal attention (the chunk's tokens
attend exactly to every token of the context frames and of the chunk, merged by log-sum-exp
with a ``HashedMemory`` read for everything older) → MLP; each sub-layer is modulated by
adaLN-Zero on a per-frame condition = diffusion time + action + pose (diffusion forcing: every
frame has its own timestep).

Position: every token carries a Fourier embedding of the world coordinates of its patch centre
(the frame's pose (x, y) is the view centre; ``pos_period`` is the world size, so the embedding
is periodic on the world torus). Without poses it is the patch position within the frame. The
same place therefore gives similar keys whenever it is seen, which is what memory reads use.

Learned memory signatures: with ``memory_hash_bits > 0`` every layer's temporal attention owns
a :class:`~vidhash.hashing.LearnedHash` (per head, ``memory_hash_hidden`` wide, kept in float32,
saved with the weights). A ``HashedMemory`` in the context whose hasher is an
``UnboundHasher`` (what ``VidHashState`` builds for such a model) gets it bound on the first
forward. ``vidhash calibrate`` fits these hashes on a trained model.

Training-time selection (``forward(..., causal_frames=c, temporal_select={"window_frames": W,
"top_k": K})``): each chunk's queries attend exactly to their chunk and the ``W`` frames before
it, and to only the ``K`` tokens older than that chosen per query by signature Hamming
similarity (ties to the older token) — the layer's LearnedHash, else the SimHash a
``VidHashState`` memory would use (``n_bits``, ``seed`` + layer) — merged by log-sum-exp: the
same attention generation computes with a memory that holds every older token
(:mod:`vidhash.models.selection`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders import PeftAdapterMixin
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

from ..attention import dense_attention, fused_attention_lse, merge_attention
from ..hashing import LearnedHash, SimHash
from ..memory import HashedMemory, MemoryRead
from .selection import check_select, chunk_select

PREDICTIONS = ("velocity", "sample")  # what the last layer produces (the forward always returns a velocity)


@dataclass
class TemporalContext:
    """What one layer's temporal attention sees besides the chunk itself.

    ``k``, ``v``: ``(batch, heads, tokens, head_dim)`` keys/values of the context frames (the
    window), attended exactly; None for none. ``memory``: read as ``read`` says (``top_k``
    entries per query, None for all; ``mass_cap``) and merged by log-sum-exp; None for none.
    """

    k: torch.Tensor | None = None
    v: torch.Tensor | None = None
    memory: HashedMemory | None = None
    read: MemoryRead = MemoryRead()


@dataclass
class FrameInputs:
    """What a forward derives from the frames' poses and actions alone — constant over the
    denoising steps and the commit pass of one chunk, so the pipeline builds it once per chunk
    (:meth:`VidHashTransformer3DModel.frame_inputs`) instead of once per pass.

    ``pos``: token position embedding ``(b, f, n, d)``; ``rope``: ``(cos, sin)`` ``(b, 1, f·n, e/2)``
    or None; ``rope_frames``: the same per frame ``((b f), 1, n, e/2)``; ``action``, ``pose``: the
    per-frame condition terms ``(b, f, d)``. ``shape``: ``(b, f, height, width)`` it was built for.
    """

    shape: tuple
    pos: torch.Tensor
    rope: tuple | None
    rope_frames: tuple | None
    action: torch.Tensor
    pose: torch.Tensor


@dataclass
class VidHashTransformerOutput(BaseOutput):
    """``sample`` (batch, frames, channels, height, width): the predicted velocity (noise − data).
    ``kv``: per layer, the temporal keys and values of these frames ``(batch, heads, frames·tokens, head_dim)``
    (only with ``return_kv=True``)."""

    sample: torch.Tensor
    kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None


def fourier_features(x: torch.Tensor, num_freqs: int, period: float) -> torch.Tensor:
    """``x (..., k)`` → ``(..., 2·k·num_freqs)``: sin/cos at periods ``period / 2^i``."""
    freqs = 2 * math.pi * (2.0 ** torch.arange(num_freqs, device=x.device, dtype=torch.float32)) / period
    angles = x.float().unsqueeze(-1) * freqs  # (..., k, num_freqs)
    return torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(-2)


def rope_angles(xy: torch.Tensor, head_dim: int, period: float) -> torch.Tensor:
    """2-D rotary angles ``(..., head_dim / 2)`` for world positions ``xy (..., 2)``: the first half
    rotates with x, the second with y, each at ``head_dim / 4`` frequencies ``2π·k / period`` with
    integer ``k`` from 1 up to ``period / 8`` (geometric), so angles are periodic on the world torus."""
    if head_dim % 4:
        raise ValueError(f"rope needs head_dim divisible by 4, got {head_dim}")
    freqs = _rope_freqs(head_dim, float(period), xy.device)
    xy = torch.remainder(xy.float(), period)  # exact for these frequencies; keeps float32 angles small
    return torch.cat([xy[..., :1] * freqs, xy[..., 1:2] * freqs], dim=-1)


_ROPE_FREQS: dict = {}


def _rope_freqs(head_dim: int, period: float, device: torch.device) -> torch.Tensor:
    """The rope frequencies ``(head_dim / 4,)`` float32 on ``device``, built once per (head_dim,
    period, device): building them from a Python list is a host→device copy (a sync on CUDA)."""
    key = (head_dim, period, str(device))
    freqs = _ROPE_FREQS.get(key)
    if freqs is None:
        n = head_dim // 4
        top = max(1.0, period / 8)
        ks = [max(round(top ** (i / max(n - 1, 1))), i + 1) for i in range(n)]
        freqs = _ROPE_FREQS[key] = 2 * math.pi * torch.tensor(ks, device=device, dtype=torch.float32) / period
    return freqs


def apply_rope(x: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None) -> torch.Tensor:
    """Rotate pairs ``(x[..., i], x[..., i + e/2])`` of ``x (b, h, n, e)`` by the angles behind
    ``cos``/``sin`` ``(b, 1, n, e/2)`` (float32 math, ``x``'s dtype out); identity when ``cos`` is None.

    On a CPU without gradients, as ``x·[cos, cos] + swap(x)·[−sin, sin]`` (``swap`` exchanges the
    halves; the tables are built once per ``cos``/``sin``, :func:`_rope_tables`): per element the
    same two products and one sum (``a − b`` is ``a + (−b)``): bitwise the same values (a NaN stays
    NaN; its sign bit may differ), in 4 ops instead of 8."""
    if cos is None:
        return x
    xf = x.float()
    # the formula itself: on a GPU (a CUDA graph replays its kernels without this Python: kept
    # tables would go stale), when traced (one fused graph anyway) and with gradients
    if (xf.device.type != "cpu" or torch.compiler.is_compiling()
            or torch.is_grad_enabled() and any(t.requires_grad for t in (xf, cos, sin))):
        x1, x2 = xf.chunk(2, dim=-1)
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)
    c2, s2 = _rope_tables(cos, sin)
    half = xf.shape[-1] // 2
    swapped = torch.cat([xf[..., half:], xf[..., :half]], dim=-1)
    return (xf * c2).add_(swapped.mul_(s2)).to(x.dtype)


_ROPE_TABLES: list = []  # the last few (cos, sin, their versions, [cos, cos], [−sin, sin])


def _rope_tables(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``([cos, cos], [−sin, sin])`` along the last dimension, kept for the last 4 ``(cos, sin)``
    pairs (the same tensor objects at the same versions: a forward's spatial and temporal rope,
    reused over a chunk's passes)."""
    version = None if cos.is_inference() or sin.is_inference() else (cos._version, sin._version)
    for c, s, v, c2, s2 in _ROPE_TABLES:
        if c is cos and s is sin and v == version and version is not None:
            return c2, s2
    c2, s2 = torch.cat([cos, cos], dim=-1), torch.cat([-sin, sin], dim=-1)
    _ROPE_TABLES.insert(0, (cos, sin, version, c2, s2))
    del _ROPE_TABLES[4:]
    return c2, s2


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class QKV(nn.Module):
    """Projection to queries, keys, values ``(…, h, tokens, e)`` with optional RMS q/k norm."""

    def __init__(self, dim: int, heads: int, qk_norm: bool):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.to_qkv = nn.Linear(dim, 3 * dim)
        self.norm_q = nn.RMSNorm(self.head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.norm_k = nn.RMSNorm(self.head_dim, eps=1e-6) if qk_norm else nn.Identity()

    def forward(self, x: torch.Tensor, pattern: str = "b n (three h e)", rope: tuple | None = None):
        if pattern != "b n (three h e)":
            raise ValueError(f"QKV takes tokens as 'b n (three h e)', got {pattern!r}")
        # b n (three h e) -> three b h n e, as the einops rearrange it replaces (same views, less host work)
        y = self.to_qkv(x)
        q, k, v = y.reshape(*y.shape[:-1], 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.norm_q(q), self.norm_k(k)
        if rope is not None:  # q and k rotated in one pass (elementwise: the same values as one at a time)
            q, k = apply_rope(torch.stack([q, k]), *rope).unbind(0)
        return q, k, v


CPU_REFERENCE_ATTENTION = False
"""True: a CPU runs the float32 reference attention (``dense_attention``) in generation too, as
every version before 2026-12-04 did — for frames bitwise equal to theirs; the fused kernels'
outputs differ from the reference by ~1e-6."""


def _fused_default(q: torch.Tensor) -> bool:
    """Whether attention runs PyTorch's fused kernels by default: on CUDA, and on a CPU without
    gradients (generation: the CPU flash kernel, ~2× the float32 reference's speed at the world
    model's shapes, outputs within ~1e-6 of it) unless :data:`CPU_REFERENCE_ATTENTION`; training
    on a CPU keeps the reference."""
    return q.is_cuda or not (torch.is_grad_enabled() or CPU_REFERENCE_ATTENTION)


class SpatialAttention(nn.Module):
    """Dense attention among the tokens of each frame."""

    def __init__(self, dim: int, heads: int, qk_norm: bool):
        super().__init__()
        self.qkv = QKV(dim, heads, qk_norm)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rope: tuple | None = None) -> torch.Tensor:  # x (b, f, n, d)
        b, f, n, d = x.shape
        if rope is not None and rope[0].shape[2] != n:  # (b, 1, f·n, e/2) → per frame ((b f), 1, n, e/2)
            rope = spatial_rope(rope, f)
        q, k, v = self.qkv(x.reshape(b * f, n, d), "b n (three h e)", rope)
        out = F.scaled_dot_product_attention(q, k, v) if _fused_default(q) else dense_attention(q, k, v)
        h, e = out.shape[1], out.shape[3]  # (b f) h n e -> b f n (h e)
        return self.proj(out.reshape(b, f, h, n, e).permute(0, 1, 3, 2, 4).reshape(b, f, n, h * e))


class TemporalAttention(nn.Module):
    """The chunk's tokens attend exactly to context + chunk tokens, merged with a memory read.

    Three ways to attend exactly (step 1 of :meth:`forward`), one per use:

    * :meth:`_full` — generation: every query to the window's frames (``ctx.k``, ``ctx.v``) and
      the chunk's own;
    * :meth:`_chunk_causal` — training (``causal_frames``, no context): frames grouped in chunks of
      that many, a chunk attends to itself and earlier chunks only, as at generation time;
    * :func:`~vidhash.models.selection.chunk_select` — training with generation's selection
      (``select``): earlier chunks beyond ``window_frames`` are read through a per-query
      top-``top_k`` selection by signatures, as a memory read would.

    Then (step 2) a ``HashedMemory`` in the context is read for everything older and merged by
    log-sum-exp. On CUDA, and on a CPU without gradients, the exact part runs fused (SDPA / flash)
    and returns no lse when there is no memory read to merge it with; the float32 reference
    (``dense_attention``) when training on a CPU.
    """

    def __init__(self, dim: int, heads: int, qk_norm: bool, hash_bits: int = 0, hash_hidden: int = 128, seed: int = 0):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = QKV(dim, heads, qk_norm)
        self.proj = nn.Linear(dim, dim)
        self.memory_hash = LearnedHash(self.head_dim, hash_bits, heads, hash_hidden, seed=seed) if hash_bits else None
        self._recorder = None  # callable(q, k): set by VidHashTransformer3DModel.record_temporal_qk

    def forward(self, x: torch.Tensor, ctx: TemporalContext | None, causal_frames: int | None = None,
                select: dict | None = None, rope: tuple | None = None):
        b, f, n, d = x.shape
        q, k, v = self._project(x, ctx, rope)
        scale = self.head_dim**-0.5
        reads_memory = ctx is not None and ctx.memory is not None
        # 1. exact part: context frames (window) + the chunk's own frames
        k_all = k if ctx is None or ctx.k is None else torch.cat([ctx.k.to(k.dtype), k], dim=2)
        v_all = v if ctx is None or ctx.v is None else torch.cat([ctx.v.to(v.dtype), v], dim=2)
        if select is not None:
            out, lse = chunk_select(q, k, v, n * causal_frames, n * select["window_frames"], select["top_k"],
                                    select["hasher"], scale, select.get("hash_grad", True))
        elif causal_frames is not None:
            out, lse = self._chunk_causal(q, k_all, v_all, n * causal_frames, scale, need_lse=reads_memory)
        else:
            out, lse = self._full(q, k_all, v_all, scale, need_lse=reads_memory)
        # 2. hashed memory: everything older than the context, merged by log-sum-exp
        if reads_memory:
            m_out, m_lse = _memory_read(ctx.memory, q, ctx.read, scale)
            out, lse = merge_attention(out, lse, m_out, m_lse)
        # 3. heads back to tokens, output projection
        h, e = out.shape[1], out.shape[3]  # b h (f n) e -> b f n (h e)
        return self.proj(out.reshape(b, h, f, n, e).permute(0, 2, 3, 1, 4).reshape(b, f, n, h * e)), (k, v)

    def kv(self, x: torch.Tensor, ctx: TemporalContext | None, rope: tuple | None = None):
        """The keys and values :meth:`forward` returns for ``x (b, f, n, d)`` — the same tensors —
        without attending (a commit pass's last layer needs nothing else)."""
        return self._project(x, ctx, rope)[1:]

    def _project(self, x: torch.Tensor, ctx: TemporalContext | None, rope: tuple | None):
        """Queries, keys, values of ``x (b, f, n, d)``; the recorder sees them, and a state's memory
        waiting for this model's learned hash gets it (read and written with it)."""
        b, f, n, d = x.shape
        q, k, v = self.qkv(x.reshape(b, f * n, d), "b n (three h e)", rope)
        if self._recorder is not None:
            self._recorder(q.detach(), k.detach())
        if ctx is not None and ctx.memory is not None and self.memory_hash is not None and ctx.memory.needs_hasher:
            _bind_memory_hash(ctx.memory, self.memory_hash)  # a state's memory for this model: read with its learned hash
        return q, k, v

    @staticmethod
    def _full(q, k, v, scale: float, need_lse: bool, fused: bool | None = None):
        """Every query to every key: ``(out, lse)``. ``fused`` (default: on CUDA, and on a CPU
        without gradients): flash SDPA, lse None, when it is not needed, else fused attention that
        also returns it; the float32 reference (``dense_attention``) otherwise."""
        fused = _fused_default(q) if fused is None else fused
        if fused and not need_lse:
            return F.scaled_dot_product_attention(q, k, v, scale=scale), None
        if fused:
            return fused_attention_lse(q, k, v, scale=scale)  # (the dense reference when gradients are needed)
        return dense_attention(q, k, v, scale=scale, return_lse=True)

    @staticmethod
    def _chunk_causal(q, k, v, chunk_tokens: int, scale: float, need_lse: bool = True, fused: bool | None = None):
        """Query chunk ``[start, stop)`` to keys up to ``stop`` (the keys' extra leading tokens, a
        context, seen by every chunk): ``(out, lse)``. ``fused`` (default: on CUDA) and no lse
        needed: SDPA per chunk, lse None; else the float32 reference chunk by chunk."""
        fused = q.is_cuda if fused is None else fused
        nq, nk = q.shape[2], k.shape[2]
        bounds = [(start, min(start + chunk_tokens, nq)) for start in range(0, nq, chunk_tokens)]
        if fused and not need_lse:
            return torch.cat([F.scaled_dot_product_attention(q[:, :, a:z], k[:, :, : nk - nq + z], v[:, :, : nk - nq + z],
                                                             scale=scale) for a, z in bounds], 2), None
        outs, lses = [], []
        for a, z in bounds:
            o, l = dense_attention(q[:, :, a:z], k[:, :, : nk - nq + z], v[:, :, : nk - nq + z], scale=scale, return_lse=True)
            outs.append(o)
            lses.append(l)
        return torch.cat(outs, 2), torch.cat(lses, 2)


@torch.compiler.disable
def _memory_read(memory: HashedMemory, q: torch.Tensor, read: MemoryRead, scale: float):
    """``memory.attend`` outside any compiled graph: the read is data-dependent Python (top-k
    selection, Triton launches, a dense fallback chosen by size) over buffers that change
    between chunks, so under ``torch.compile`` it runs eagerly (one graph break) rather than
    being traced and guarded on per state."""
    return memory.attend(q, read.top_k, scale=scale, mass_cap=read.mass_cap, select=read.select)


@torch.compiler.disable
def _bind_memory_hash(memory: HashedMemory, hasher) -> None:
    memory.bind_hasher(hasher)


def spatial_rope(rope: tuple, frames: int) -> tuple:
    """Rope ``(cos, sin)`` ``(b, 1, f·n, e/2)`` of a clip → per frame ``((b f), 1, n, e/2)`` (what
    spatial attention takes)."""
    out = []
    for r in rope:  # b o (f n) e -> (b f) o n e
        b, o, t, e = r.shape
        out.append(r.reshape(b, o, frames, t // frames, e).permute(0, 2, 1, 3, 4).reshape(b * frames, o, t // frames, e))
    return tuple(out)


class VidHashBlock(nn.Module):
    """Spatial attention → temporal attention → MLP, each with adaLN-Zero on the per-frame condition."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, qk_norm: bool, hash_bits: int = 0,
                 hash_hidden: int = 128, seed: int = 0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.spatial = SpatialAttention(dim, heads, qk_norm)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.temporal = TemporalAttention(dim, heads, qk_norm, hash_bits, hash_hidden, seed)
        self.norm3 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 9 * dim))

    def forward(self, x, cond, ctx: TemporalContext | None = None, causal_frames: int | None = None,
                select: dict | None = None, rope: tuple | None = None, rope_frames: tuple | None = None):
        # x (b, f, n, d); cond (b, f, d); rope: (cos, sin) (b, 1, f·n, e/2) or None;
        # rope_frames: the same per frame ((b f), 1, n, e/2) (spatial_rope(rope, f)), or None to derive it here
        mods = self.ada(cond).unsqueeze(2).chunk(9, dim=-1)  # each (b, f, 1, d)
        x = x + mods[2] * self.spatial(modulate(self.norm1(x), mods[0], mods[1]),
                                       rope_frames if rope_frames is not None else rope)
        h, kv = self.temporal(modulate(self.norm2(x), mods[3], mods[4]), ctx, causal_frames, select, rope)
        x = x + mods[5] * h
        x = x + mods[8] * self.mlp(modulate(self.norm3(x), mods[6], mods[7]))
        return x, kv

    def kv(self, x, cond, ctx: TemporalContext | None = None, rope: tuple | None = None,
           rope_frames: tuple | None = None):
        """The temporal K/V :meth:`forward` returns (the same tensors), without the block's
        temporal attention, memory read and MLP."""
        mods = self.ada(cond).unsqueeze(2).chunk(9, dim=-1)
        x = x + mods[2] * self.spatial(modulate(self.norm1(x), mods[0], mods[1]),
                                       rope_frames if rope_frames is not None else rope)
        return self.temporal.kv(modulate(self.norm2(x), mods[3], mods[4]), ctx, rope)


class VidHashTransformer3DModel(ModelMixin, ConfigMixin, PeftAdapterMixin):
    r"""Pixel-space video diffusion transformer with hashed temporal memory.

    Args:
        in_channels: frame channels (3 for RGB pixels).
        patch_size: side of a square patch; height and width must be multiples of it.
        hidden_dim: token width; must be divisible by ``num_heads``.
        num_layers: blocks.
        num_heads: attention heads (spatial and temporal).
        mlp_ratio: MLP hidden width / hidden_dim.
        num_actions: discrete actions; id ``num_actions`` means "no action".
        pos_freqs: Fourier frequencies per axis for token and pose positions.
        pos_period: the longest period of the position embedding (the world size in pixels).
        sample_size: default frame side for generation.
        qk_norm: RMS-normalise queries and keys per head.
        memory_hash_bits: > 0 gives every layer's temporal attention a learned signature hash
            (``LearnedHash``, per head) of that many bits for its memory; 0: memories use SimHash.
        memory_hash_hidden: hidden width of the learned hash MLPs.
        rope: rotary embedding of each token's world (x, y) on the queries and keys of spatial and
            temporal attention (periodic on the ``pos_period`` torus): attention scores then
            depend on the offset between places, so "the same place seen earlier" is one
            pattern the model need not learn per position. Cached and memory keys are stored
            rotated. Needs ``head_dim`` divisible by 4.
        prediction: what the network's last layer produces. ``"velocity"``: the flow velocity
            ``noise − x0`` itself. ``"sample"``: the clean frame ``x0``, from which the forward
            derives the velocity ``(x_t − x0) / max(σ, sigma_min)`` (σ = timestep / 1000). The
            output is a velocity either way, so schedulers and pipelines need not know. A clean
            frame lies on a low-dimensional manifold; noise does not, and a patch of
            ``patch_size² · in_channels`` values through a token of about as many dimensions
            cannot carry it (Li & He, "Back to Basics: Let Denoising Generative Models Denoise",
            2025). The trainer regresses :meth:`velocity_target`.
        sigma_min: the floor of σ in the ``"sample"`` conversion (the velocity of a nearly clean
            frame would otherwise blow up).
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["VidHashBlock"]
    _skip_layerwise_casting_patterns = ["pos_embed", "norm", "time_proj", "memory_hash"]
    _keep_in_fp32_modules = ["memory_hash"]

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        patch_size: int = 8,
        hidden_dim: int = 128,
        num_layers: int = 3,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
        num_actions: int = 5,
        pos_freqs: int = 8,
        pos_period: float = 1024.0,
        sample_size: int = 64,
        qk_norm: bool = True,
        memory_hash_bits: int = 0,
        memory_hash_hidden: int = 128,
        rope: bool = False,
        prediction: str = "velocity",
        sigma_min: float = 0.05,
    ):
        super().__init__()
        self.check_arguments(hidden_dim=hidden_dim, num_heads=num_heads, memory_hash_bits=memory_hash_bits,
                             memory_hash_hidden=memory_hash_hidden, rope=rope, prediction=prediction, sigma_min=sigma_min)
        d = hidden_dim
        # 1. patch embedding and token positions
        self.patch_embed = nn.Linear(in_channels * patch_size**2, d)
        self.pos_embed = nn.Linear(4 * pos_freqs, d)
        # 2. per-frame condition: diffusion time + action + pose
        self.time_proj = Timesteps(d, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embed = TimestepEmbedding(d, d)
        self.action_embed = nn.Embedding(num_actions + 1, d)
        self.pose_embed = nn.Sequential(nn.Linear(4 * pos_freqs, d), nn.SiLU(), nn.Linear(d, d))
        # 3. blocks
        self.blocks = nn.ModuleList([
            VidHashBlock(d, num_heads, mlp_ratio, qk_norm, memory_hash_bits, memory_hash_hidden, seed=layer)
            for layer in range(num_layers)
        ])
        # 4. output: adaLN-modulated norm, then pixels of each patch
        self.norm_out = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))
        self.proj_out = nn.Linear(d, patch_size**2 * in_channels)
        self.gradient_checkpointing = False
        self._init_weights()

    @staticmethod
    def check_arguments(hidden_dim: int, num_heads: int, memory_hash_bits: int, memory_hash_hidden: int, rope: bool,
                        prediction: str, sigma_min: float, prefix: str = "", **_) -> None:
        """The constructor's value checks (its signature checks names and types:
        :func:`vidhash.presets.model_arguments`); ValueError naming the argument, ``prefix`` before it."""
        if prediction not in PREDICTIONS:
            raise ValueError(f"{prefix}prediction must be one of {', '.join(PREDICTIONS)}, got {prediction!r}")
        if not 0.0 < sigma_min < 1.0:
            raise ValueError(f"{prefix}sigma_min must be in (0, 1), got {sigma_min}")
        if hidden_dim % num_heads:
            raise ValueError(f"{prefix}hidden_dim ({hidden_dim}) must be divisible by {prefix}num_heads ({num_heads})")
        if rope and (hidden_dim // num_heads) % 4:
            raise ValueError(f"{prefix}rope needs head_dim (hidden_dim / num_heads = {hidden_dim // num_heads}) divisible by 4")
        if memory_hash_bits < 0 or memory_hash_hidden < 1:
            raise ValueError(f"{prefix}memory_hash_bits must be ≥ 0 and {prefix}memory_hash_hidden ≥ 1, got "
                             f"{memory_hash_bits}, {memory_hash_hidden}")

    # ------------------------------------------------------------------ init
    def _init_weights(self) -> None:
        """DiT init: xavier linears, adaLN modulations and the output projection at zero."""
        for module in self.modules():  # (LearnedHash keeps its own seeded init: it has no nn.Linear)
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.action_embed.weight, std=0.02)
        for ada in [b.ada for b in self.blocks] + [self.ada_out]:
            nn.init.zeros_(ada[-1].weight)
            nn.init.zeros_(ada[-1].bias)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    @torch.no_grad()
    def randomize_(self, seed: int = 0, std: float = 0.02) -> VidHashTransformer3DModel:
        """Give the zero-initialised layers (adaLN, output) seeded random weights, so an untrained
        model exercises every path (smoke tests, benchmarks). Returns self."""
        g = torch.Generator().manual_seed(seed)
        for ada in [b.ada for b in self.blocks] + [self.ada_out]:
            w = ada[-1].weight
            w.copy_(torch.randn(w.shape, generator=g) * std)
        self.proj_out.weight.copy_(torch.randn(self.proj_out.weight.shape, generator=g) * std)
        return self

    # ------------------------------------------------------------------ learned memory signatures
    def _apply(self, fn, recurse=True):
        """Casts (``.to(dtype)``, ``.half()``) leave the learned hashes in float32: signatures
        are sign bits of their projections, which low precision would flip."""
        super()._apply(fn, recurse)
        for block in getattr(self, "blocks", []):
            h = block.temporal.memory_hash
            if h is not None and any(p.dtype != torch.float32 for p in h.parameters()):
                h.float()
        return self

    def memory_hashers(self) -> list[LearnedHash] | None:
        """Each layer's learned memory hash, or None when the model has none (memories use SimHash)."""
        if not self.config.memory_hash_bits:
            return None
        return [block.temporal.memory_hash for block in self.blocks]

    def set_memory_hash(self, bits: int, hidden: int = 128, hashers: list[LearnedHash] | None = None) -> None:
        """Give every layer a fresh learned memory hash of ``bits`` bits (``hashers``: these ones,
        one per layer), or remove them with ``bits=0``; the config follows (``save_pretrained``
        saves them)."""
        if hashers is not None and len(hashers) != len(self.blocks):
            raise ValueError(f"need one hasher per layer ({len(self.blocks)}), got {len(hashers)}")
        device = self.patch_embed.weight.device
        for layer, block in enumerate(self.blocks):
            if not bits:
                block.temporal.memory_hash = None
                continue
            h = hashers[layer] if hashers is not None else LearnedHash(self.head_dim, bits, self.config.num_heads, hidden, seed=layer)
            if (h.n_bits, h.heads, h.head_dim) != (bits, self.config.num_heads, self.head_dim):
                raise ValueError(f"hasher {layer} is ({h.n_bits} bits, {h.heads} heads, head_dim {h.head_dim}); "
                                 f"the model needs ({bits}, {self.config.num_heads}, {self.head_dim})")
            block.temporal.memory_hash = h.to(device=device, dtype=torch.float32).eval()
        self.register_to_config(memory_hash_bits=int(bits), memory_hash_hidden=int(hidden))

    def selection_hashers(self, n_bits: int = 32, seed: int = 0) -> list:
        """The hasher each layer selects older tokens with under ``temporal_select``: its
        learned hash, else ``SimHash(head_dim, n_bits, heads, seed=seed + layer)`` — the one a
        ``VidHashState`` memory of that ``n_bits``/``seed`` uses."""
        learned = self.memory_hashers()
        if learned is not None:
            return learned
        key = (n_bits, seed)
        cache = self.__dict__.setdefault("_simhash_cache", {})
        if key not in cache:
            cache[key] = [SimHash(self.head_dim, n_bits, heads=self.config.num_heads, seed=seed + layer)
                          for layer in range(len(self.blocks))]
        return cache[key]

    def record_temporal_qk(self):
        """Context manager: per layer, a list that receives ``(q, k)`` ``(b, h, tokens, head_dim)``
        of every temporal attention call inside it (detached).

        >>> with model.record_temporal_qk() as rec:   # rec[layer] == [(q, k), ...]
        ...     model(x, t)
        """
        from contextlib import contextmanager

        @contextmanager
        def recording():
            records = [[] for _ in self.blocks]
            for layer, block in enumerate(self.blocks):
                block.temporal._recorder = lambda q, k, r=records[layer]: r.append((q, k))
            try:
                yield records
            finally:
                for block in self.blocks:
                    block.temporal._recorder = None

        return recording()

    def _check_select(self, select: dict, causal_frames: int | None, context) -> dict:
        """``temporal_select`` checked (:func:`~vidhash.models.selection.check_select`), with each layer's hasher."""
        check_select(select, causal_frames, context, self.config.memory_hash_bits)
        return dict(select, hashers=self.selection_hashers(select.get("n_bits", 32), select.get("seed", 0)))

    # ------------------------------------------------------------------ helpers
    def _prediction_sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        """σ as the ``"sample"`` conversion divides by it: floored at ``sigma_min``."""
        return sigma.float().clamp(min=self.config.get("sigma_min", 0.05))

    def velocity_target(self, x_t: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor,
                        sigma: torch.Tensor) -> torch.Tensor:
        """What this model's output should equal for frames ``x_t = (1 − σ)·x0 + σ·noise``
        (σ broadcast over ``x_t``): ``noise − x0``; for ``prediction="sample"`` the velocity its
        forward derives from the true ``x0``, ``(x_t − x0) / max(σ, sigma_min)`` — the same above
        ``sigma_min``, and below it the loss stays ``‖x̂0 − x0‖² / sigma_min²``, zero for a perfect
        ``x̂0`` (a clean chunk, σ = 0, gets no loss anyway)."""
        if self.config.get("prediction", "velocity") == "sample":
            return (x_t.float() - x0.float()) / self._prediction_sigma(sigma)
        return noise - x0

    @property
    def head_dim(self) -> int:
        return self.config.hidden_dim // self.config.num_heads

    def tokens_per_frame(self, height: int, width: int) -> int:
        p = self.config.patch_size
        if height % p or width % p:
            raise ValueError(f"height and width ({height}×{width}) must be divisible by the patch size {p}")
        return (height // p) * (width // p)

    def token_positions(self, poses: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """World (x, y) of each patch centre ``(b, f, n, 2)`` for frame poses ``(b, f, 2)`` (view centres)."""
        p = self.config.patch_size
        ys = (torch.arange(height // p, device=poses.device, dtype=torch.float32) + 0.5) * p - height / 2
        xs = (torch.arange(width // p, device=poses.device, dtype=torch.float32) + 0.5) * p - width / 2
        offsets = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).reshape(-1, 2)  # (n, 2) as (x, y)
        return poses.float().unsqueeze(2) + offsets

    def frame_inputs(self, actions: torch.Tensor | None, poses: torch.Tensor | None, batch: int, frames: int,
                     height: int, width: int, device: torch.device | None = None) -> FrameInputs:
        """Everything a forward derives from ``actions`` ``(b, f)`` and ``poses`` ``(b, f, 2)`` (None: no
        action / positions within the frame): token position embedding, rope, action and pose
        condition terms. Pass it as ``forward(..., frame_inputs=...)`` to reuse it over passes on
        the same frames; the result is the same as computing it in each forward."""
        cfg = self.config
        dtype = self.patch_embed.weight.dtype
        device = device if device is not None else self.patch_embed.weight.device
        b, f = batch, frames
        if poses is None:
            poses = torch.zeros(b, f, 2, device=device)
        if actions is None:
            actions = torch.full((b, f), cfg.num_actions, dtype=torch.long, device=device)
        xy = self.token_positions(poses, height, width)  # (b, f, n, 2)
        pos = self.pos_embed(fourier_features(xy, cfg.pos_freqs, cfg.pos_period).to(dtype))
        rope = rope_frames = None
        if cfg.get("rope", False):
            ang = rope_angles(xy.reshape(b, 1, -1, 2), self.head_dim, cfg.pos_period)
            rope = (ang.cos(), ang.sin())
            rope_frames = spatial_rope(rope, f)
        action = self.action_embed(actions)
        pose = self.pose_embed(fourier_features(poses, cfg.pos_freqs, cfg.pos_period).to(dtype))
        return FrameInputs((b, f, height, width), pos, rope, rope_frames, action, pose)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        actions: torch.Tensor | None = None,
        poses: torch.Tensor | None = None,
        context: list[TemporalContext] | None = None,
        causal_frames: int | None = None,
        return_kv: bool = False,
        return_dict: bool = True,
        temporal_select: dict | None = None,
        frame_inputs: FrameInputs | None = None,
        kv_only: bool = False,
    ):
        r"""
        Args:
            hidden_states: noisy frames ``(batch, frames, channels, height, width)``.
            timestep: per-frame diffusion time ``(batch, frames)`` in ``[0, 1000]`` (0 = clean).
            actions: ``(batch, frames)`` int ids, ``num_actions`` = none; None for none.
            poses: ``(batch, frames, 2)`` world (x, y) of each view centre; None for positions within the frame.
            context: per layer, what temporal attention sees besides these frames (window K/V, memory).
            causal_frames: without a context, make temporal attention chunk-causal in chunks of this many frames.
            return_kv: also return each layer's temporal K/V of these frames (for the window cache).
            temporal_select: with ``causal_frames`` (and no context), train with the selection
                generation uses: ``{"window_frames": W, "top_k": K}`` — each chunk attends exactly
                to itself and the ``W`` frames before it, and to only the ``K`` older tokens per
                query with the most similar signatures (the layer's learned hash, else SimHash
                with optional ``"n_bits"`` (32) and ``"seed"`` (0; layer ``l`` uses ``seed + l``), as
                ``VidHashState`` memories do), merged by log-sum-exp. ``"hash_grad"`` (True): a
                learned hash gets gradients through a straight-through term.
            frame_inputs: :meth:`frame_inputs` of these ``actions``/``poses`` (then ignored), built
                once and reused over passes on the same frames (the pipeline's denoising steps);
                the result is the same as without it.
            kv_only: with ``return_kv``, compute only what the K/V need — the last block stops
                after its temporal keys and values (no attention, memory read, MLP or output
                layer) — and return ``sample=None``; the K/V are the same tensors (a commit pass).

        Returns:
            ``VidHashTransformerOutput(sample, kv)`` or a tuple.
        """
        b, f = hidden_states.shape[:2]
        if kv_only and not return_kv:
            raise ValueError("kv_only=True computes only the K/V: it needs return_kv=True")
        select, frame_inputs = self._check_inputs(hidden_states, timestep, actions, poses, context, causal_frames,
                                                  temporal_select, frame_inputs)
        # 1. patchify and add token positions
        x = self._patchify(hidden_states) + frame_inputs.pos
        # 2. per-frame condition: diffusion time + action + pose
        t = self.time_proj(timestep.reshape(-1)).to(self.patch_embed.weight.dtype)
        cond = self.time_embed(t).reshape(b, f, -1) + frame_inputs.action + frame_inputs.pose
        # 3. blocks
        x, kvs = self._run_blocks(x, cond, context, causal_frames, select, frame_inputs, return_kv, kv_only)
        if kv_only:
            return VidHashTransformerOutput(sample=None, kv=kvs) if return_dict else (None, kvs)
        # 4. output and unpatchify; a sample prediction becomes the velocity that lands there from x_t
        out = self._unpatchify(x, cond, hidden_states.shape)
        if self.config.get("prediction", "velocity") == "sample":
            sigma = self._prediction_sigma(timestep / 1000.0)[:, :, None, None, None]
            out = ((hidden_states.float() - out.float()) / sigma).to(out.dtype)
        kv_out = kvs if return_kv else None
        if not return_dict:
            return (out, kv_out)
        return VidHashTransformerOutput(sample=out, kv=kv_out)

    def _check_inputs(self, hidden_states, timestep, actions, poses, context, causal_frames, temporal_select,
                      frame_inputs) -> tuple[dict | None, FrameInputs]:
        """Shape errors naming the argument; returns (the checked ``temporal_select`` with each
        layer's hasher or None, ``frame_inputs`` — built here when not given)."""
        b, f, c, height, width = hidden_states.shape
        self.tokens_per_frame(height, width)
        if timestep.shape != (b, f):
            raise ValueError(f"timestep must be (batch, frames) = {(b, f)}, got {tuple(timestep.shape)}")
        if context is not None and len(context) != self.config.num_layers:
            raise ValueError(f"context must have one entry per layer ({self.config.num_layers}), got {len(context)}")
        select = None if temporal_select is None else self._check_select(temporal_select, causal_frames, context)
        if frame_inputs is None:
            frame_inputs = self.frame_inputs(actions, poses, b, f, height, width, device=hidden_states.device)
        elif frame_inputs.shape != (b, f, height, width):
            raise ValueError(f"frame_inputs were built for (batch, frames, height, width) = {frame_inputs.shape}, "
                             f"the input is {(b, f, height, width)}")
        return select, frame_inputs

    def _patchify(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames ``(b, f, c, H, W)`` → patch tokens ``(b, f, n, d)``."""
        b, f, c, height, width = frames.shape
        p = self.config.patch_size  # b f c (y p) (x q) -> b f (y x) (p q c)
        x = frames.reshape(b, f, c, height // p, p, width // p, p).permute(0, 1, 3, 5, 4, 6, 2)
        return self.patch_embed(x.reshape(b, f, (height // p) * (width // p), p * p * c).to(self.patch_embed.weight.dtype))

    def _run_blocks(self, x, cond, context, causal_frames, select, frame_inputs: FrameInputs, return_kv: bool,
                    kv_only: bool = False):
        """Every block in turn (gradient checkpointing when enabled and training); returns (x, per
        layer temporal K/V — empty unless ``return_kv``). ``kv_only``: the last block gives its K/V
        alone (:meth:`VidHashBlock.kv`) and x is returned as it entered that block."""
        kvs = []
        for i, block in enumerate(self.blocks):
            ctx = None if context is None else context[i]
            sel = None if select is None else {**select, "hasher": select["hashers"][i]}
            if kv_only and i == len(self.blocks) - 1 and sel is None and causal_frames is None:
                kvs.append(block.kv(x, cond, ctx, frame_inputs.rope, frame_inputs.rope_frames))
                break
            args = (x, cond, ctx, causal_frames, sel, frame_inputs.rope, frame_inputs.rope_frames)
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                x, kv = self._gradient_checkpointing_func(block, *args)
            else:
                x, kv = block(*args)
            if return_kv:
                kvs.append(kv)
        return x, kvs

    def _unpatchify(self, x: torch.Tensor, cond: torch.Tensor, shape) -> torch.Tensor:
        """Tokens ``(b, f, n, d)`` → adaLN-modulated norm, pixels of each patch → frames of ``shape``."""
        b, f, c, height, width = shape
        p = self.config.patch_size
        shift, scale = self.ada_out(cond).unsqueeze(2).chunk(2, dim=-1)
        x = self.proj_out(modulate(self.norm_out(x), shift, scale))
        y_, x_ = height // p, width // p  # b f (y x) (p q c) -> b f c (y p) (x q)
        return x.reshape(b, f, y_, x_, p, p, c).permute(0, 1, 6, 2, 4, 3, 5).reshape(b, f, c, height, width)
