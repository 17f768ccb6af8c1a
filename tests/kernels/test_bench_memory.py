"""`vidhash bench memory` end to end at a tiny shape on CPU (the Triton kernels under the
interpreter): every row is produced, the levels read agrees with the candidates read, and
``--graphs`` (CUDA-graph replays) is refused without a CUDA device."""
import json

import pytest
import torch

from vidhash.cli import main

TINY = ["bench", "memory", "--queries", "16", "--buckets", "4", "--slots", "8", "--heads", "1", "--head-dim", "16",
        "--top-k", "4", "--frame-tokens", "8", "--clusters", "4", "--recall-queries", "16", "--rep-ms", "1",
        "--no-reference", "--device", "cpu"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU path of the bench")
def test_bench_memory_tiny_cpu(tmp_path):
    out = tmp_path / "m.json"
    assert main([*TINY, "--json", str(out)]) == 0
    rows = {r["name"].strip(): r for r in json.loads(out.read_text())["rows"]}
    assert rows["read triton levels"]["same_indices"] is True
    for name in ("dense SDPA (all entries)", "read triton", "select (levels)", "read triton levels fwd+bwd",
                 "write triton (1 frame)", "write merge triton"):
        assert rows[name]["ms"] > 0, name
    assert 0 <= rows["read triton"]["recall"] <= rows["read triton"]["oracle"] + 1e-6


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal without CUDA")
def test_bench_memory_graphs_needs_cuda(capsys):
    assert main([*TINY, "--graphs"]) == 2
    assert "--graphs" in capsys.readouterr().err
