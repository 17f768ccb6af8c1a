"""vidhash: long video generation with hash attention.

Core names (reference semantics, CPU and GPU)::

    from vidhash import hash_attention, HashedMemory, SimHash, LearnedHash, merge_attention
"""
import os as _os

# The repository keeps kernels/, pipelines/ and configs/ beside vidhash/; they are the packages
# vidhash.kernels, vidhash.pipelines and vidhash.configs. An installed wheel has them inside
# vidhash/ (pyproject.toml maps them); a source tree (an editable install, or PYTHONPATH=<repo>)
# does not, so the repository root joins this package's search path: vidhash.kernels is then
# <repo>/kernels. Set before the imports below, which need vidhash.kernels. (pyproject.toml
# explains the layout.) kernels/ has no __init__.py on purpose (kernels/README.md): a namespace
# portion never shadows another top-level package named `kernels` (Hugging Face's).
_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if not _os.path.isdir(_os.path.join(__path__[0], "kernels")) and _os.path.isfile(_os.path.join(_root, "kernels", "ops.py")):
    __path__.append(_root)

from .kernels.interpreter import apply_if_interpreting  # noqa: E402 (after the search path)

apply_if_interpreting()  # TRITON_INTERPRET=1: triton 3.6's interpreter under numpy >= 2.4 (kernels/interpreter.py)

from .attention import (  # noqa: E402
    BlockSelection,
    block_sparse_attention,
    dense_attention,
    hash_attention,
    merge_attention,
    select_blocks,
    selection_recall,
)
from .hashing import (  # noqa: E402
    LearnedHash,
    SimHash,
    bucket_index,
    hamming_similarity,
    pack_bits,
    popcount,
    token_bucket,
    unpack_bits,
)
from .memory import HashedMemory, MemoryConfig  # noqa: E402

__version__ = "0.1.0"


def enable_hash_attention(transformer, **config):
    """Swap a diffusers video transformer's self-attention for hash attention (see
    :mod:`vidhash.integrations.diffusers`)."""
    # lazy load: the integration imports diffusers (seconds), which `import vidhash` must not pay
    from .integrations.diffusers import enable_hash_attention as _enable

    return _enable(transformer, **config)


def dense_timestep_for(scheduler_or_timesteps, dense_steps: int):
    """The ``dense_timestep`` of :func:`enable_hash_attention` that runs exactly the first
    ``dense_steps`` of a schedule dense (see :mod:`vidhash.integrations.diffusers`)."""
    # lazy load: as enable_hash_attention
    from .integrations.diffusers import dense_timestep_for as _for

    return _for(scheduler_or_timesteps, dense_steps)


def disable_hash_attention(transformer):
    """Restore the attention processors :func:`enable_hash_attention` replaced."""
    # lazy load: as enable_hash_attention
    from .integrations.diffusers import disable_hash_attention as _disable

    return _disable(transformer)


__all__ = [
    "BlockSelection", "HashedMemory", "LearnedHash", "MemoryConfig", "SimHash",
    "block_sparse_attention", "bucket_index", "dense_attention", "dense_timestep_for",
    "disable_hash_attention", "enable_hash_attention", "hamming_similarity", "hash_attention",
    "merge_attention", "pack_bits", "popcount", "select_blocks",
    "selection_recall", "token_bucket", "unpack_bits",
]
