"""The learned block scorers of the selection benches, fitted by name: ``learned`` (per-head linear
block codes), ``learned m4`` (4 query sub-centroids × key sub-blocks) and ``learned bits`` (32 sign
bits) — :class:`~vidhash.selection.learned.LearnedBlockScorer` variants. ``vidhash bench selection``
fits them on one half of its inputs and ``vidhash bench dropin --scorers learned`` on clips of seeds it
does not measure; both import :func:`fit_learned` from here."""
from __future__ import annotations

from vidhash.selection import LearnedBlockScorer
from vidhash.selection.learned import fit_data

LEARNED_VARIANTS = {"learned": {}, "learned m4": "grid", "learned bits": dict(rank=32, codes="bits")}
"""Row name → :class:`LearnedBlockScorer` keyword arguments (``"grid"``: the sub-grid codes, sized by the key block)."""


def fit_learned(fq, fk, bk: int, kept_free: int, names, args, held_out: float = 0.25):
    """The learned scorers among ``names``, fitted on ``fq, fk`` (never the measured inputs)."""
    wanted = [n for n in LEARNED_VARIANTS if n in names]
    if not wanted:
        return {}, {}
    h, d = fq.shape[1], fq.shape[-1]
    data = fit_data(fq, fk, block_size=bk, query_block_size=args.query_block, local_blocks=args.local_blocks,
                    sink_blocks=args.sink_blocks,
                    max_query_blocks=args.fit_blocks)
    fitted, reports = {}, {}
    for name in wanted:
        opts = LEARNED_VARIANTS[name]
        if opts == "grid":
            opts = dict(m=4, sub=16 if bk > 16 else None)
        scorer = LearnedBlockScorer(d, h, **opts).to(fq.device)
        reports[name] = scorer.fit(fq, fk, block_size=bk, query_block_size=args.query_block,
                                   kept=max(1, kept_free), steps=args.fit_steps, held_out=held_out, data=data)
        fitted[name] = scorer.eval()
    return fitted, reports
