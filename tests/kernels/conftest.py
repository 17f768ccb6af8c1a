"""Kernel tests run the Triton kernels' own code on CPU under ``TRITON_INTERPRET=1`` when no
CUDA device is present (set before triton is imported). On CUDA the attention kernels run their
default config (``VIDHASH_AUTOTUNE=0``) unless a test asks for the autotuner: timing every config at
every new shape took the first 4 tests of the sparse-attention files 230 s on an H100 (2026-12-05);
the tests that check each config of an autotune list set ``VIDHASH_AUTOTUNE=1`` themselves."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _default_configs_on_cuda(monkeypatch):
    """Only for the tests in this folder (a module-level setting would reach every test collected
    after it); a test's own ``monkeypatch.setenv("VIDHASH_AUTOTUNE", "1")`` runs later and wins."""
    if torch.cuda.is_available() and "VIDHASH_AUTOTUNE" not in os.environ:
        monkeypatch.setenv("VIDHASH_AUTOTUNE", "0")


if os.environ.get("TRITON_INTERPRET") == "1":
    from vidhash.kernels.interpreter import patch_for_numpy_2_4  # (importing vidhash applies it too)

    patch_for_numpy_2_4()
