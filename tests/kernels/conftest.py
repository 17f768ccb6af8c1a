"""Kernel tests run the Triton kernels' own code on CPU under ``TRITON_INTERPRET=1`` when no
CUDA device is present (set before triton is imported)."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


if os.environ.get("TRITON_INTERPRET") == "1":
    from vidhash.kernels.interpreter import patch_for_numpy_2_4  # (importing vidhash applies it too)

    patch_for_numpy_2_4()
