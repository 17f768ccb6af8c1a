"""scripts/levels_flatness.py's torch replay of the levels select (the work counts it reports: threshold
level, entries above it, emitted words, queries open after the window pass) against the Triton kernel's
own state, at the interpreter's tiling (the script's ``--check``)."""
import importlib.util
from pathlib import Path

import pytest
import torch

from test_memory_levels import random_signatures  # tests/kernels/test_memory_levels.py

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "levels_flatness.py"


def _script():
    spec = importlib.util.spec_from_file_location("levels_flatness", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("pool", [0, 40], ids=["distinct", "many-ties"])
def test_replay_equals_the_kernel_state(pool):
    g = torch.Generator().manual_seed(0)
    rows, cap, n_bits, top_k = 2, 640, 32, 24
    sigs = random_signatures((rows, cap), n_bits, g, pool)
    filled = torch.rand(rows, cap, generator=g) < 0.7
    q_sig = random_signatures((rows, 20), n_bits, g, pool)
    capture = {"tables": {"t": (torch.where(filled[..., None], sigs, 0), filled)},
               "reads": [{"layer": 0, "pass": 0, "table": "t", "q_sig": q_sig}]}
    got = _script().check(capture, top_k, n_bits, queries=20, device="cpu")
    assert got["T_equal"] and got["above_equal"] and got["words_equal"] and got["window_open_equal"], got


def test_index_lists_parse_and_bad_ones_give_a_usage_error():
    import argparse

    mod = _script()
    assert mod._index_list("20, 200,500,") == {20, 200, 500}
    for bad in ("1,x", "-3", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            mod._index_list(bad)
