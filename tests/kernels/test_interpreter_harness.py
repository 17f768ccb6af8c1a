"""The two interpreter shortcuts of tests/conftest.py (CPU only): a custom ``tl.reduce`` folds
whole slices and gives what triton's element loop gives, bit for bit; a branching combine keeps
the element loop; a helper called inside a launch does not patch ``triton.language`` again."""
import os

import pytest
import torch

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="the interpreter's shortcuts")

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402
import triton.runtime.interpreter as interp  # noqa: E402

if not getattr(interp.ReduceOps.generic_reduce, "_vidhash_patched", False):  # another triton than 3.6: its own path
    pytest.skip("the interpreter shortcuts are not installed for this triton", allow_module_level=True)


@triton.jit
def _or(a, b):
    return a | b


@triton.jit
def _half_then_add(a, b):  # not associative: the order of the fold shows
    return a * 0.5 + b


@triton.jit
def _larger(a, b):
    if a > b:
        return a
    return b


@triton.jit
def _row_add(x):
    return x + 1


@triton.jit
def reduce_kernel(bits_ptr, x_ptr, words_ptr, folds_ptr, whole_ptr, R: tl.constexpr, C: tl.constexpr):
    r = tl.arange(0, R)[:, None]
    c = tl.arange(0, C)[None, :]
    bits = tl.load(bits_ptr + r * C + c)
    x = tl.load(x_ptr + r * C + c)
    tl.store(words_ptr + tl.arange(0, R), tl.reduce(bits << c, 1, _or))
    tl.store(folds_ptr + tl.arange(0, C)[None, :], tl.reduce(_row_add(x), 0, _half_then_add, keep_dims=True))
    tl.store(whole_ptr, tl.sum(tl.reduce(x, None, _half_then_add, keep_dims=True), 0))


def run_reduce():
    g = torch.Generator().manual_seed(0)
    bits = torch.randint(0, 2, (4, 32), generator=g, dtype=torch.int32)
    bits[0, 31] = 1  # bit 31: the word's sign
    x = torch.randn(4, 32, generator=g)
    out = (torch.empty(4, dtype=torch.int32), torch.empty(1, 32), torch.empty(1))
    reduce_kernel[(1,)](bits, x, *out, R=4, C=32)
    return bits, x, out


def test_branch_free_combines_fold_slices_as_the_element_loop_does(monkeypatch):
    fast = interp.ReduceOps.generic_reduce
    _branch_free = fast._branch_free
    assert _branch_free(_or.fn) and _branch_free(_half_then_add.fn) and not _branch_free(_larger.fn)
    bits, x, got = run_reduce()
    monkeypatch.setattr(interp.ReduceOps, "generic_reduce", fast._element_loop)
    _, _, want = run_reduce()
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    words = (bits.long() << torch.arange(32)).sum(1)
    assert torch.equal(got[0], torch.where(words >= 1 << 31, words - (1 << 32), words).int())
    col = (x[0] + 1).double()
    for i in range(1, 4):
        col = (col * 0.5 + (x[i] + 1)).float().double()
    assert torch.equal(got[1][0], col.float())


def test_branching_combine_keeps_the_element_loop():
    @triton.jit
    def kernel(x_ptr, out_ptr, C: tl.constexpr):
        tl.store(out_ptr, tl.reduce(tl.load(x_ptr + tl.arange(0, C)), 0, _larger))

    x = torch.randn(16)
    out = torch.empty(1)
    kernel[(1,)](x, out, C=16)
    assert out.item() == x.max().item()


def test_a_helper_inside_a_launch_does_not_patch_the_language_again(monkeypatch):
    run_reduce()  # the process's first call of a tl.core function (tl.sum) patches tl.core for good
    calls = []
    original = interp._patch_lang
    monkeypatch.setattr(interp, "_patch_lang", lambda fn: calls.append(fn.__name__) or original(fn))
    run_reduce()
    assert calls == ["reduce_kernel"]  # not _row_add, _or, tl.sum
