"""Every python block of docs/diffusers.md runs as written (tiny random models, CPU)."""
import re
from pathlib import Path

import pytest
import torch
from diffusers.models.attention_dispatch import _AttentionBackendRegistry

from diffusers_tiny import COMPILE_OK

DOC = Path(__file__).resolve().parents[2] / "docs" / "diffusers.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", DOC.read_text(), flags=re.S | re.M)


def test_doc_has_examples():
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_doc_example_runs(index, monkeypatch):
    if "torch.compile(transformer" in BLOCKS[index] and not COMPILE_OK:
        pytest.skip("torch < 2.6: dynamo cannot trace diffusers' Wan forward")
    active = _AttentionBackendRegistry._active_backend
    torch._dynamo.reset()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the CLI example's subprocess: one thread on a shared machine
    try:
        exec(compile(BLOCKS[index], f"docs/diffusers.md block {index}", "exec"), {"__name__": "__doc_example__"})
    finally:
        _AttentionBackendRegistry.set_active_backend(active)
