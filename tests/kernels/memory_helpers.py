"""Helpers shared by the memory kernel tests (test_memory_kernels.py, test_memory_merge_kernel.py,
test_memory_levels.py)."""
import torch

from vidhash.hashing import SimHash
from vidhash.memory import HashedMemory

TOL = 1e-3  # a SimHash projection closer than this to 0 may flip between summation orders
# the kernels on the GPU, else the interpreter; tests draw their inputs on the CPU and move them here
# (the same numbers on both), and a test of the CPU path passes device="cpu" to make()
DEV = "cuda" if torch.cuda.is_available() else "cpu"


def away_from_zero(x: torch.Tensor, hasher: SimHash) -> torch.Tensor:
    """Redraw tokens of ``x (b, h, t, d)`` whose projections come within ``TOL`` of 0."""
    planes = hasher.planes.double()
    for _ in range(100):
        z = torch.einsum("bhtd,hdm->bhtm", x.double(), planes.expand(x.shape[1], -1, -1) if planes.shape[0] == 1 else planes)
        bad = (z.abs() < TOL).any(-1)
        if not bad.any():
            return x
        x = torch.where(bad.unsqueeze(-1), torch.randn_like(x), x)
    raise AssertionError("could not draw tokens away from the hyperplanes")


def make(num_buckets=7, slots=3, heads=3, head_dim=40, n_bits=32, batch_size=2, dtype=torch.float32, seed=3,
         device=DEV, policy="fifo"):
    return HashedMemory(num_buckets=num_buckets, slots=slots, heads=heads, head_dim=head_dim, n_bits=n_bits,
                        batch_size=batch_size, seed=seed, dtype=dtype, device=device, policy=policy)


def routing(mem: HashedMemory) -> dict:
    """The keyword arguments the memory kernels take beside its table: hasher and routing numbers."""
    return dict(hasher=mem.hasher, route_bits=mem._route_bits, route_key=mem.config.seed)


def twin(mem: HashedMemory) -> HashedMemory:
    """A second memory with the same config (policy, device) and contents."""
    cfg = mem.config
    other = make(cfg.num_buckets, cfg.slots, cfg.heads, cfg.head_dim, cfg.n_bits, cfg.batch_size, mem.keys.dtype,
                 cfg.seed, mem.keys.device, cfg.policy)
    other.load_state_dict(mem.state_dict())
    return other
