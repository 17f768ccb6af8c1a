"""Diffusers drop-in: hash attention inside diffusers' own video transformers.

Letters: b batch, n tokens, h heads, d head_dim.

    transformer = vidhash.enable_hash_attention(transformer, density=0.125, block_size=64)
    ...                                   # run the pipeline as usual
    vidhash.disable_hash_attention(transformer)

diffusers keys its attention backends by a closed enum, so the drop-in swaps attention
*processors* (``set_attn_processor``) and keeps the originals to put them back.

What is swapped, per supported class (:data:`SUPPORTED_CLASSES`; a class the installed diffusers
lacks is skipped):

* ``WanTransformer3DModel``, ``WanVACETransformer3DModel`` (its ``blocks`` and ``vace_blocks``),
  ``SkyReelsV2Transformer3DModel`` — every block's self-attention ``attn1`` →
  :class:`WanHashAttnProcessor`: q/k norms and rotary embedding exactly as diffusers applies
  them, then hash attention over the video tokens. The text (and I2V image) cross-attention
  ``attn2`` keeps its processor object.
* ``LTXVideoTransformer3DModel`` — every block's ``attn1`` → :class:`LTXHashAttnProcessor`.
* ``CogVideoXTransformer3DModel`` — every block's joint text+video attention ``attn1`` →
  :class:`CogVideoXHashAttnProcessor`. Text tokens are always kept, as sinks: a video query
  attends densely to the text keys and by hash attention to the video keys, the two merged
  exactly by log-sum-exp; a text query (there are few) attends densely to every key.

Refused with a ValueError that says why (:data:`REFUSED_CLASSES`): ``HunyuanVideoTransformer3DModel``
and ``MochiTransformer3DModel``, whose joint text+video attention takes a text padding mask.

``density=1.0`` does not run hash attention at all: each processor computes q/k/v as diffusers
does and calls the same attention function as the stock processor (diffusers'
``dispatch_attention_fn`` with the processor's backend; CogVideoX: ``F.scaled_dot_product_attention``),
so the outputs equal the stock model's bit for bit.

**Attention backends.** ``transformer.set_attention_backend(name)`` reaches the hash processors
too: at ``density=1.0`` it is honoured (the call above takes it); at ``density < 1`` only
``"native"`` is accepted (hash attention is vidhash's own) and any other backend raises a
ValueError, from ``set_attention_backend``, from ``enable_hash_attention`` (a backend set before)
or at the call (diffusers' ``attention_backend`` context manager).

**Dense warmup.** As Sparse VideoGen, SVG2 and Radial Attention, for fidelity to the dense model:
``dense_layers=N`` has the first N self-attention modules (:func:`self_attention_modules` order)
take the ``density=1.0`` path at every call; ``dense_timestep=T`` has every self-attention take it
while the transformer's ``timestep`` argument is ≥ T — a forward pre-hook (replaced on enabling
again, removed on disabling) sets a shared :class:`DenseGate`'s Python bool before each call, which
compiled blocks guard on; the hook's body is eager (``torch.compiler.disable``: one graph break at
the top of a compiled forward, none inside it). :func:`dense_timestep_for` gives T for the first k steps of a schedule.

**State.** The processors are the truth: :func:`is_hash_attention_enabled` is True only while
every self-attention module holds a hash processor; after an outside ``set_attn_processor``
it is False, and enabling again starts afresh from the processors then in place.

**Hashers.** While enabled, each self-attention module carries its hasher as a registered
submodule ``vidhash_hasher`` (one module shared by every layer unless per-layer hashers are
given), so ``transformer.to(device / dtype)`` moves and casts them. They are left out of
``state_dict()`` (so ``save_pretrained`` writes a stock diffusers checkpoint that any diffusers
loads) and travel in their own file: :func:`save_hashers` writes ``vidhash_hashers.safetensors``
(beside the weights), and ``enable_hash_attention(Model.from_pretrained(folder), hashers=folder)``
restores them. ``vidhash calibrate`` fits them (:mod:`vidhash.integrations.calibrate`).

**FlexAttention.** ``backend="flex"`` keeps vidhash's selection (:func:`~vidhash.attention.select_blocks`
with ``backend="auto"``: the one ``hash_attention`` runs with its default backend) and
has PyTorch's FlexAttention attend to the selected blocks (:mod:`vidhash.integrations.flex`;
compiled on CUDA, eager elsewhere) — to compare its kernel with vidhash's on the same blocks
(``vidhash bench dropin``). Its clips equal the default backend's up to rounding.

Enabling an enabled model re-configures it; the originals kept from the first call are still
the ones :func:`disable_hash_attention` puts back. Not supported, with an error rather than a
silent fallback: an ``attention_mask`` in self-attention, context parallelism, and
self-attention processors that are not diffusers' own.
"""
from __future__ import annotations

import inspect
import math
import os
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..attention import (READS_SIGNATURES, add_remainder, check_remainder, default_scorer, dense_attention,
                         fused_attention_lse, hash_attention, merge_attention, select_blocks)
from ..hashing import SimHash
from ..ops.checks import BACKENDS, check_selection_args

SUPPORTED_CLASSES = (
    "WanTransformer3DModel", "WanVACETransformer3DModel", "SkyReelsV2Transformer3DModel",
    "LTXVideoTransformer3DModel", "CogVideoXTransformer3DModel",
)
REFUSED_CLASSES = {
    "HunyuanVideoTransformer3DModel": "its joint text+video attention takes a text padding mask (and single-stream "
    "blocks mix text and video in one sequence); hash attention does not serve it",
    "MochiTransformer3DModel": "its joint text+video attention runs per sample over the unpadded text tokens; "
    "hash attention does not serve it",
}
CONFIG_KEYS = ("density", "block_size", "query_block_size", "local_blocks", "sink_blocks", "scorer", "hasher",
               "hashers", "n_bits", "seed", "backend", "remainder", "dense_layers", "dense_timestep", "layer_densities",
               "reuse_mass", "mass_query_stride", "mass_refresh", "reuse_delta", "delta_half_life")
HASHER_ATTR = "vidhash_hasher"
"""Name of the hasher submodule on each swapped attention module while enabled."""
SCORER_ATTR = "vidhash_scorer"
"""Name of the learned block scorer submodule on each swapped attention module (``scorer=`` a module)."""

_CONFIG_ATTR = "_vidhash_config"
_ORIGINALS_ATTR = "_vidhash_original_processors"
_HOOKS_ATTR = "_vidhash_state_dict_hooks"
_TIMESTEP_HOOK_ATTR = "_vidhash_timestep_hook"
_GATE_ATTR = "_vidhash_dense_gate"  # the pre-hook finds the gate on the module it runs for (a deepcopy: its own)
_DENSE_OPTIONS = ("dense_layers", "dense_timestep", "layer_densities", "reuse_mass", "mass_query_stride", "mass_refresh",
                  "reuse_delta", "delta_half_life")
# ^ read by the processors and the hook, not by hash_attention
_DENSE_OK_BACKENDS = (None, "native")
_MASS_CHUNK_CUDA = 1 << 27  # reuse_mass on a GPU: score chunks of 2^27 floats (512 MiB), a few launches per layer
DROP_IN_BACKENDS = (*BACKENDS, "flex")
"""``backend=`` of the drop-in: :data:`vidhash.attention.BACKENDS`, or ``"flex"`` (vidhash's selection,
FlexAttention's kernel)."""


DEFAULT_MIN_QUERY_BLOCK = 64
"""The drop-in's query blocks are at least this many tokens unless ``query_block_size`` is given.
Key blocks of 16 with query blocks of 16 made 16-row query tiles: on wan-mini at 1/8 (H100, 2026-12-05)
a step took 20.4 ms with the step-8,606 weights, slower than dense (17.8), and 12.0 ms with query blocks
of 64 on the shipped (step-9,897) ones; on the same recorded activations the layer error with query
blocks of 64 was about 5 % higher than with 16 (0.0201 / 0.0191; BENCHMARKS.md "Drop-in on wan-mini")."""


