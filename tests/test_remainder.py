"""``remainder="mean"``: the unkept key blocks as one mean token each, against a brute force
that builds each query's key list token by token (kept blocks' tokens, then one
``(mean key, mean value, log count)`` token per unkept block it may see) and runs a plain softmax."""
import math

import pytest
import torch

from vidhash.attention import (REMAINDERS, block_mean_remainder, dense_attention, hash_attention, merge_attention,
                               select_blocks)
from vidhash.kernels.sparse_attention.naive import block_sparse_attention


def brute_force(q, k, v, sel, scale=None):
    """Per query, softmax over its kept blocks' tokens and its unkept (fully visible) blocks' means."""
    b, h, nq, d = q.shape
    nk = k.shape[-2]
    sc = scale if scale is not None else 1 / math.sqrt(d)
    bk, bq = sel.block_size, sel.query_block_size
    nkb = -(-nk // bk)
    out = torch.zeros(b, h, nq, v.shape[-1], dtype=torch.float64)
    lse = torch.full((b, h, nq), float("-inf"), dtype=torch.float64)
    for bi in range(b):
        for hi in range(h):
            for i in range(nq):
                kept = {int(j) for j in sel.indices[bi, hi, i // bq] if j >= 0}
                limit = i + nk - nq if sel.causal else nk - 1  # last key query i sees
                logits, values = [], []
                for j in range(nkb):
                    lo, hi_ = j * bk, min(nk, (j + 1) * bk)
                    if j in kept:
                        for t in range(lo, min(hi_, limit + 1)):
                            logits.append(sc * float(q[bi, hi, i].double() @ k[bi, hi, t].double()))
                            values.append(v[bi, hi, t].double())
                    elif hi_ - 1 <= limit:
                        km = k[bi, hi, lo:hi_].double().mean(0)
                        logits.append(sc * float(q[bi, hi, i].double() @ km) + math.log(hi_ - lo))
                        values.append(v[bi, hi, lo:hi_].double().mean(0))
                if logits:
                    s = torch.tensor(logits, dtype=torch.float64)
                    lse[bi, hi, i] = torch.logsumexp(s, 0)
                    out[bi, hi, i] = torch.softmax(s, 0) @ torch.stack(values)
    return out, lse


def qkv(b, h, nq, nk, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, h, nq, d, generator=g), torch.randn(b, h, nk, d, generator=g),
            torch.randn(b, h, nk, d, generator=g))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("nq,nk,bk,bq", [(97, 97, 16, 32), (64, 131, 16, 16), (40, 40, 8, 8)])
def test_hash_attention_mean_remainder_matches_brute_force(causal, nq, nk, bk, bq):
    q, k, v = qkv(1, 2, nq, nk, 16)
    kw = dict(density=0.25, block_size=bk, query_block_size=bq, causal=causal, scorer="pooled")
    out, lse = hash_attention(q, k, v, remainder="mean", return_lse=True, backend="reference", **kw)
    sel = select_blocks(q, k, backend="reference", **kw)
    ref_out, ref_lse = brute_force(q, k, v, sel)
    assert torch.allclose(out.double(), ref_out, atol=2e-5)
    assert torch.allclose(lse.double(), ref_lse, atol=2e-5)


def test_remainder_adds_mass_and_none_is_plain_block_sparse():
    q, k, v = qkv(1, 2, 128, 128, 32, seed=1)
    kw = dict(density=0.25, block_size=16, scorer="pooled", backend="reference")
    plain, lse_plain = hash_attention(q, k, v, return_lse=True, **kw)
    assert torch.equal(hash_attention(q, k, v, remainder="none", **kw), plain)
    _, lse_mean = hash_attention(q, k, v, remainder="mean", return_lse=True, **kw)
    assert (lse_mean > lse_plain).all()  # every query had unkept blocks: their mass adds


def test_density_one_leaves_no_remainder():
    q, k, v = qkv(1, 1, 70, 70, 16, seed=2)
    sel = select_blocks(q, k, density=1.0, block_size=16, scorer="pooled")
    out, lse = block_mean_remainder(q, k, v, sel)
    assert torch.isinf(lse).all() and (lse < 0).all() and not out.abs().any()
    full = hash_attention(q, k, v, density=1.0, block_size=16, remainder="mean", backend="reference")
    assert torch.allclose(full, dense_attention(q, k, v), atol=1e-6)


def test_equal_keys_in_a_block_make_the_remainder_exact():
    """A block whose keys are all equal weighs count · exp(s q·k): the mean token is exact, so
    hash attention with the remainder equals dense attention whatever it keeps (values may differ)."""
    b, h, n, d, bk = 1, 2, 96, 16, 16
    g = torch.Generator().manual_seed(3)
    k = torch.randn(b, h, n // bk, d, generator=g).repeat_interleave(bk, dim=2)
    q, v = torch.randn(b, h, n, d, generator=g), torch.randn(b, h, n, d, generator=g)
    out = hash_attention(q, k, v, density=1 / 6, block_size=bk, remainder="mean", backend="reference")
    assert torch.allclose(out, dense_attention(q, k, v), atol=1e-5)


def test_remainder_is_differentiable_like_the_brute_force():
    q, k, v = qkv(1, 1, 48, 48, 8, seed=4)
    q, k, v = (x.double().requires_grad_() for x in (q, k, v))
    sel = select_blocks(q.detach(), k.detach(), density=0.25, block_size=8, scorer="pooled")

    def ours(q, k, v):
        return merge_attention(*block_sparse_attention(q, k, v, sel, return_lse=True),
                               *block_mean_remainder(q, k, v, sel))[0]
    assert torch.autograd.gradcheck(ours, (q, k, v), eps=1e-6, atol=1e-5)


def test_remainder_chunks_equal_one_pass(monkeypatch):
    import vidhash.kernels.remainder.naive as A

    q, k, v = qkv(2, 2, 150, 150, 16, seed=5)
    sel = select_blocks(q, k, density=0.25, block_size=16, query_block_size=16, causal=True, scorer="pooled")
    whole = block_mean_remainder(q, k, v, sel)
    monkeypatch.setattr(A, "REMAINDER_CHUNK_ELEMS", 2 * 2 * 16 * 10 * 3)  # 3 query blocks a chunk
    parts = block_mean_remainder(q, k, v, sel)
    assert torch.allclose(whole[0], parts[0], atol=1e-6) and torch.equal(torch.isinf(whole[1]), torch.isinf(parts[1]))


def test_bad_remainder_and_mismatched_selection_raise():
    q, k, v = qkv(1, 1, 32, 32, 16)
    with pytest.raises(ValueError, match="remainder must be one of"):
        hash_attention(q, k, v, remainder="max")
    sel = select_blocks(q, k, density=0.5, block_size=8)
    with pytest.raises(ValueError, match="selection is for"):
        block_mean_remainder(q[:, :, :16], k, v, sel)
    assert REMAINDERS == ("none", "mean")
