"""Training-time selection: temporal attention as generation computes it with a memory that holds
every older token — ``VidHashTransformer3DModel.forward(..., temporal_select=...)``.

    out, lse = chunk_select(q, k, v, chunk_tokens, window_tokens, top_k, hasher, scale)

Each query chunk attends exactly to itself and the ``window_tokens`` before it, and to only the
``top_k`` older tokens per query with the highest Hamming similarity of ``hasher``'s signatures
(ties to the older token, as ``HashedMemory.attend`` with entries in token order), merged by
log-sum-exp. Two forms of one chunk: :func:`_select_chunk_reference` (float32 / float64, the
exact and selected parts merged by log-sum-exp) and :func:`_select_chunk_fused` (one masked SDPA
over their union, the CUDA default) — tested equal, values and gradients.

Letters: b batch, h heads, t tokens of the clip, m tokens of one query chunk, e head dim,
r signature bits; ``old`` = the keys before the chunk's exact window.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..attention import dense_attention, merge_attention
from ..hashing import LearnedHash

SELECT_KEYS = {"window_frames", "top_k", "n_bits", "seed", "hash_grad"}


def check_select(select, causal_frames: int | None, context, learned_bits: int) -> None:
    """ValueError naming the problem with a ``temporal_select`` dict (``learned_bits``: the model's
    ``memory_hash_bits``, 0 for none)."""
    if not isinstance(select, dict):
        raise ValueError(f"temporal_select must be a dict with window_frames and top_k, got {type(select).__name__}")
    unknown = set(select) - SELECT_KEYS
    if unknown:
        raise ValueError(f"temporal_select has unknown keys {sorted(unknown)}; known: {sorted(SELECT_KEYS)}")
    if causal_frames is None or context is not None:
        raise ValueError("temporal_select needs causal_frames and no context (it is the training-time form of a context)")
    for key in ("window_frames", "top_k"):
        value = select.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"temporal_select[{key!r}] must be an int ≥ 0, got {value!r}")
    n_bits = select.get("n_bits", 32)
    if learned_bits and "n_bits" in select and n_bits != learned_bits:
        raise ValueError(f"temporal_select n_bits={n_bits}, but the model's learned hash has {learned_bits} bits")


def chunk_select(q, k, v, chunk_tokens: int, window_tokens: int, top_k: int, hasher, scale: float,
                 hash_grad: bool = True, fused: bool | None = None):
    """Chunk-causal attention with generation's selection, one query chunk at a time.

    ``q``, ``k``, ``v``: ``(b, h, t, e)``. Query chunk ``[start, stop)`` attends exactly to keys
    ``[start − window_tokens, stop)`` and to the ``top_k`` keys of ``[0, start − window_tokens)``
    with the highest Hamming similarity of ``hasher``'s signatures. Similarities are dot products
    of ±1 codes (``(n_bits + c_q·c_k) / 2``, exact), so no step holds more than ``(chunk tokens ×
    all tokens)`` per head. Returns ``(out (b, h, t, e), lse (b, h, t))``; lse is None when ``fused``.

    A ``LearnedHash`` trains through the selection by a straight-through term: the selected
    keys' logits get ``s − stop_grad(s)`` (zero in value) with ``s`` the mean product of
    straight-through sign codes, so the attention loss reaches the hash MLPs
    (``hash_grad=False`` turns it off).

    ``fused`` (default: on CUDA): one masked SDPA per chunk over the union of the exact keys
    and the selected ones (the same softmax as the log-sum-exp merge of the two parts; no
    float32 score matrix kept for backward).
    """
    fused = q.is_cuda if fused is None else fused
    t = q.shape[2]
    with torch.no_grad(), torch.autocast(q.device.type, enabled=False):
        cq = (hasher.project(q, "query") > 0).float() * 2 - 1  # (b, h, t, r) ±1, the signature bits
        ck = (hasher.project(k, "key") > 0).float() * 2 - 1
    st = hash_grad and isinstance(hasher, LearnedHash) and torch.is_grad_enabled()
    if st:
        sq, sk = st_codes(hasher, q, "query"), st_codes(hasher, k, "key")
    outs, lses = [], []
    for start in range(0, t, chunk_tokens):
        stop = min(start + chunk_tokens, t)
        old = max(0, start - window_tokens)
        part = (q[:, :, start:stop], k[:, :, :stop], v[:, :, :stop], old, top_k, cq[:, :, start:stop], ck[:, :, :old],
                (sq[:, :, start:stop], sk[:, :, :old]) if st else None, scale)
        if fused:
            outs.append(_select_chunk_fused(*part))
            continue
        o, l = _select_chunk_reference(*part)
        outs.append(o)
        lses.append(l)
    return torch.cat(outs, 2), (None if fused else torch.cat(lses, 2))


def _select_chunk_reference(qs, k, v, old: int, top_k: int, cq, ck, st_pair, scale: float):
    """One chunk ``qs (b, h, m, e)`` against keys ``[0, stop)``: dense attention (with its lse) over
    the exact part ``[old, stop)``, merged by log-sum-exp with softmax over the selected older keys
    (float32, float64 for float64 inputs)."""
    o, l = dense_attention(qs, k[:, :, old:], v[:, :, old:], scale=scale, return_lse=True)
    if old == 0 or top_k == 0:
        return o, l
    keep = select_mask(cq, ck, top_k)
    acc = torch.float64 if qs.dtype == torch.float64 else torch.float32
    s = torch.matmul(qs.to(acc), k[:, :, :old].to(acc).transpose(-1, -2)) * scale
    if st_pair is not None:
        sq, sk = st_pair
        sim = sq @ sk.transpose(-1, -2) / sq.shape[-1]
        s = s + (sim - sim.detach())
    s = s.masked_fill(~keep, float("-inf"))
    l2 = torch.logsumexp(s, dim=-1)
    o2 = torch.matmul(torch.exp(s - l2.unsqueeze(-1)), v[:, :, :old].to(acc)).to(qs.dtype)
    return merge_attention(o, l, o2, l2)


def _select_chunk_fused(qs, k, v, old: int, top_k: int, cq, ck, st_pair, scale: float) -> torch.Tensor:
    """The same chunk as a single masked SDPA over keys ``[0, stop)``: the exact part ``[old,
    stop)`` plus the selected older keys (the straight-through term as an additive bias)."""
    if old == 0 or top_k == 0:
        return F.scaled_dot_product_attention(qs, k[:, :, old:], v[:, :, old:], scale=scale)
    b, h, m, _ = qs.shape
    allowed = torch.ones(b, h, m, k.shape[2], dtype=torch.bool, device=qs.device)
    allowed[..., :old] = select_mask(cq, ck, top_k)
    if st_pair is None:
        return F.scaled_dot_product_attention(qs, k, v, attn_mask=allowed, scale=scale)
    sq, sk = st_pair
    sim = sq @ sk.transpose(-1, -2) / sq.shape[-1]
    bias = torch.cat([sim - sim.detach(), sim.new_zeros(b, h, m, k.shape[2] - old)], dim=-1)
    bias = bias.masked_fill(~allowed, float("-inf")).to(qs.dtype)
    return F.scaled_dot_product_attention(qs, k, v, attn_mask=bias, scale=scale)


def select_mask(cq: torch.Tensor, ck: torch.Tensor, top_k: int) -> torch.Tensor:
    """Bool ``(b, h, m, old)``: each query's ``top_k`` keys by Hamming similarity of the ±1 codes
    ``cq (b, h, m, r)``, ``ck (b, h, old, r)`` (ties to the lower key index)."""
    old = ck.shape[-2]
    with torch.no_grad(), torch.autocast(cq.device.type, enabled=False):
        dot = cq @ ck.transpose(-1, -2)  # 2·sim − n_bits, exact
        rank = dot * (old + 1) + (old - torch.arange(old, device=cq.device, dtype=dot.dtype))
        if (2 * cq.shape[-1] + 1) * (old + 1) >= 1 << 24:  # beyond float32's exact integers
            rank = rank.double()
        keep = torch.zeros(rank.shape, dtype=torch.bool, device=cq.device)
        return keep.scatter_(-1, rank.topk(min(top_k, old), dim=-1).indices, True)


def st_codes(hasher: LearnedHash, x: torch.Tensor, role: str) -> torch.Tensor:
    """±1 sign codes with the gradient of tanh (straight-through)."""
    z = hasher.project(x, role)
    soft = torch.tanh(z)
    return soft + (torch.where(z > 0, 1.0, -1.0) - soft).detach()
