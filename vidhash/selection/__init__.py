"""Block selection quality: the exact oracle, block-pair scorers, the learned block scorer.

* :mod:`vidhash.selection.oracle` — exact block masses, :func:`oracle_recall`, :func:`selection_mass`,
  :func:`attention_error`;
* :mod:`vidhash.selection.scorers` — ``simhash``, ``pooled``, ``parent``, ``moments``, ``subgrid``,
  ``prefilter``, ``oracle``; :func:`select_blocks_scored`; :func:`select_from_mass` (a block mass → a selection);
* :mod:`vidhash.selection.learned` — :class:`LearnedBlockScorer` and its fit;
* :mod:`vidhash.selection.memory_read` — a memory read's top-k against the exact top-k (not imported
  here: it imports :mod:`vidhash.memory`).

``vidhash.attention.select_blocks(..., scorer=...)`` runs these scorers; ``vidhash bench selection``
measures them.
"""
from .learned import LearnedBlockScorer
from .oracle import attention_error, block_mass, oracle_recall, selection_mass
from .scorers import SCORERS, score_blocks, select_blocks_scored, select_from_mass

__all__ = ["SCORERS", "LearnedBlockScorer", "attention_error", "block_mass", "oracle_recall", "score_blocks",
           "select_blocks_scored", "select_from_mass", "selection_mass"]
