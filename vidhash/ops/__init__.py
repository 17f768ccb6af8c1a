"""What the ops share, apart from their code.

* :mod:`vidhash.ops.checks` — argument checks and shared types (``BlockSelection``,
  ``MemoryTable``). Imported by the naive references (``kernels/*/naive.py``), the Triton
  launchers (``kernels/*/ops.py``) and the library alike; imports nothing of vidhash.
* :mod:`vidhash.ops.backend` — which implementation a call runs (``backend="auto" |
  "reference" | "triton"``). Imported only by the library functions that dispatch
  (``vidhash.attention.hash_attention``, ``HashedMemory.write`` / ``attend``); it reaches
  ``vidhash.kernels.ops``, so nothing under ``kernels/`` may import it (tests/test_imports.py).

This file imports neither: a kernel importing ``vidhash.ops.checks`` must not pull in the backend.
"""
