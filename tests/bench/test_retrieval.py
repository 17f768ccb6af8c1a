"""Retrieval by attention beside the HashHop benchmark: bucket attention and multi-hop reads."""
import torch

from vidhash.bench.retrieval import bucket_attention, multi_hop_attention


def qkv(b, h, nq, d, nk):
    return tuple(torch.randn(b, h, n, d) for n in (nq, nk, nk))


def test_bucket_attention_one_bucket_is_mean_and_shapes():
    q, k, v = qkv(1, 2, 10, 8, nk=40)
    out = bucket_attention(q, k, v, num_buckets=1, num_tables=1)
    assert torch.allclose(out, v.mean(2, keepdim=True).expand_as(out), atol=1e-6)
    out, lse = bucket_attention(q, k, v, num_buckets=16, num_tables=3, return_lse=True)
    assert out.shape == (1, 2, 10, 8) and torch.isfinite(lse).all()
    q.requires_grad_(True)
    bucket_attention(q, k, v, num_buckets=16, num_tables=3).sum().backward()
    assert q.grad is not None


def test_bucket_attention_retrieves_exact_copies():
    # A query equal to a stored key lands in that key's bucket in every table.
    torch.manual_seed(0)
    k = torch.randn(1, 1, 64, 32)
    v = torch.eye(64).view(1, 1, 64, 64)
    out = bucket_attention(k * 8, k, v, num_buckets=4096, num_tables=4, lsh_bits=24, scale=1.0)
    assert (out[0, 0].argmax(-1) == torch.arange(64)).float().mean() > 0.95


def test_multi_hop_follows_chains():
    torch.manual_seed(0)
    n, d = 50, 64
    keys = torch.nn.functional.normalize(torch.randn(1, 1, n, d), dim=-1)
    nxt = torch.randperm(n)
    values = keys[:, :, nxt]  # value of pair i is the key of pair nxt[i]
    start = keys[:, :, :5]
    out, reads = multi_hop_attention(start, keys, values, hops=3, scale=50.0, return_all=True)
    assert len(reads) == 3
    target = keys[:, :, nxt[nxt[nxt[:5]]]]
    assert torch.allclose(out, target, atol=1e-3)
    # a projection between hops is applied
    out2 = multi_hop_attention(start, keys, values, hops=2, proj=lambda x: -x, scale=50.0)
    assert not torch.allclose(out2, keys[:, :, nxt[nxt[:5]]], atol=1e-2)
