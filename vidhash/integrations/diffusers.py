"""Diffusers drop-in: hash attention inside diffusers' own video transformers.

Letters: b batch, n tokens, h heads, d head_dim.

    transformer = vidhash.enable_hash_attention(transformer, density=0.125, block_size=64)
    ...                                   # run the pipeline as usual
    vidhash.disable_hash_attention(transformer)

diffusers 0.42 keys its attention backends by a closed enum, so the drop-in swaps attention
*processors* (``set_attn_processor``) and keeps the originals to put them back.

What is swapped, per supported class:

* ``WanTransformer3DModel`` — every block's self-attention ``attn1`` (``WanAttnProcessor`` →
  :class:`WanHashAttnProcessor`): q/k norms and rotary embedding exactly as diffusers applies
  them, then :func:`~vidhash.attention.hash_attention` over the video tokens. The text (and
  I2V image) cross-attention ``attn2`` keeps its processor object.
* ``CogVideoXTransformer3DModel`` — every block's joint text+video attention ``attn1``
  (``CogVideoXAttnProcessor2_0`` or its fused variant → :class:`CogVideoXHashAttnProcessor`).
  Text tokens are always kept, as sinks: a video query attends densely to the text keys and by
  hash attention to the video keys, the two merged exactly by log-sum-exp; a text query (there
  are few) attends densely to every key. ``sink_blocks``/``local_blocks`` apply among video keys.

With ``density=1.0`` the outputs equal the original processors' (float rounding aside).

Enabling an enabled model re-configures it: its self-attention gets fresh processors with the
new config, and the originals kept from the first call are still the ones
:func:`disable_hash_attention` puts back. Disabling a model that was never enabled is an error.

Not supported, with an error rather than a silent fallback: an ``attention_mask`` in
self-attention, context parallelism, and self-attention processors that are not diffusers' own
(e.g. a custom processor set before enabling).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace

import torch
from einops import rearrange
from torch import nn

from ..attention import dense_attention, hash_attention, merge_attention
from ..hashing import SimHash
from ..ops.checks import check_backend, check_block, check_count, check_density

SUPPORTED_CLASSES = ("WanTransformer3DModel", "CogVideoXTransformer3DModel")
CONFIG_KEYS = ("density", "block_size", "query_block_size", "local_blocks", "sink_blocks", "hasher", "n_bits", "seed", "backend")

_CONFIG_ATTR = "_vidhash_config"
_ORIGINALS_ATTR = "_vidhash_original_processors"


@dataclass(frozen=True)
class DropInConfig:
    """Hash attention settings of one enabled model (stored as ``transformer._vidhash_config``).

    ``hasher`` is ``None`` (the default SimHash: 32 bits, seed 0), one module shared by every
    layer, or a dict from self-attention module name (``"blocks.0.attn1"``) to a module.
    """

    density: float = 0.125
    block_size: int = 64
    query_block_size: int | None = None
    local_blocks: int = 1
    sink_blocks: int = 1
    hasher: nn.Module | dict[str, nn.Module] | None = None
    backend: str = "auto"

    def attention_kwargs(self) -> dict:
        """Keyword arguments for :func:`~vidhash.attention.hash_attention` (hasher aside)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "hasher"}


# --------------------------------------------------------------------------------------------
# processors
# --------------------------------------------------------------------------------------------
class _HashAttnProcessor:
    """Shared state of the hash-attention processors: config and this layer's hasher."""

    # diffusers sets these on every processor (``set_attention_backend``, context parallelism).
    _attention_backend = None
    _parallel_config = None

    def __init__(self, config: DropInConfig, hasher: nn.Module | None, name: str):
        self.config, self.hasher, self.name = config, hasher, name
        self._kwargs = config.attention_kwargs()

    def _hash(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kw):
        """Hash attention on ``(b, h, n, d)`` tensors."""
        return hash_attention(q, k, v, hasher=self.hasher, **self._kwargs, **kw)

    def _check_call(self, attention_mask) -> None:
        if attention_mask is not None:
            raise ValueError(
                f"{type(self).__name__} ({self.name}): an attention_mask in self-attention is not "
                "supported by hash attention; call vidhash.disable_hash_attention(transformer) to run masked"
            )
        if self._parallel_config is not None:
            raise ValueError(f"{type(self).__name__} ({self.name}): context parallelism is not supported by hash attention")

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
    """Self-attention of a ``WanAttention`` (``attn1``) through hash attention."""

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
        # 3. hash attention
        q, k, v = (rearrange(x, "b n h d -> b h n d") for x in (query, key, value))
        out = rearrange(self._hash(q, k, v), "b h n d -> b n (h d)").type_as(query)
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
        # 3. attention: text queries dense over all keys; video queries dense over text keys ⊕ hash over video keys
        if t == 0:
            out = self._hash(q, k, v)
        else:
            out_text = dense_attention(q[:, :, :t], k, v)
            o_txt, lse_txt = dense_attention(q[:, :, t:], k[:, :, :t], v[:, :, :t], return_lse=True)
            o_vid, lse_vid = self._hash(q[:, :, t:], k[:, :, t:], v[:, :, t:], return_lse=True)
            out_video, _ = merge_attention(o_vid, lse_vid, o_txt, lse_txt)
            out = torch.cat([out_text, out_video], dim=2)
        out = rearrange(out, "b h n d -> b n (h d)").type_as(x)
        # 4. output projection, split back into video and text
        out = attn.to_out[1](attn.to_out[0](out))
        text_out, video_out = out.split([t, out.shape[1] - t], dim=1)
        return video_out, text_out


