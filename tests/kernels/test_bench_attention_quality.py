"""``vidhash bench attention``'s quality columns (recall, oracle, output error) on the kernels
(under ``TRITON_INTERPRET=1`` on a CPU, tiny shapes)."""
from types import SimpleNamespace

import pytest
import torch

from vidhash.bench.attention import selection_quality, video_like_qkv
from vidhash.kernels.block_select.ops import select_blocks_triton
from vidhash.selection import attention_error, oracle_recall

DEV = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("density", [pytest.param(0.25, id="N512-D64-bk32-density0.25"), pytest.param(1.0, id="N512-D64-bk32-dense")])
def test_selection_quality_columns(density):
    q, k, v = video_like_qkv((2, 16, 16), 2, 64, torch.float32, DEV, seed=1)
    sel = select_blocks_triton(q, k, density=density, block_size=32, query_block_size=64)
    got = selection_quality(q, k, v, sel, SimpleNamespace(recall_blocks=5))
    assert 0 < got["recall"] <= got["oracle"] + 1e-6 <= 1 + 2e-6
    want = oracle_recall(q, k, sel.kept, block_size=32, query_block_size=64, max_query_blocks=5)
    assert got["oracle"] == pytest.approx(want)
    if density == 1.0:
        assert got["recall"] == pytest.approx(1.0, abs=1e-5) and got["output_error"] < 1e-4
    else:
        assert got["recall"] < 1 and got["output_error"] > 1e-3
        # the error of the dense output itself is 0: the column measures the sparse output
        from vidhash.attention import dense_attention

        assert attention_error(q, k, v, dense_attention(q, k, v), query_block_size=64) < 1e-5


def test_flex_rows_on_the_same_blocks():
    """The FlexAttention rows (vidhash.integrations.flex): BlockMask build, then Flex's kernel (eager on a
    CPU) on the selected blocks, against vidhash's attention on them."""
    from vidhash.bench.attention import _flex_rows

    q, k, v = video_like_qkv((2, 8, 8), 2, 64, torch.float32, DEV, seed=2)
    sel = select_blocks_triton(q, k, density=0.25, block_size=16, query_block_size=32)
    rows = []
    ms = _flex_rows(lambda method, what, ms, err=None, **extra: rows.append(dict(what=what, ms=ms, err=err, **extra)),
                    q, k, v, sel, rep=1)
    assert [r["what"] for r in rows] == ["BlockMask build", "kernel"] and all(r["err"] is None for r in rows), rows
    assert ms is not None and ms > 0 and rows[1]["rel_diff_vs_vidhash"] < 1e-5


def test_autotune_record_names_pointer_and_tma_kernels():
    """bench attention's JSON records the autotuner's choice for every sparse-attention kernel it may
    launch, the TMA ones included (empty on a CPU: the interpreter runs one config)."""
    from vidhash.bench.attention import autotuned_configs

    names = set(autotuned_configs())
    assert names == {f"sparse_attn_{part}{tma}_kernel" for part in ("fwd", "bwd_dq", "bwd_dkdv") for tma in ("", "_tma")}


def test_report_records_its_json_by_file_name(tmp_path):
    """bench attention's JSON config names its own output by file name, not by the machine's path."""
    import json
    from types import SimpleNamespace as NS

    from vidhash.bench.attention import _write

    path = str(tmp_path / "attention.json")
    _write(path, "cpu", NS(json=path, sizes="16384", _private=1), [], {})
    config = json.loads(open(path).read())["config"]
    assert config == {"json": "attention.json", "sizes": "16384"}


@pytest.mark.parametrize("scorer", ["pooled", "simhash"])
def test_both_scorers_give_their_rows(scorer):
    """--scorer pooled (the library's default: codes + level kernel, then the kernel) and simhash (the
    fused path): every row measured, none failed, the selection's parts named per scorer."""
    from vidhash.bench.attention import run_shape

    args = SimpleNamespace(scorer=scorer, density=0.25, block_sizes="32", query_block=64, causal=False, dtype="fp16",
                           no_flex=True, flex_block_sizes="", no_backward=True, recall_blocks=2, rep_ms=1, seed=0,
                           device=DEV)
    rows = run_shape("tiny", (2, 8, 16), 1, 64, args)
    whats = [r["what"] for r in rows if r["method"] == "vidhash"]
    assert all(r["error"] is None and r["ms"] for r in rows), [(r["what"], r["error"]) for r in rows if r["error"]]
    parts = {"pooled": "  int8 codes kernel", "simhash": "  selection kernel alone"}
    assert parts[scorer] in whats and "select+attn fwd" in whats and {r["scorer"] for r in rows if "scorer" in r} == {scorer}
