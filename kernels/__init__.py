"""Kernels of vidhash, imported as ``vidhash.kernels`` (the folder ``kernels/`` of the repository;
pyproject.toml says how).

One folder per op, as in the Triton tutorials and flash-linear-attention:

* ``kernel.py`` — the ``@triton.jit`` kernels (bounded autotune lists);
* ``ops.py`` — launchers, autograd Function and the public ``*_triton`` function;
* ``naive.py`` — the naive PyTorch reference of exactly what the op computes: the code the
  library runs for ``backend="reference"``, and what the tests (``tests/kernels/``) compare
  the kernels against.

Only ``kernel.py`` and ``ops.py`` import triton; this file, the folders' ``__init__.py`` and
every ``naive.py`` import without it. Modules here import :mod:`vidhash.ops.checks`,
:mod:`vidhash.hashing` and each other, never a module that dispatches (that would be an import
cycle: tests/test_imports.py). The public Triton functions are re-exported by
:mod:`vidhash.kernels.ops`; the library reaches them through ``backend="auto" | "triton"``.
"""