# --------------------------------------------------------------------------------------------
# model-level switch
# --------------------------------------------------------------------------------------------
def _model_kind(transformer) -> str:
    """``"wan"`` or ``"cogvideox"``; any other class is a ValueError naming the supported ones."""
    from diffusers import CogVideoXTransformer3DModel, WanTransformer3DModel

    if isinstance(transformer, WanTransformer3DModel):
        return "wan"
    if isinstance(transformer, CogVideoXTransformer3DModel):
        return "cogvideox"
    raise ValueError(
        f"hash attention supports diffusers' {' and '.join(SUPPORTED_CLASSES)}, got {type(transformer).__name__}"
    )


def _expected_processors(kind: str) -> tuple[type, ...]:
    if kind == "wan":
        from diffusers.models.transformers.transformer_wan import WanAttnProcessor

        return (WanAttnProcessor,)
    from diffusers.models.attention_processor import CogVideoXAttnProcessor2_0, FusedCogVideoXAttnProcessor2_0

    return (CogVideoXAttnProcessor2_0, FusedCogVideoXAttnProcessor2_0)


def self_attention_modules(transformer) -> dict[str, nn.Module]:
    """The attention modules :func:`enable_hash_attention` swaps, by module name
    (``"blocks.0.attn1"`` for Wan, ``"transformer_blocks.0.attn1"`` for CogVideoX) — e.g. to
    build a per-layer ``hasher`` dict."""
    kind = _model_kind(transformer)
    blocks = transformer.blocks if kind == "wan" else transformer.transformer_blocks
    prefix = "blocks" if kind == "wan" else "transformer_blocks"
    out = {}
    for i, block in enumerate(blocks):
        attn = block.attn1
        if kind == "wan" and (attn.is_cross_attention or attn.add_k_proj is not None):
            raise ValueError(f"{prefix}.{i}.attn1 is not a plain self-attention (cross-attention or added K/V)")
        out[f"{prefix}.{i}.attn1"] = attn
    return out


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
    n_bits, seed = config.pop("n_bits", None), config.pop("seed", None)
    cfg = DropInConfig(**config)
    check_density(cfg.density)
    check_block("block_size", cfg.block_size)
    if cfg.query_block_size is not None:
        check_block("query_block_size", cfg.query_block_size)
    check_count("local_blocks", cfg.local_blocks)
    check_count("sink_blocks", cfg.sink_blocks)
    check_backend(cfg.backend)
    hasher = cfg.hasher
    if n_bits is not None or seed is not None:
        if hasher is not None:
            raise ValueError("give either hasher or n_bits/seed (which build a SimHash), not both")
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
    return replace(cfg, hasher=hasher)


def enable_hash_attention(transformer, **config):
    """Swap the self-attention of a diffusers ``WanTransformer3DModel`` or
    ``CogVideoXTransformer3DModel`` for hash attention; returns the model.

    ``config``: ``density``, ``block_size``, ``query_block_size``, ``local_blocks``,
    ``sink_blocks``, ``backend`` (as :func:`~vidhash.attention.hash_attention`), and either
    ``hasher`` (a module, or a dict by module name — see :func:`self_attention_modules`) or
    ``n_bits``/``seed`` for a SimHash. Calling it again re-configures the model.
    """
    kind = _model_kind(transformer)
    if getattr(transformer, "_parallel_config", None) is not None:
        raise ValueError("hash attention does not support context parallelism; enable it on a model without a parallel config")
    modules = self_attention_modules(transformer)
    heads, head_dim = transformer.config.num_attention_heads, transformer.config.attention_head_dim
    cfg = _parse_config(config, list(modules), head_dim, heads)

    originals = getattr(transformer, _ORIGINALS_ATTR, None)
    if originals is None:
        expected = _expected_processors(kind)
        originals = {}
        for name, attn in modules.items():
            if not isinstance(attn.processor, expected):
                raise ValueError(
                    f"{name} uses {type(attn.processor).__name__}; hash attention replaces only diffusers' "
                    f"{' / '.join(c.__name__ for c in expected)} (restore it before enabling)"
                )
            originals[name] = attn.processor

    proc_cls = WanHashAttnProcessor if kind == "wan" else CogVideoXHashAttnProcessor
    processors = dict(transformer.attn_processors)
    for name in modules:
        hasher = cfg.hasher[name] if isinstance(cfg.hasher, dict) else cfg.hasher
        processors[f"{name}.processor"] = proc_cls(cfg, hasher, name)
    transformer.set_attn_processor(processors)
    setattr(transformer, _ORIGINALS_ATTR, originals)
    setattr(transformer, _CONFIG_ATTR, cfg)
    return transformer


def disable_hash_attention(transformer):
    """Put back the exact processor objects :func:`enable_hash_attention` replaced; returns the model."""
    _model_kind(transformer)
    originals = getattr(transformer, _ORIGINALS_ATTR, None)
    if originals is None:
        raise ValueError(f"hash attention is not enabled on this {type(transformer).__name__}; nothing to disable")
    processors = dict(transformer.attn_processors)
    for name, proc in originals.items():
        processors[f"{name}.processor"] = proc
    transformer.set_attn_processor(processors)
    delattr(transformer, _ORIGINALS_ATTR)
    delattr(transformer, _CONFIG_ATTR)
    return transformer


def is_hash_attention_enabled(transformer) -> bool:
    """Whether :func:`enable_hash_attention` is in effect on ``transformer``."""
    return getattr(transformer, _ORIGINALS_ATTR, None) is not None
