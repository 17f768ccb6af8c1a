"""HashedMemory kernels with a borrowed hasher (a model's LearnedHash, or one the signature
kernel does not cover) vs the reference (on CUDA, else under the interpreter on CPU)."""
import pytest
import torch

from vidhash.hashing import LearnedHash, SimHash
from vidhash.memory import HashedMemory

DEV = "cuda" if torch.cuda.is_available() else "cpu"  # the kernels on the GPU, else the interpreter


def rel_err(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


def make(**kw):
    return HashedMemory(device=DEV, **kw)


def _learned(heads=3, head_dim=40, bits=32, seed=0):
    return LearnedHash(head_dim, bits, heads=heads, hidden=16, seed=seed).eval().to(DEV)


def _away_from_zero(x, hasher, tol=1e-3):
    """Redraw tokens whose learned projections come within ``tol`` of 0 (kernel bits = reference bits)."""
    for _ in range(200):
        with torch.no_grad():
            bad = (hasher.project(x, "key").abs() < tol).any(-1) | (hasher.project(x, "query").abs() < tol).any(-1)
        if not bad.any():
            return x
        x = torch.where(bad.unsqueeze(-1), torch.randn_like(x), x)
    raise AssertionError("could not draw tokens away from 0")


class _PlainHasher:
    """A hasher the kernels do not know: SimHash bits computed in plain PyTorch."""

    def __init__(self, heads, head_dim, n_bits, seed):
        self.inner = SimHash(head_dim, n_bits, heads=heads, seed=seed).to(DEV)
        self.n_bits, self.heads, self.head_dim = n_bits, heads, head_dim

    def __call__(self, x, role="key"):
        return self.inner(x, role)


@pytest.mark.parametrize("which", ["learned", "plain"])
def test_triton_backend_with_borrowed_hasher(which):
    """Kernels (interpreter on CPU) with a LearnedHash equal the reference; a hasher the signature
    kernel does not cover falls back to the reference write (auto) or is refused (forced triton),
    and reads use its own signatures."""
    torch.manual_seed(5)
    cfg = dict(num_buckets=7, slots=3, heads=2, head_dim=16, batch_size=1, dtype=torch.float32)
    hasher = _learned(heads=2, head_dim=16) if which == "learned" else _PlainHasher(2, 16, 32, 0)
    ref, tri = make(hasher=hasher, **cfg), make(hasher=hasher, **cfg)
    k, v = torch.randn(1, 2, 40, 16).to(DEV), torch.randn(1, 2, 40, 16).to(DEV)
    if which == "learned":
        k = _away_from_zero(k, hasher)
    ref.write(k, v, 0, backend="reference")
    if which == "learned":
        tri.write(k, v, 0, backend="triton")
    else:
        with pytest.raises(ValueError, match="signature kernel covers SimHash"):
            tri.write(k, v, 0, backend="triton")
        tri.write(k, v, 0, backend="reference")
    for name in ("keys", "values", "signatures", "frames", "counts", "bucket_writes"):
        assert torch.equal(getattr(ref, name), getattr(tri, name)), name
    q = torch.randn(1, 2, 5, 16).to(DEV)
    if which == "learned":
        q = _away_from_zero(q, hasher)
    o_ref, l_ref = ref.attend(q, top_k=6, backend="reference")
    o_tri, l_tri = tri.attend(q, top_k=6, backend="triton")
    assert rel_err(o_tri, o_ref) < 1e-5 and rel_err(l_tri, l_ref) < 1e-5
