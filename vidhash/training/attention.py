"""The attention a model trains with: dense, or hash attention in every self-attention ("sparse
from the start", issue 17).

    attention: {density: 0.125, block_size: 64, scorer: pooled}      # a train config's section (wan)

:class:`TrainAttentionConfig` is the ``attention`` section of a family's train config
(:class:`~vidhash.training.wan_family.WanTrainConfig`); ``density: 1.0``, the default, is dense
(diffusers' own processors, nothing swapped). Below 1, the family turns on the diffusers drop-in
(:func:`vidhash.integrations.diffusers.enable_hash_attention`) on every model it builds — the
model being trained, the EMA copy that validation scores, the model the export casts — so the
forward and the backward run through hash attention: the Triton kernels on CUDA
(``backend: auto``), the PyTorch reference on a CPU. The selection itself is discrete (no
gradient); the kept blocks' softmax passes gradients to the q/k/v projections. The hashers
(SimHash planes, seeded) stay out of ``state_dict``, so checkpoints, EMA and the export are
stock ``WanTransformer3DModel`` weights.

The export records it: ``train_state.json`` holds ``"attention"`` (this section) and
:func:`training_attention` reads it back as ``enable_hash_attention`` keywords, so a sampler
runs the model with the attention it was trained with::

    pipe = WanMiniPipeline.from_pretrained(folder)
    kw = training_attention(folder)          # None: trained dense
    if kw: enable_hash_attention(pipe.transformer, **kw)
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from torch import nn

from vidhash.attention import READS_SIGNATURES, SCORERS, check_remainder, check_subgrid
from vidhash.hashing import MAX_BITS
from vidhash.ops.checks import check_backend, check_selection_args

ATTENTION_KEY = "attention"  # train_state.json's key (and the config section's name)


@dataclass
class TrainAttentionConfig:
    """``attention``: hash attention in every self-attention while training (``density < 1``),
    with :func:`~vidhash.attention.hash_attention`'s settings; ``n_bits`` / ``seed`` make the
    SimHash of ``simhash`` and ``prefilter``. ``backend``: auto (Triton kernels on CUDA, the
    reference on a CPU), triton or reference."""

    density: float = 1.0  # share of key blocks each query block keeps; 1.0 = dense (nothing swapped)
    block_size: int = 64  # key-block tokens
    query_block_size: Optional[int] = None  # query-block tokens (None: block_size)
    local_blocks: int = 1  # key blocks around the query block's own, always kept
    sink_blocks: int = 1  # leading key blocks, always kept
    scorer: str = "pooled"  # how key blocks are ranked: pooled | parent | simhash | moments | subgrid | prefilter
    n_bits: int = 32  # SimHash bits (simhash, prefilter)
    seed: int = 0  # SimHash planes' seed
    backend: str = "auto"
    remainder: str = "none"  # none | mean: the unkept key blocks as one mean token each (hash_attention's remainder)


def is_dense(attention: TrainAttentionConfig) -> bool:
    return float(attention.density) >= 1.0


def check_attention(attention: TrainAttentionConfig) -> None:
    """The section's values; ValueError naming the ``attention.`` key."""
    a = attention
    try:
        check_selection_args(a.density, a.block_size, a.query_block_size, a.local_blocks, a.sink_blocks)
        check_backend(a.backend)
    except ValueError as err:
        raise ValueError(f"attention.{err}") from None
    if a.scorer not in SCORERS:
        raise ValueError(f"attention.scorer must be one of {', '.join(SCORERS)}, got {a.scorer!r}")
    try:
        check_subgrid(a.scorer, a.block_size, a.query_block_size)
    except ValueError as err:
        raise ValueError(f"attention.{err}") from None
    if not 1 <= a.n_bits <= MAX_BITS:
        raise ValueError(f"attention.n_bits must be in [1, {MAX_BITS}], got {a.n_bits}")
    if a.seed < 0:
        raise ValueError(f"attention.seed must be >= 0, got {a.seed}")
    try:
        check_remainder(a.remainder)
    except ValueError as err:
        raise ValueError(f"attention.{err}") from None


def drop_in_kwargs(attention: TrainAttentionConfig, backend: bool = True) -> dict:
    """``enable_hash_attention`` keywords of the section (``n_bits`` / ``seed`` only for the
    scorers that read signatures; ``backend`` left out with ``backend=False``: a sampler picks its own)."""
    kw = asdict(attention)
    if kw["query_block_size"] is None:  # the section's rule (None: block_size), not the drop-in's (at least 64):
        kw["query_block_size"] = kw["block_size"]  # a run trains, resumes and samples with the blocks it fingerprinted
    if attention.scorer not in READS_SIGNATURES:
        del kw["n_bits"], kw["seed"]
    if kw["remainder"] in (None, "none"):
        del kw["remainder"]
    if not backend:
        del kw["backend"]
    return kw


def enable_training_attention(model: nn.Module, attention: TrainAttentionConfig) -> nn.Module:
    """``model`` with hash attention in every self-attention when the section is sparse (the
    drop-in, in place); unchanged when dense. Returns the model."""
    if is_dense(attention):
        return model
    from vidhash.integrations.diffusers import enable_hash_attention

    return enable_hash_attention(model, **drop_in_kwargs(attention))


def fingerprint_part(attention: TrainAttentionConfig) -> dict:
    """What trained weights depend on besides the model's arguments: ``{}`` when dense (so dense
    runs keep their fingerprints), else the section without ``backend`` (a numerical path only) and
    without ``remainder`` where it is ``"none"`` (runs from before the option keep theirs)."""
    if is_dense(attention):
        return {}
    kw = asdict(attention)
    del kw["backend"]
    if kw["remainder"] in (None, "none"):
        del kw["remainder"]
    return {ATTENTION_KEY: kw}


def attention_record(attention: TrainAttentionConfig) -> dict:
    """``train_state.json``'s ``"attention"``: the whole section (dense included)."""
    return {ATTENTION_KEY: asdict(attention)}


def training_attention(folder: str | Path) -> dict | None:
    """``enable_hash_attention`` keywords of the attention an export was trained with (from its
    ``train_state.json``), without ``backend``; None when it was trained dense or records none
    (exports before the ``attention`` section were all dense). FileNotFoundError for a folder that
    does not exist."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such model folder")
    path = folder / "train_state.json"
    if not path.is_file():
        return None
    saved = json.loads(path.read_text()).get(ATTENTION_KEY)
    if saved is None:
        return None
    try:
        attention = TrainAttentionConfig(**saved)
        check_attention(attention)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: its {ATTENTION_KEY!r} is not a training attention section ({err})") from None
    return None if is_dense(attention) else drop_in_kwargs(attention, backend=False)
