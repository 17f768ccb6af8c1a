"""Block selection by exact block-code scores (pooled / learned codes) with the top-k fused: ``kernel.py``
(``@triton.jit``), ``ops.py`` (launcher, ``select_blocks_codes``), ``naive.py`` (torch reference)."""
