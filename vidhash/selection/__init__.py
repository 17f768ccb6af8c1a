"""Block selection quality: the exact oracle, block-pair scorers, the learned block scorer.

* :mod:`vidhash.selection.oracle` — exact block masses, :func:`oracle_recall`, :func:`selection_mass`,
  :func:`attention_error`;
* :mod:`vidhash.selection.scorers` — ``simhash``, ``pooled``, ``moments``, ``subkeys``, ``subqueries``,
  ``prefilter``; :func:`select_blocks_scored`;
* :mod:`vidhash.selection.learned` — :class:`LearnedBlockScorer` and its fit.
"""
from .learned import LearnedBlockScorer
from .oracle import attention_error, block_mass, oracle_recall, selection_mass
from .scorers import SCORERS, score_blocks, select_blocks_scored

__all__ = ["SCORERS", "LearnedBlockScorer", "attention_error", "block_mass", "oracle_recall", "score_blocks",
           "select_blocks_scored", "selection_mass"]
