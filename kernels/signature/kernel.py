"""Triton kernel: projection → sign bits → packed int32 words, optionally pooled over blocks.

Letters: b batch, h heads, n tokens, g pooled blocks (``g = ceil(n / pool)``), k input dim
(head_dim for SimHash, the hidden width for LearnedHash's last layer), m bits, w words.

One program computes the signatures of ``BLOCK_G`` pooled blocks of one ``(b, h)`` row:

1. sum the ``pool`` tokens of each block (``pool = 1``: the tokens themselves),
2. project with one 32-column slice of the weights at a time (``tl.dot`` in full fp32),
   adding ``valid tokens × bias`` when the layer has one,
3. keep the sign bits (bit ``j`` of word ``j // 32`` at position ``j % 32``), OR them into
   one int32 word per slice and store it,
4. optionally fold the first ``ROUTE_BITS`` bits through the keyed murmur3 mixing hash of
   :func:`vidhash.hashing.bucket_index` and store the bucket (HashedMemory's routing).

Pooling sums the inputs before projecting, ``(Σ x) W``, where the reference sums the
projections, ``Σ (x W)``: equal up to float rounding, so a bit can differ only where the
pooled projection is within rounding of 0.
"""
import triton
import triton.language as tl


@triton.jit
def _or(a, b):
    return a | b


@triton.jit
def _mix32(x):
    """murmur3's 32-bit finaliser on uint32 (wrapping multiplies, logical shifts)."""
    x = x ^ (x >> 16)
    x = x * 0x85EBCA6B
    x = x ^ (x >> 13)
    x = x * 0xC2B2AE35
    return x ^ (x >> 16)


@triton.jit
def signature_kernel(
    x_ptr, w_ptr, bias_ptr, out_ptr, bucket_ptr,
    H, N, G, POOL, K, M,
    stride_xb, stride_xh, stride_xn, stride_xk,
    w_head_stride, bias_head_stride,
    NW: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_K: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ROUTE_BITS: tl.constexpr,
    NUM_BUCKETS: tl.constexpr,
    ROUTE_SEED: tl.constexpr,
):
    pid_g = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H

    offs_g = pid_g * BLOCK_G + tl.arange(0, BLOCK_G)
    offs_k = tl.arange(0, BLOCK_K)
    k_ok = offs_k < K
    g_ok = offs_g < G

    # 1. pooled inputs (BLOCK_G, BLOCK_K) and the number of real tokens of each block
    x_base = x_ptr + b.to(tl.int64) * stride_xb + h.to(tl.int64) * stride_xh
    xs = tl.zeros((BLOCK_G, BLOCK_K), dtype=tl.float32)
    cnt = tl.zeros((BLOCK_G,), dtype=tl.float32)
    for t in range(0, POOL):
        tok = offs_g * POOL + t
        ok = g_ok & (tok < N)
        x = tl.load(x_base + tok[:, None].to(tl.int64) * stride_xn + offs_k[None, :] * stride_xk,
                    mask=ok[:, None] & k_ok[None, :], other=0.0)
        xs += x.to(tl.float32)
        cnt += ok.to(tl.float32)

    # 2.-4. one word (32 bits) at a time
    w_base = w_ptr + h * w_head_stride
    shifts = tl.arange(0, 32)
    if ROUTE_BITS > 0:
        hsh = tl.full((BLOCK_G,), ROUTE_SEED, tl.uint32)
    for j in range(0, NW):  # a loop, not unrolled: one (BLOCK_G, 32) tile live at a time
        offs_m = j * 32 + shifts
        m_ok = offs_m < M
        w = tl.load(w_base + offs_k[:, None] * M + offs_m[None, :], mask=k_ok[:, None] & m_ok[None, :], other=0.0)
        z = tl.dot(xs, w.to(tl.float32), input_precision="ieee")  # (BLOCK_G, 32)
        if HAS_BIAS:
            bias = tl.load(bias_ptr + h * bias_head_stride + offs_m, mask=m_ok, other=0.0).to(tl.float32)
            z += cnt[:, None] * bias[None, :]
        bits = ((z > 0) & m_ok[None, :]).to(tl.int32)
        word = tl.reduce(bits << shifts[None, :], 1, _or)  # (BLOCK_G,) int32, bit 31 = sign
        tl.store(out_ptr + (pid_bh.to(tl.int64) * G + offs_g) * NW + j, word, mask=g_ok)
        if ROUTE_BITS > 0:  # fold this word's routing bits into the bucket hash
            rem = tl.full((), ROUTE_BITS, tl.int32) - j * 32
            low = (tl.full((), 1, tl.uint32) << tl.minimum(tl.maximum(rem, 0), 31).to(tl.uint32)) - 1
            keep = tl.where(rem >= 32, tl.full((), 0xFFFFFFFF, tl.uint32), low)
            mixed = _mix32(_mix32(hsh ^ (word.to(tl.uint32, bitcast=True) & keep)) + 0x27D4EB2F + j)
            hsh = tl.where(rem > 0, mixed, hsh)
    if ROUTE_BITS > 0:
        bucket = (hsh % NUM_BUCKETS).to(tl.int32)
        tl.store(bucket_ptr + pid_bh.to(tl.int64) * G + offs_g, bucket, mask=g_ok)
