"""Triton kernels of vidhash, installed as ``vidhash.kernels``.

One folder per op — ``kernel.py`` (``@triton.jit``, bounded autotune list) and ``ops.py``
(launchers, autograd Function, public function) — each matched to its reference in
``vidhash/``. Public functions are re-exported by :mod:`vidhash.kernels.ops`; the library
reaches them only through ``backend="auto" | "triton"``.
"""