def default_query_block(block_size: int) -> int:
    """The drop-in's query block size when none is given: ``max(block_size, DEFAULT_MIN_QUERY_BLOCK)``."""
    return max(block_size, DEFAULT_MIN_QUERY_BLOCK)


@dataclass(frozen=True)
class DropInConfig:
    """Hash attention settings of one enabled model (stored as ``transformer._vidhash_config``).
    ``query_block_size`` None becomes :func:`default_query_block` of ``block_size`` on construction
    (so ``dataclasses.replace(cfg, block_size=b)`` keeps the old query block: pass
    ``query_block_size=None`` with it for the default of ``b``).

    ``scorer`` ranks the key blocks (:data:`vidhash.attention.SCORERS`: ``"pooled"``, the
    default — exact mean-pooled q·k, which kept 0.99-1.0 of the oracle's mass on the trained
    wan-mini and selected faster than SimHash there (BENCHMARKS.md, "Drop-in on wan-mini") —
    ``"simhash"`` (the default when ``hasher``, ``hashers``, ``n_bits`` or ``seed`` is given),
    ``"parent"`` (for key blocks under 64 tokens), ``"moments"``, ``"subgrid"`` (4 query sub-centroids: keeps more
    than pooled with key blocks of 16 on wan-mini), ``"prefilter"``; or a learned block scorer, one module or a dict by module name). ``hasher`` (read by ``"simhash"`` and ``"prefilter"``) is ``None``
    (the default SimHash: 32 bits, seed 0), one module shared by every layer, or a dict from
    self-attention module name (``"blocks.0.attn1"``) to a module. ``backend``: one of
    :data:`DROP_IN_BACKENDS` (``"flex"``: the selection on ``"auto"``, FlexAttention attends).

    Dense warmup (as Sparse VideoGen, SVG2 and Radial Attention keep full attention where the
    layout is decided — their main lever for fidelity to the dense model): ``dense_layers`` — the
    first N self-attention modules (:func:`self_attention_modules` order) run the model's own dense
    attention call (the ``density=1.0`` path) at every step; ``dense_timestep`` — while the
    transformer is called with a ``timestep`` ≥ it (its max over the batch; diffusers' 1000 is pure
    noise), every self-attention runs dense (:func:`dense_timestep_for` turns "the first k steps"
    into this threshold).

    ``remainder`` (:data:`vidhash.attention.REMAINDERS`): ``"mean"`` adds, per query, one mean token
    for each key block its selection did not keep (:func:`vidhash.attention.block_mean_remainder`).

    ``layer_densities``: ``{self-attention module name: density}`` for the modules that should keep
    more (or fewer) key blocks than ``density`` — e.g. the one layer whose attention is both spread
    and sharp; ``1.0`` makes that module dense. Given as a dict, stored as sorted ``(name, density)``
    pairs.

    ``reuse_mass`` (needs ``dense_timestep``): the sparse steps after the dense ones select from the
    exact attention mass of the *last dense step* instead of a scorer — each self-attention keeps
    that step's queries (every ``mass_query_stride``-th) and keys; before the first sparse call
    (in the ``dense_timestep`` pre-hook, eager) each sums its exact softmax per (query block, key
    block) (:func:`vidhash.selection.oracle.block_mass`, chunked, float32; the block-mass kernel on
    CUDA) and keeps, per query block, the forced blocks and then the heaviest ones
    (:func:`vidhash.selection.select_from_mass`): one mass pass per layer and clip, no scorer
    at the sparse steps. A later dense step (the next clip) starts afresh. Memory: per layer, the
    keys and ``1/mass_query_stride`` of the queries of one step, kept until the next call.
    Under ``torch.compile`` every call stays one graph (the copies are traced, the mass pass is
    outside), and ``compile_repeated_blocks(fullgraph=True)`` takes it.
    ``mass_refresh`` N > 0: every N-th sparse call keeps its own strided queries and keys, and the
    calls after it select from their mass (measured in the pre-hook before the next call: a pass over
    ``1/mass_query_stride`` of the queries, no dense step), for steps far from the dense ones;
    under ``torch.compile`` the keeping call is a second variant of the graph, no break.

    ``reuse_delta`` (needs ``reuse_mass``, without ``mass_refresh``): the pre-hook that measures the
    mass also attends, on the last dense step's whole q, k, v, both densely and as the sparse steps
    will (the reused selection, the ``remainder``), and keeps the difference ``delta = dense −
    sparse`` (``(b, h, n, e)`` in v's dtype; added in float32); every sparse call adds it to its output — the dense step's
    output plus the change of the sparse one since, as step caches of diffusion transformers do.
    ``delta_half_life`` (sparse steps, default 16; None: no decay): the pre-hook halves the delta's
    weight every that many new timesteps, as it ages (a step's several calls — guidance branches —
    count once; note that they all get the delta of the last dense *call*, e.g. the unconditional
    branch's in diffusers' Wan pipeline: measured only without guidance so far). On wan-mini's recorded activations (1/8, the
    mean remainder, 3 dense steps) it cut the layer error from 0.022 to 0.003 at the first sparse step
    and to about half of the mean remainder's alone by the sixth; with the half-life of 16 it stayed
    at or below it to the last step (docs/diffusers.md). A sparse call before any dense step adds
    nothing. Memory: per layer, the dense step's full q and v (and its output) until the pre-hook, on
    top of ``reuse_mass``'s keys — ``3·b·n·h·d`` elements in the model's dtype for every layer at once, at
    the end of the last dense call — then the delta, ``b·n·h·d`` (v's dtype) per layer for the rest of
    the clip: 3 GB at Wan 1.3B's 480p in bf16 (30 layers × 32,760 tokens × 1,536), 31 GB at Wan 14B's
    720p (40 × 75,600 × 5,120) — too much there.
    """

    density: float = 0.125
    block_size: int = 64
    query_block_size: int | None = None
    local_blocks: int = 1
    sink_blocks: int = 1
    scorer: str | nn.Module | dict[str, nn.Module] = "pooled"
    hasher: nn.Module | dict[str, nn.Module] | None = None
    backend: str = "auto"
    remainder: str = "none"
    dense_layers: int = 0
    dense_timestep: float | None = None
    layer_densities: tuple[tuple[str, float], ...] = ()
    reuse_mass: bool = False
    mass_query_stride: int = 4
    mass_refresh: int = 0
    reuse_delta: bool = False
    delta_half_life: float | None = 16.0

    def __post_init__(self):
        # query_block_size None: the key block's size, but at least DEFAULT_MIN_QUERY_BLOCK tokens
        # (resolved here, so every user of the config sees one number; a bad block_size is left to
        # check_selection_args, which names it)
        bk = self.block_size
        if self.query_block_size is None and isinstance(bk, int) and not isinstance(bk, bool) and bk > 0:
            object.__setattr__(self, "query_block_size", default_query_block(bk))

    def density_of(self, name: str) -> float:
        """The density of self-attention module ``name`` (``layer_densities``, else ``density``)."""
        return dict(self.layer_densities).get(name, self.density)

    @property
    def reads_hasher(self) -> bool:
        """Whether the scorer reads signatures (``"simhash"``, ``"prefilter"``)."""
        return isinstance(self.scorer, str) and self.scorer in READS_SIGNATURES

    def attention_kwargs(self) -> dict:
        """Keyword arguments for :func:`~vidhash.attention.hash_attention` (hasher and scorer aside)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("hasher", "scorer", *_DENSE_OPTIONS)}


class DenseGate:
    """The switch the ``dense_timestep`` pre-hook sets before every transformer call and the
    processors of one enabled model read: ``dense`` is a plain Python bool, so a compiled block
    guards on it (one recompilation when it flips) instead of breaking its graph."""

    def __init__(self) -> None:
        self.dense = False
        self.reusers: list = []  # processors with reuse_mass: the pre-hook measures their mass (eager)

    def active(self) -> list:
        """The reusers installed now. One an outside ``set_attn_processor`` replaced is skipped and
        its copies and selection released (they would stay alive, and a mass be measured that no
        call reads); it stays listed, so one put back (a save / restore of processors) is served
        again from the next call, as a fresh processor: its first sparse call selects by its scorer."""
        live = []
        for p in self.reusers:
            if p.installed():
                live.append(p)
            else:
                p._release()
        return live

    def __repr__(self) -> str:
        return f"DenseGate(dense={self.dense})"


# --------------------------------------------------------------------------------------------
# processors
# --------------------------------------------------------------------------------------------
def _backend_name(backend) -> str | None:
    return None if backend is None else str(getattr(backend, "value", backend))


class _HashAttnProcessor:
    """Shared state of the hash-attention processors: config, this layer's hasher, the attention
    backend diffusers sets, and an optional ``recorder(name, q, k)`` (calibration).

    ``dense`` (density 1, or one of the first ``dense_layers`` modules): always the stock attention
    call; ``gate`` (``dense_timestep``): a :class:`DenseGate` whose ``dense`` makes this call dense too."""

    _parallel_config = None  # diffusers sets it for context parallelism (refused)

    def __init__(self, config: DropInConfig, hasher: nn.Module | None, scorer, name: str, backend=None, *,
                 dense_layer: bool = False, gate: DenseGate | None = None):
        self.config, self.hasher, self.scorer, self.name = config, hasher, scorer, name
        self._kwargs = dict(config.attention_kwargs(), density=config.density_of(name))
        self.dense = self._kwargs["density"] >= 1.0 or dense_layer
        self.gate = gate
        self.recorder = None
        self._backend = None
        self._attention_backend = backend
        self._mass_qk = None  # reuse_mass: (strided q, k, nq) copied by a dense (or mass_refresh) call, until measured
        self._reused = None  # reuse_mass: the selection made from that mass
        self._full_qv = None  # reuse_delta: the dense call's whole (q, v, its output or None), until the delta is measured
        self._delta = None  # reuse_delta: dense − sparse output of the last dense step (v's dtype), decayed in place
        self._delta_t = None  # reuse_delta: the timestep of the last sparse call (the decay counts new ones)
        self._since = 0  # reuse_mass: sparse calls since the mass was measured (mass_refresh)
        self._keep = False  # mass_refresh: this sparse call keeps its copies for the next call's mass
        self._module = None  # weakref to the attention module it was installed on (enable_hash_attention)
        if gate is not None and config.reuse_mass and not self.dense:
            gate.reusers.append(self)

    @property
    def _attention_backend(self):
        """The backend ``set_attention_backend`` gave (diffusers' name for it on a processor)."""
        return self._backend

    @_attention_backend.setter
    def _attention_backend(self, backend) -> None:
        if not self.dense and _backend_name(backend) not in _DENSE_OK_BACKENDS:
            raise ValueError(self._backend_message(backend))
        self._backend = backend

    def _backend_message(self, backend) -> str:
        return (f"attention backend {_backend_name(backend)!r} cannot run hash attention ({self.name}, density="
                f"{self._kwargs['density']}): at density < 1 self-attention runs vidhash's hash_attention, and only "
                "'native' is accepted. Use density=1.0 (which dispatches through the backend) or "
                "vidhash.disable_hash_attention(transformer) first.")

    def _check_call(self, attention_mask) -> None:
        if attention_mask is not None:
            raise ValueError(
                f"{type(self).__name__} ({self.name}): an attention_mask in self-attention is not "
                "supported by hash attention; call vidhash.disable_hash_attention(transformer) to run masked"
            )
        if self._parallel_config is not None:
            raise ValueError(f"{type(self).__name__} ({self.name}): context parallelism is not supported by hash attention")
        if not self.dense and self._backend is None:
            from diffusers.models.attention_dispatch import _AttentionBackendRegistry

            active = _AttentionBackendRegistry._active_backend
            if _backend_name(active) not in _DENSE_OK_BACKENDS:
                raise ValueError(self._backend_message(active))

    def _dense_now(self) -> bool:
        """Whether this call runs the stock dense attention: always (``dense``), or while the
        ``dense_timestep`` gate is open (a Python bool: compiled code guards on it)."""
        return self.dense or (self.gate is not None and self.gate.dense)

    def _remember(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor | None = None,
                  out: torch.Tensor | None = None) -> None:
        """``reuse_mass`` at a dense call (and with ``mass_refresh`` at every N-th sparse call): keep
        every ``mass_query_stride``-th query and the keys (``(b, h, n, d)``, copies) and the query
        count; with ``reuse_delta`` a dense call's whole q instead (strided when the mass is measured) and ``v``, and its dense output
        ``out`` where it is the attention of exactly these q, k, v (else the pre-hook computes it). Traceable (no graph break):
        under ``torch.compile`` the copies are graph outputs, read by the pre-hook of the next call
        (:meth:`_before_call`) before any graph runs again."""
        stride = self.config.mass_query_stride
        if self.config.reuse_delta and v is not None:  # the whole q kept: the strided one is taken from it later
            self._full_qv = (q.detach().clone(), v.detach().clone(), None if out is None else out.detach().clone())
            self._mass_qk = (None, k.detach().clone(), q.shape[-2])
        else:
            self._mass_qk = (q[:, :, ::stride].detach().clone(), k.detach().clone(), q.shape[-2])

    def installed(self) -> bool:
        """Whether this processor still sits on the module :func:`enable_hash_attention` put it on."""
        module = self._module() if self._module is not None else None
        return module is not None and module.processor is self

    def _release(self) -> None:
        """Drop the kept copies and selection (``reuse_mass``): the state of a fresh processor."""
        self._mass_qk, self._reused, self._since, self._keep = None, None, 0, False
        self._full_qv, self._delta, self._delta_t = None, None, None

    def _before_call(self, dense: bool, t: float | None = None) -> None:
        """``reuse_mass``, from the ``dense_timestep`` pre-hook (eager, outside any compiled graph):
        a dense call drops the selection (its own copies replace the kept ones as it runs); a sparse
        call after one that kept copies selects from their mass, and with ``mass_refresh`` N every
        N-th sparse call since keeps its own copies (``_keep``) for the call after it. ``reuse_delta``:
        the delta's weight halves every ``delta_half_life`` new timesteps ``t`` (the calls of one
        step — guidance branches — count once; without a timestep, every call counts). A sparse call
        whose timestep is above the last sparse call's starts a new schedule that had no dense step:
        the selection and delta of the last one are dropped (the scorer selects, nothing is added)."""
        if dense:  # the kept copies stay until this call's replace them: a layer this call skips keeps its own
            self._reused, self._since, self._keep, self._delta, self._delta_t = None, 0, False, None, None
            return
        if t is not None and self._delta_t is not None and t > self._delta_t:
            # the timestep went up with no dense call between (a dense call resets _delta_t): a new
            # schedule (a next clip) that has no dense step; the selection, delta and any copies
            # (mass_refresh's) measured on the last clip's q, k, v are dropped
            self._mass_qk, self._full_qv, self._reused, self._since, self._keep, self._delta = None, None, None, 0, False, None
        if self._mass_qk is not None:
            self._take_mass()  # (resets _since: this first sparse call does not decay the new delta)
        self._since += 1
        half = self.config.delta_half_life
        if self._delta is not None and half is not None and (t is None or t != self._delta_t) and self._since > 1:
            self._delta.mul_(0.5 ** (1.0 / half))  # the tensor a compiled graph reads, scaled
        self._delta_t = t
        refresh = self.config.mass_refresh
        self._keep = bool(refresh) and self._reused is not None and self._since >= refresh

    def _take_mass(self) -> None:
        """The selection the kept (strided q, k) make: their exact block mass (the Triton kernel on
        CUDA where it takes the shape, else the chunked torch pass), then :func:`select_from_mass`."""
        from ..kernels.block_mass.ops import block_mass_triton
        from ..kernels.block_mass.ops import covers as mass_kernel_covers
        from ..selection.oracle import block_mass
        from ..selection.scorers import select_from_mass

        qs, ks, nq = self._mass_qk
        full_qv = self._full_qv
        self._mass_qk, self._reused, self._since, self._full_qv, self._delta = None, None, 0, None, None
        kw = self._kwargs
        bk = kw["block_size"]
        bq = kw["query_block_size"]
        stride = self.config.mass_query_stride
        if qs is None:  # reuse_delta: every stride-th query of the kept whole q (contiguous for the mass kernel)
            if full_qv is None:
                return
            qs = full_qv[0][:, :, ::stride].contiguous()
        if qs.shape[-2] != -(-nq // stride) or qs.shape[:2] != ks.shape[:2]:
            return  # not copies of one call's q and k: the scorer selects
        with torch.autocast(qs.device.type, enabled=False):  # the pre-hook runs under the caller's autocast
            if qs.is_cuda and mass_kernel_covers(qs, block_size=bk, query_block_size=bq // stride):
                # the Triton kernel: 19-25x the chunked torch pass at wan-mini's shape (H200, 2026-12-05)
                mass, _ = block_mass_triton(qs, ks, block_size=bk, query_block_size=bq // stride)
            else:
                mass, _ = block_mass(qs, ks, block_size=bk, query_block_size=bq // stride,
                                     chunk_elems=_MASS_CHUNK_CUDA if qs.is_cuda else None)
        self._reused = select_from_mass(mass, nq, ks.shape[-2], density=kw["density"], block_size=bk,
                                        query_block_size=bq, local_blocks=kw["local_blocks"],
                                        sink_blocks=kw["sink_blocks"])
        if full_qv is not None and full_qv[0].shape[-2] == nq:
            q0, v0, dense = full_qv
            q0, k0 = q0.to(v0.dtype), ks.to(v0.dtype)  # as the sparse calls attend (under autocast: its dtype, v's)
            with torch.autocast(q0.device.type, enabled=False), torch.no_grad():
                if dense is None:
                    dense = fused_attention_lse(q0, k0, v0)[0]
                self._delta = (dense.float() - self._sparse(q0, k0, v0, self._reused).float()).to(v0.dtype)

    @torch.compiler.disable
    def _measure_reuse(self) -> None:
        """A kept mass no pre-hook measured (the processor called without its transformer's
        forward, so without the ``dense_timestep`` hook): measured here, at the sparse call — a graph
        break under ``torch.compile``."""
        self._take_mass()

    def _reused_fitting(self, q: torch.Tensor, k: torch.Tensor):
        """The reused selection if it fits this call (sizes, device), else None — no dense step seen
        yet, or another shape (the scorer then selects). Traceable: Python checks of the kept object."""
        sel = self._reused
        if sel is None or (sel.num_queries, sel.num_keys) != (q.shape[-2], k.shape[-2]) \
                or tuple(sel.indices.shape[:2]) != tuple(q.shape[:2]):
            return None
        return sel if sel.indices.device == q.device else None

    def _hash(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, return_lse: bool = False):
        """Hash attention on ``(b, h, n, d)`` tensors (``backend="flex"``: vidhash's selection,
        FlexAttention's kernel); with ``reuse_mass``, on the selection of the last dense step's mass;
        with ``reuse_delta``, that step's ``dense − sparse`` output added (lse unchanged)."""
        reused = None
        if self.config.reuse_mass:
            if self._mass_qk is not None:  # only without the pre-hook: see _measure_reuse
                self._measure_reuse()
            reused = self._reused_fitting(q, k)
            if self._keep:  # mass_refresh: this call's strided q, k select for the calls after it
                self._remember(q, k)
                self._keep = False
        delta = self._delta
        if delta is None or reused is None or tuple(delta.shape) != (*q.shape[:-1], v.shape[-1]) or delta.device != q.device:
            return self._sparse(q, k, v, reused, return_lse)
        out, lse = self._sparse(q, k, v, reused, True)
        out = (out.float() + delta.float()).to(out.dtype)
        return (out, lse) if return_lse else out

    def _sparse(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, selection, return_lse: bool = False):
        """The sparse attention itself: on ``selection`` (None: the scorer selects), with the remainder."""
        if self.config.backend != "flex":
            return hash_attention(q, k, v, hasher=self.hasher, scorer=self.scorer, return_lse=return_lse,
                                  selection=selection, **self._kwargs)
        from .flex import flex_block_sparse_attention

        options = {key: value for key, value in self._kwargs.items() if key not in ("backend", "remainder")}
        sel = selection if selection is not None else select_blocks(q, k, hasher=self.hasher, scorer=self.scorer,
                                                                    backend="auto", **options)
        if self.config.remainder == "none":
            return flex_block_sparse_attention(q, k, v, sel, return_lse=return_lse)
        out, lse = add_remainder(*flex_block_sparse_attention(q, k, v, sel, return_lse=True), q, k, v, sel)
        return (out, lse) if return_lse else out

    def _attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """Self-attention on diffusers' ``(b, n, h, d)`` layout → ``(b, n, h, d)``: the stock
        ``dispatch_attention_fn`` call at density 1 (and in dense layers and steps), hash attention otherwise."""
        if self.recorder is not None:
            self.recorder(self.name, query.transpose(1, 2), key.transpose(1, 2))
        if self._dense_now():
            from diffusers.models.attention_dispatch import dispatch_attention_fn

            out = dispatch_attention_fn(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                                        backend=self._backend, parallel_config=None)
            if self.config.reuse_mass and not self.dense:  # reuse_delta: this output is the dense part of the delta
                self._remember(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), out.transpose(1, 2))
            return out
        q, k, v = (rearrange(x, "b n h d -> b h n d") for x in (query, key, value))
        device = q.device.type
        if torch.is_autocast_enabled(device):
            # as SDPA under autocast (training in bf16): q, k, v in the autocast dtype — CUDA's autocast
            # runs Wan's q/k RMSNorm in float32, so q, k arrive float32 beside a bf16 v — and no autocast inside
            dtype = torch.get_autocast_dtype(device)
            with torch.autocast(device, enabled=False):
                return rearrange(self._hash(q.to(dtype), k.to(dtype), v.to(dtype)), "b h n d -> b n h d")
        return rearrange(self._hash(q, k, v), "b h n d -> b n h d")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, config={self.config!r})"


def _wan_rotary(x: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    """Wan's rotary embedding on ``(b, n, h, d)``, as ``WanAttnProcessor`` applies it."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = freqs_cos[..., 0::2], freqs_sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


class WanHashAttnProcessor(_HashAttnProcessor):
    """Self-attention ``attn1`` of Wan, Wan-VACE and SkyReels-V2 (one attention code in diffusers)."""

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``hidden_states (b, n, dim)`` → ``(b, n, dim)``."""
        if encoder_hidden_states is not None:
            raise ValueError(f"WanHashAttnProcessor ({self.name}) is for self-attention; it got encoder_hidden_states")
        self._check_call(attention_mask)
        # 1. projections and q/k norms
        if getattr(attn, "fused_projections", False):
            query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        query, key = attn.norm_q(query), attn.norm_k(key)
        query, key, value = (x.unflatten(2, (attn.heads, -1)) for x in (query, key, value))  # (b, n, h, d)
        # 2. rotary embedding
        if rotary_emb is not None:
            query, key = _wan_rotary(query, *rotary_emb), _wan_rotary(key, *rotary_emb)
        # 3. attention
        out = self._attend(query, key, value).flatten(2, 3).type_as(query)
        # 4. output projection
        return attn.to_out[1](attn.to_out[0](out))


class LTXHashAttnProcessor(_HashAttnProcessor):
    """Self-attention ``attn1`` of LTX-Video."""

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``hidden_states (b, n, dim)`` → ``(b, n, dim)``."""
        if encoder_hidden_states is not None:
            raise ValueError(f"LTXHashAttnProcessor ({self.name}) is for self-attention; it got encoder_hidden_states")
        self._check_call(attention_mask)
        from diffusers.models.transformers.transformer_ltx import apply_rotary_emb

        # 1. projections and q/k norms
        query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        query, key = attn.norm_q(query), attn.norm_k(key)
        # 2. rotary embedding (on (b, n, h·d), as diffusers applies it)
        if image_rotary_emb is not None:
            query, key = apply_rotary_emb(query, image_rotary_emb), apply_rotary_emb(key, image_rotary_emb)
        query, key, value = (x.unflatten(2, (attn.heads, -1)) for x in (query, key, value))  # (b, n, h, d)
        # 3. attention
        out = self._attend(query, key, value).flatten(2, 3).to(query.dtype)
        # 4. output projection
        return attn.to_out[1](attn.to_out[0](out))


class CogVideoXHashAttnProcessor(_HashAttnProcessor):
    """Joint text+video attention of a CogVideoX block (``attn1``); text tokens always kept."""

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``hidden_states (b, n_video, dim)``, ``encoder_hidden_states (b, n_text, dim)`` →
        the same two, attended (video first, as diffusers returns them)."""
        self._check_call(attention_mask)
        t = encoder_hidden_states.shape[1]
        x = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        # 1. projections and q/k norms (per head)
        if getattr(attn, "fused_projections", False):
            query, key, value = attn.to_qkv(x).chunk(3, dim=-1)
        else:
            query, key, value = attn.to_q(x), attn.to_k(x), attn.to_v(x)
        q, k, v = (rearrange(y, "b n (h d) -> b h n d", h=attn.heads) for y in (query, key, value))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        # 2. rotary embedding on the video tokens only
        if image_rotary_emb is not None:
            from diffusers.models.embeddings import apply_rotary_emb

            q = torch.cat([q[:, :, :t], apply_rotary_emb(q[:, :, t:], image_rotary_emb)], dim=2)
            k = torch.cat([k[:, :, :t], apply_rotary_emb(k[:, :, t:], image_rotary_emb)], dim=2)
        if self.recorder is not None:
            self.recorder(self.name, q[:, :, t:], k[:, :, t:])
        # 3. attention: dense as diffusers at density 1; else text queries dense over all keys,
        #    video queries dense over text keys ⊕ hash over video keys
        out = self._attention(q, k, v, t)
        out = rearrange(out, "b h n d -> b n (h d)").type_as(x)
        # 4. output projection, split back into video and text
        out = attn.to_out[1](attn.to_out[0](out))
        text_out, video_out = out.split([t, out.shape[1] - t], dim=1)
        return video_out, text_out

    def _attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, t: int) -> torch.Tensor:
        dense = self._dense_now()
        if dense and self.config.reuse_mass and not self.dense:
            self._remember(q[:, :, t:], k[:, :, t:], v[:, :, t:])  # the video tokens' mass, as _hash sees them
        if dense and self._backend is None:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False)
        if dense:
            from diffusers.models.attention_dispatch import dispatch_attention_fn

            q, k, v = (x.transpose(1, 2) for x in (q, k, v))
            out = dispatch_attention_fn(q, k, v, backend=self._backend, parallel_config=None)
            return out.transpose(1, 2)
        if t == 0:
            return self._hash(q, k, v)
        out_text = dense_attention(q[:, :, :t], k, v)
        o_txt, lse_txt = dense_attention(q[:, :, t:], k[:, :, :t], v[:, :, :t], return_lse=True)
        o_vid, lse_vid = self._hash(q[:, :, t:], k[:, :, t:], v[:, :, t:], return_lse=True)
        out_video, _ = merge_attention(o_vid, lse_vid, o_txt, lse_txt)
        return torch.cat([out_text, out_video], dim=2)


# --------------------------------------------------------------------------------------------
# supported models
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _ModelSpec:
    class_name: str
    block_lists: tuple[str, ...]  # attributes holding the blocks whose attn1 is swapped
    processor: type
    stock: tuple[tuple[str, str], ...]  # (module, class) of the processors it replaces


_WAN_STOCK = (("diffusers.models.transformers.transformer_wan", "WanAttnProcessor"),)
_SPECS = (
    _ModelSpec("WanVACETransformer3DModel", ("blocks", "vace_blocks"), WanHashAttnProcessor, _WAN_STOCK),
    _ModelSpec("WanTransformer3DModel", ("blocks",), WanHashAttnProcessor, _WAN_STOCK),
    _ModelSpec("SkyReelsV2Transformer3DModel", ("blocks",), WanHashAttnProcessor,
               (("diffusers.models.transformers.transformer_skyreels_v2", "SkyReelsV2AttnProcessor"),)),
    _ModelSpec("LTXVideoTransformer3DModel", ("transformer_blocks",), LTXHashAttnProcessor,
               (("diffusers.models.transformers.transformer_ltx", "LTXVideoAttnProcessor"),)),
    _ModelSpec("CogVideoXTransformer3DModel", ("transformer_blocks",), CogVideoXHashAttnProcessor,
               (("diffusers.models.attention_processor", "CogVideoXAttnProcessor2_0"),
                ("diffusers.models.attention_processor", "FusedCogVideoXAttnProcessor2_0"))),
)


def _model_spec(transformer) -> _ModelSpec:
    """The spec of ``transformer``'s class; ValueError naming the supported (and refused) classes."""
    import diffusers

    for spec in _SPECS:
        cls = getattr(diffusers, spec.class_name, None)
        if cls is not None and type(transformer) is cls:
            return spec
    for spec in _SPECS:  # subclasses
        cls = getattr(diffusers, spec.class_name, None)
        if cls is not None and isinstance(transformer, cls):
            return spec
    name = type(transformer).__name__
    if name in REFUSED_CLASSES:
        raise ValueError(f"hash attention does not support {name}: {REFUSED_CLASSES[name]}. "
                         f"Supported: {', '.join(SUPPORTED_CLASSES)}")
    raise ValueError(f"hash attention supports diffusers' {', '.join(SUPPORTED_CLASSES)}, got {name}")


def _stock_processors(spec: _ModelSpec) -> tuple[type, ...]:
    import importlib

    return tuple(getattr(importlib.import_module(mod), cls) for mod, cls in spec.stock)


def self_attention_modules(transformer) -> dict[str, nn.Module]:
    """The attention modules :func:`enable_hash_attention` swaps, by module name
    (``"blocks.0.attn1"`` for Wan, ``"transformer_blocks.0.attn1"`` for CogVideoX and LTX) — e.g.
    to build a per-layer ``hasher`` dict."""
    spec = _model_spec(transformer)
    out = {}
    for prefix in spec.block_lists:
        for i, block in enumerate(getattr(transformer, prefix)):
            attn = block.attn1
            if getattr(attn, "is_cross_attention", False) or getattr(attn, "add_k_proj", None) is not None:
                raise ValueError(f"{prefix}.{i}.attn1 is not a plain self-attention (cross-attention or added K/V)")
            out[f"{prefix}.{i}.attn1"] = attn
    return out


def _heads_and_dim(modules: dict[str, nn.Module]) -> tuple[int, int]:
    attn = next(iter(modules.values()))
    heads = attn.heads
    return heads, attn.to_q.out_features // heads


# --------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------
def _check_hasher(name: str, hasher, head_dim: int, heads: int) -> None:
    if not isinstance(hasher, nn.Module) or not hasattr(hasher, "project") or not hasattr(hasher, "n_bits"):
        raise ValueError(f"{name} must be a hasher module with project() and n_bits (SimHash, LearnedHash), got {type(hasher).__name__}")
    if getattr(hasher, "head_dim", head_dim) != head_dim:
        raise ValueError(f"{name} has head_dim={hasher.head_dim}, the model's attention head_dim is {head_dim}")
    if getattr(hasher, "heads", None) not in (None, 1, heads):
        raise ValueError(f"{name} has heads={hasher.heads}, the model has {heads} attention heads")


def _parse_config(config: dict, names: list[str], head_dim: int, heads: int) -> DropInConfig:
    unknown = sorted(set(config) - set(CONFIG_KEYS))
    if unknown:
        raise ValueError(f"unknown hash attention option {unknown[0]!r}; expected some of {', '.join(CONFIG_KEYS)}")
    config = dict(config)
    n_bits, seed, path = config.pop("n_bits", None), config.pop("seed", None), config.pop("hashers", None)
    if config.get("scorer") is None:  # the library's rule: simhash when signatures are given, else pooled
        config["scorer"] = default_scorer(any(x is not None for x in (config.get("hasher"), n_bits, seed, path)))
    config["remainder"] = check_remainder(config.get("remainder"))
    config["layer_densities"] = _check_layer_densities(config.get("layer_densities"), names)
    cfg = DropInConfig(**config)
    check_selection_args(cfg.density, cfg.block_size, cfg.query_block_size, cfg.local_blocks, cfg.sink_blocks)
    cfg = replace(cfg, dense_timestep=_check_dense_options(cfg.dense_layers, cfg.dense_timestep, len(names)))
    _check_reuse_mass(cfg)
    if cfg.backend not in DROP_IN_BACKENDS:
        raise ValueError(f"backend must be one of {DROP_IN_BACKENDS}, got {cfg.backend!r}")
    hasher = cfg.hasher
    given = [key for key, value in (("hasher", hasher), ("hashers", path), ("n_bits/seed", n_bits if seed is None else seed))
             if value is not None]
    if len(given) > 1:
        raise ValueError(f"give one of hasher, hashers (a file) or n_bits/seed (which build a SimHash), not {' and '.join(given)}")
    if path is not None:
        from .hashers import load_hashers

        if not isinstance(path, (str, os.PathLike)):
            raise ValueError(f"hashers must be a path (a vidhash_hashers.safetensors file or its folder), got {type(path).__name__}")
        hasher = load_hashers(path, names)
    if n_bits is not None or seed is not None:
        hasher = SimHash(head_dim, 32 if n_bits is None else n_bits, seed=0 if seed is None else seed)
    if isinstance(hasher, Mapping):
        missing, extra = sorted(set(names) - set(hasher)), sorted(set(hasher) - set(names))
        if missing or extra:
            raise ValueError(f"hasher dict must have one entry per self-attention module {names}; missing {missing}, unexpected {extra}")
        hasher = dict(hasher)
        for name, h in hasher.items():
            _check_hasher(f"hasher[{name!r}]", h, head_dim, heads)
    elif hasher is not None:
        _check_hasher("hasher", hasher, head_dim, heads)
    cfg = replace(cfg, hasher=hasher)
    _check_scorer_config(cfg, names, head_dim, heads)
    return cfg


def _check_layer_densities(layer_densities, names: list[str]) -> tuple[tuple[str, float], ...]:
    """``layer_densities`` as sorted ``(name, density)`` pairs; ValueError unless a mapping from
    self-attention module names (``names``) to densities in (0, 1]."""
    if layer_densities is None:
        return ()
    if isinstance(layer_densities, tuple):  # a stored config, re-parsed
        layer_densities = dict(layer_densities)
    if not isinstance(layer_densities, Mapping):
        raise ValueError(f"layer_densities must be a dict {{self-attention module name: density}}, got "
                         f"{type(layer_densities).__name__}")
    unknown = sorted(set(layer_densities) - set(names))
    if unknown:
        raise ValueError(f"layer_densities names {unknown[0]!r}, not a self-attention module of this model; "
                         f"expected some of {names}")
    for name, value in layer_densities.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
            raise ValueError(f"layer_densities[{name!r}] must be a density in (0, 1], got {value!r}")
    return tuple(sorted((name, float(value)) for name, value in layer_densities.items()))


def _check_dense_options(dense_layers, dense_timestep, num_modules: int) -> float | None:
    """ValueError naming ``dense_layers`` / ``dense_timestep`` unless an int in [0, num_modules] and
    None or a finite number >= 0; returns ``dense_timestep`` as a float (or None)."""
    if isinstance(dense_layers, bool) or not isinstance(dense_layers, int) or not 0 <= dense_layers <= num_modules:
        raise ValueError(f"dense_layers must be an int in [0, {num_modules}] (the model's self-attention modules), "
                         f"got {dense_layers!r}")
    if dense_timestep is None:
        return None
    if isinstance(dense_timestep, torch.Tensor) and dense_timestep.numel() == 1:
        dense_timestep = dense_timestep.item()
    if isinstance(dense_timestep, bool) or not isinstance(dense_timestep, (int, float)) \
            or not math.isfinite(dense_timestep) or dense_timestep < 0:
        raise ValueError(f"dense_timestep must be None or a finite number >= 0 (a diffusers timestep: 1000 is pure "
                         f"noise; see dense_timestep_for), got {dense_timestep!r}")
    return float(dense_timestep)


def _check_reuse_mass(cfg: DropInConfig) -> None:
    """ValueError unless ``reuse_mass`` is a bool (True only with ``dense_timestep``: the mass is a
    dense step's) and ``mass_query_stride`` a positive int (with ``reuse_mass``, dividing the query block size)."""
    if not isinstance(cfg.reuse_mass, bool):
        raise ValueError(f"reuse_mass must be True or False, got {cfg.reuse_mass!r}")
    if cfg.reuse_mass and cfg.dense_timestep is None:
        raise ValueError("reuse_mass selects from the exact attention mass of the last dense step: give dense_timestep "
                         "(the first steps run dense; see dense_timestep_for)")
    bq = cfg.query_block_size
    stride = cfg.mass_query_stride
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1 or (cfg.reuse_mass and bq % stride):
        raise ValueError(f"mass_query_stride must be a positive int dividing the query block size {bq}, got {stride!r}")
    refresh = cfg.mass_refresh
    if isinstance(refresh, bool) or not isinstance(refresh, int) or refresh < 0:
        raise ValueError(f"mass_refresh must be an int >= 0 (sparse calls between mass passes; 0: never), got {refresh!r}")
    if not isinstance(cfg.reuse_delta, bool):
        raise ValueError(f"reuse_delta must be True or False, got {cfg.reuse_delta!r}")
    if cfg.reuse_delta and not cfg.reuse_mass:
        raise ValueError("reuse_delta is the last dense step's error of the reused selection: give reuse_mass=True "
                         "(and dense_timestep)")
    if cfg.reuse_delta and refresh:
        raise ValueError("reuse_delta is measured on the last dense step's selection; mass_refresh changes the selection "
                         "after it: use one or the other")
    half = cfg.delta_half_life
    if half is not None and (isinstance(half, bool) or not isinstance(half, (int, float)) or not half > 0
                             or math.isinf(half)):
        raise ValueError(f"delta_half_life must be None (no decay) or a finite number > 0 of sparse calls, got {half!r}")


def _check_scorer_config(cfg: DropInConfig, names: list[str], head_dim: int, heads: int) -> None:
    from ..attention import SCORERS, check_subgrid

    scorer = cfg.scorer
    if isinstance(scorer, str):
        if scorer not in SCORERS:
            raise ValueError(f"scorer must be one of {SCORERS}, a learned block scorer or a dict of them by module name, got {scorer!r}")
    else:
        scorers = dict(scorer) if isinstance(scorer, Mapping) else {name: scorer for name in names}
        if set(scorers) != set(names):
            raise ValueError(f"scorer dict must have one entry per self-attention module {names}; got {sorted(scorers)}")
        for name, module in scorers.items():
            if not (isinstance(module, nn.Module) and hasattr(module, "block_scores")):
                raise ValueError(f"scorer for {name} must be one of {SCORERS} or a learned block scorer, got {type(module).__name__}")
            if (module.heads, module.head_dim) != (heads, head_dim):
                raise ValueError(f"scorer for {name} has {module.heads} heads of head_dim {module.head_dim}, the model has "
                                 f"{heads} of {head_dim}")
    if not cfg.reads_hasher and cfg.hasher is not None:
        raise ValueError(f"hasher/hashers/n_bits/seed are read by scorer='simhash' or 'prefilter' only, got scorer={scorer!r}")
    check_subgrid(scorer, cfg.block_size, cfg.query_block_size)


# --------------------------------------------------------------------------------------------
# model-level switch
# --------------------------------------------------------------------------------------------
def _is_hasher_key(key: str) -> bool:
    return f".{HASHER_ATTR}." in f".{key}" or f".{SCORER_ATTR}." in f".{key}"


def _drop_hasher_keys(module, state_dict, prefix, local_metadata) -> None:
    """state_dict post-hook: the hashers travel in their own file (see :func:`save_hashers`)."""
    for key in [key for key in state_dict if _is_hasher_key(key[len(prefix):])]:
        del state_dict[key]


def _ignore_missing_hasher_keys(module, incompatible_keys) -> None:
    """load_state_dict post-hook: a stock state dict (no hasher keys) loads strictly."""
    missing = incompatible_keys.missing_keys
    missing[:] = [key for key in missing if not _is_hasher_key(key)]


def _owned(modules: dict[str, nn.Module]) -> list[bool]:
    return [isinstance(attn.processor, _HashAttnProcessor) for attn in modules.values()]


def _clear_state(transformer, modules: dict[str, nn.Module]) -> None:
    """Remove the hasher submodules, the hooks and the attributes enabling left on the model."""
    for attn in modules.values():
        for attr in (HASHER_ATTR, SCORER_ATTR):
            if attr in attn._modules:
                delattr(attn, attr)
    for hook in getattr(transformer, _HOOKS_ATTR, ()):
        hook.remove()
    _remove_timestep_hook(transformer)
    for attr in (_ORIGINALS_ATTR, _CONFIG_ATTR, _HOOKS_ATTR):
        if hasattr(transformer, attr):
            delattr(transformer, attr)


def _remove_timestep_hook(transformer) -> None:
    hook = getattr(transformer, _TIMESTEP_HOOK_ATTR, None)
    if hook is not None:
        hook.remove()
        delattr(transformer, _TIMESTEP_HOOK_ATTR)
    if hasattr(transformer, _GATE_ATTR):
        delattr(transformer, _GATE_ATTR)


def _timestep_hook(transformer, threshold: float):
    """A forward pre-hook that opens the module's gate (its ``_vidhash_dense_gate``, the one its
    processors read) for the call when its ``timestep`` (keyword or positional; the max of a tensor)
    is >= ``threshold`` and closes it otherwise — set afresh on every call, so nothing carries over
    from one call to the next. The gate is looked up on the module the hook runs for, not captured:
    a ``copy.deepcopy`` of the transformer shares this function but opens its own gate."""
    params = list(inspect.signature(type(transformer).forward).parameters)[1:]  # without self
    position = params.index("timestep") if "timestep" in params else None

    def hook(module, args, kwargs):
        gate = getattr(module, _GATE_ATTR, None)
        if gate is None:
            return
        t = kwargs.get("timestep")
        if t is None and position is not None and position < len(args):
            t = args[position]
        _set_gate(gate, t, threshold)

    return hook


@torch.compiler.disable
def _set_gate(gate: DenseGate, t, threshold: float) -> None:
    """The pre-hook's work, eager — under ``torch.compile`` one graph break at the top of the
    forward (the timestep's host sync needs one anyway), none inside a block: ``gate.dense`` for
    this call, then ``reuse_mass``'s work between calls (each processor's
    :meth:`_HashAttnProcessor._before_call`: a dense call drops the selection, the first sparse
    call after one selects from the kept copies' mass)."""
    if t is None:
        value = None
    elif isinstance(t, torch.Tensor):
        value = float(t.max().item())  # a host sync
    else:
        value = float(max(t) if isinstance(t, Sequence) else t)  # a number or a list
    gate.dense = value is not None and value >= threshold
    for processor in gate.active():
        processor._before_call(gate.dense, value)


def _take_originals(spec: _ModelSpec, modules: dict[str, nn.Module], old: dict | None) -> dict:
    """The processors to put back on disabling: ``old``'s where a hash processor still sits, else
    the stock processor in place (anything else is a ValueError)."""
    expected = _stock_processors(spec)
    originals = {}
    for name, attn in modules.items():
        if old is not None and isinstance(attn.processor, _HashAttnProcessor):
            originals[name] = old[name]
            continue
        if not isinstance(attn.processor, expected):
            raise ValueError(
                f"{name} uses {type(attn.processor).__name__}; hash attention replaces only diffusers' "
                f"{' / '.join(c.__name__ for c in expected)} (restore it before enabling)"
            )
        originals[name] = attn.processor
    return originals


def _per_module(cfg: DropInConfig, names: list[str], head_dim: int) -> tuple[dict, dict]:
    """Each module's hasher (None for scorers that read none) and scorer (a name or a module)."""
    if cfg.reads_hasher:
        default = SimHash(head_dim, 32, seed=0) if cfg.hasher is None else None
        hashers = {name: cfg.hasher[name] if isinstance(cfg.hasher, dict) else (cfg.hasher or default) for name in names}
    else:
        hashers = dict.fromkeys(names)
    scorers = {name: cfg.scorer[name] if isinstance(cfg.scorer, Mapping) else cfg.scorer for name in names}
    return hashers, scorers


def enable_hash_attention(transformer, **config):
    """Swap the self-attention of a diffusers video transformer (:data:`SUPPORTED_CLASSES`) for
    hash attention; returns the model.

    ``config``: ``density``, ``block_size``, ``query_block_size`` (default: the key block's size, at least
    :data:`DEFAULT_MIN_QUERY_BLOCK` tokens), ``local_blocks``,
    ``sink_blocks``, ``backend``, ``scorer``, ``remainder`` (as :func:`~vidhash.attention.hash_attention`; a
    learned scorer may also be a dict by module name; ``backend="flex"`` has FlexAttention attend
    to vidhash's selected blocks), and — for the scorers that read
    signatures, ``"simhash"`` (the default) and ``"prefilter"`` — one of
    ``hasher`` (a module, or a dict by module name — see :func:`self_attention_modules`),
    ``hashers`` (a path: a file :func:`save_hashers` or ``vidhash calibrate`` wrote, or its
    folder) or ``n_bits``/``seed`` for a SimHash (default: 32 bits, seed 0). Calling it again
    re-configures the model. ``density=1.0`` runs diffusers' own attention call.

    Dense warmup, as Sparse VideoGen / SVG2 / Radial Attention do (full attention where the video's
    layout is decided: the high-noise steps, the first blocks — their main lever for fidelity to
    the dense model):

    * ``dense_layers`` (int, default 0): the first N self-attention modules, in
      :func:`self_attention_modules` order (block order), always run diffusers' own dense
      attention call, as at ``density=1.0``;
    * ``dense_timestep`` (float or None, default None): while the transformer is called with a
      ``timestep`` >= it (the max over the batch; diffusers' timesteps fall from 1000, pure noise,
      toward 0), every self-attention runs dense. A forward pre-hook on the transformer reads
      the call's timestep (one host sync per call, eager: ``torch.compile`` of the whole forward
      breaks there once, at the top, and runs the rest as one graph) and sets a Python bool the
      processors read, so compiled code recompiles once for the dense steps; ``fullgraph=True``
      on the whole forward refuses that break — compile the repeated blocks for it.
      :func:`dense_timestep_for` gives the threshold for "the first k steps";
    * ``reuse_mass`` (bool, default False; needs ``dense_timestep``) and ``mass_query_stride``
      (default 4): the sparse steps select from the last dense step's exact block mass (measured on
      every ``mass_query_stride``-th query) instead of the scorer; ``mass_refresh`` N re-measures it
      from every N-th sparse call's own queries, for the calls after it — see :class:`DropInConfig`;
    * ``reuse_delta`` (bool, default False; needs ``reuse_mass``) and ``delta_half_life`` (default 16
      sparse steps; None: no decay): every sparse call adds the last dense step's ``dense − sparse``
      output (measured once, in the pre-hook), its weight halving every ``delta_half_life`` steps.
    """
    spec = _model_spec(transformer)
    if getattr(transformer, "_parallel_config", None) is not None:
        raise ValueError("hash attention does not support context parallelism; enable it on a model without a parallel config")
    modules = self_attention_modules(transformer)
    heads, head_dim = _heads_and_dim(modules)
    cfg = _parse_config(config, list(modules), head_dim, heads)

    # 1. the originals: kept from the first call while our processors are still in place
    originals = getattr(transformer, _ORIGINALS_ATTR, None)
    if originals is not None and not all(_owned(modules)):
        _clear_state(transformer, modules)  # swapped from outside since: start afresh
        fresh, originals = _take_originals(spec, modules, originals), None
    else:
        fresh = _take_originals(spec, modules, None) if originals is None else originals
    # 2. one hasher (or learned scorer) per module; the default SimHash built here, not inside a compiled graph
    hashers, scorers = _per_module(cfg, list(modules), head_dim)
    # 3. processors, carrying the attention backend set on the ones they replace; the first
    #    dense_layers always dense, all of them behind one gate with dense_timestep
    gate = None if cfg.dense_timestep is None else DenseGate()
    processors = dict(transformer.attn_processors)
    for i, (name, attn) in enumerate(modules.items()):
        backend = getattr(attn.processor, "_attention_backend", None)
        processors[f"{name}.processor"] = spec.processor(cfg, hashers[name], scorers[name], name, backend,
                                                         dense_layer=i < cfg.dense_layers, gate=gate)
    transformer.set_attn_processor(processors)
    for attn in modules.values():
        attn.processor._module = weakref.ref(attn)
    # 4. hashers and learned scorers as submodules (moved and cast with the model), kept out of state_dict
    for name, attn in modules.items():
        for attr, module in ((HASHER_ATTR, hashers[name]), (SCORER_ATTR, scorers[name])):
            if attr in attn._modules:
                delattr(attn, attr)
            if isinstance(module, nn.Module):
                attn.add_module(attr, module)
    if originals is None:
        hooks = [transformer._register_state_dict_hook(_drop_hasher_keys),
                 transformer.register_load_state_dict_post_hook(_ignore_missing_hasher_keys)]
        setattr(transformer, _HOOKS_ATTR, hooks)
    # 5. the dense_timestep pre-hook: replaced on every call (never two), none without the option
    _remove_timestep_hook(transformer)
    if gate is not None:
        setattr(transformer, _GATE_ATTR, gate)
        handle = transformer.register_forward_pre_hook(_timestep_hook(transformer, cfg.dense_timestep), with_kwargs=True)
        setattr(transformer, _TIMESTEP_HOOK_ATTR, handle)
    setattr(transformer, _ORIGINALS_ATTR, fresh)
    setattr(transformer, _CONFIG_ATTR, cfg)
    return transformer


def dense_timestep_for(scheduler_or_timesteps, dense_steps: int) -> float | None:
    """The ``dense_timestep`` of :func:`enable_hash_attention` that makes exactly the first
    ``dense_steps`` of a schedule run dense: a threshold that those timesteps are >= and the rest
    are below (halfway between the two groups, so a timestep rounded on its way to the model stays
    on its side). ``scheduler_or_timesteps``: a diffusers scheduler after ``set_timesteps`` (its
    ``timesteps``), or a 1-D tensor / sequence of timesteps in the order they are run.
    ``dense_steps=0`` → None (no dense steps).

        pipe.scheduler.set_timesteps(30)
        enable_hash_attention(pipe.transformer, density=0.125,
                              dense_timestep=dense_timestep_for(pipe.scheduler, 6))
    """
    timesteps = getattr(scheduler_or_timesteps, "timesteps", scheduler_or_timesteps)
    unset = hasattr(scheduler_or_timesteps, "timesteps") and getattr(scheduler_or_timesteps, "num_inference_steps", None) is None
    if timesteps is None or unset:  # (a diffusers scheduler holds its 1000 training steps until set_timesteps)
        raise ValueError("dense_timestep_for: the scheduler has no inference timesteps yet; call "
                         "scheduler.set_timesteps(num_steps) first")
    try:
        if isinstance(timesteps, torch.Tensor) and timesteps.dim() != 1:
            raise TypeError
        values = [float(t) for t in (timesteps.tolist() if isinstance(timesteps, torch.Tensor) else list(timesteps))]
    except (TypeError, ValueError):
        raise ValueError("dense_timestep_for takes a scheduler (after set_timesteps) or a 1-D tensor/list of "
                         f"timesteps, got {type(scheduler_or_timesteps).__name__}") from None
    if isinstance(dense_steps, bool) or not isinstance(dense_steps, int) or not 0 <= dense_steps <= len(values):
        raise ValueError(f"dense_steps must be an int in [0, {len(values)}] (the schedule's steps), got {dense_steps!r}")
    if dense_steps == 0:
        return None
    first, rest = values[:dense_steps], values[dense_steps:]
    low = min(first)
    if not rest:  # every step dense
        return low / 2 if low > 0 else low
    high = max(rest)
    if not low > high:
        raise ValueError(f"dense_timestep_for: no threshold separates the first {dense_steps} timesteps (down to {low}) "
                         f"from the later ones (up to {high}); the schedule must fall between them")
    return (low + high) / 2


def disable_hash_attention(transformer):
    """Put back the exact processor objects :func:`enable_hash_attention` replaced (where a hash
    processor still sits) and remove the hashers; returns the model."""
    modules = self_attention_modules(transformer)
    originals = getattr(transformer, _ORIGINALS_ATTR, None)
    if originals is None:
        raise ValueError(f"hash attention is not enabled on this {type(transformer).__name__}; nothing to disable")
    processors = dict(transformer.attn_processors)
    for (name, proc), owned in zip(originals.items(), _owned(modules)):
        if owned:
            processors[f"{name}.processor"] = proc
    transformer.set_attn_processor(processors)
    _clear_state(transformer, modules)
    return transformer


def is_hash_attention_enabled(transformer) -> bool:
    """Whether hash attention is in effect: every self-attention module holds a hash processor
    (False after an outside ``set_attn_processor`` replaced any of them)."""
    if getattr(transformer, _ORIGINALS_ATTR, None) is None:
        return False
    return all(_owned(self_attention_modules(transformer)))


def hashers_of(transformer) -> dict[str, nn.Module]:
    """The hasher each self-attention module uses while enabled, by module name."""
    if not is_hash_attention_enabled(transformer):
        raise ValueError(f"hash attention is not enabled on this {type(transformer).__name__}")
    if not transformer._vidhash_config.reads_hasher:
        raise ValueError(f"scorer={transformer._vidhash_config.scorer!r} reads no hashers (only 'simhash' and 'prefilter' do)")
    return {name: attn.processor.hasher for name, attn in self_attention_modules(transformer).items()}


def save_hashers(transformer, path: str | os.PathLike) -> str:
    """Write the enabled model's hashers to ``path`` (a ``.safetensors`` file, or a folder, which
    gets ``vidhash_hashers.safetensors``) — beside ``save_pretrained``'s weights, so that
    ``enable_hash_attention(Model.from_pretrained(folder), hashers=folder)`` restores them.
    Returns the file written."""
    from .hashers import save_hashers as _save

    return _save(hashers_of(transformer), path)
