"""The offline SASS reader (``python -m vidhash.kernels.sass``) compiles the block-score kernel for
sm_90 with the ptxas that ships with Triton — no GPU — and the default counting form does not spill.
Run in a subprocess: the tests here import Triton in interpreter mode, which cannot compile. The
subprocesses start when the session has collected this file and run in the background
(``sass_run`` in conftest.py, which holds their command lines)."""
import os

import pytest

triton = pytest.importorskip("triton")
HAS_PTXAS = os.path.exists(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas"))


@pytest.mark.skipif(not HAS_PTXAS, reason="this triton build ships no ptxas")
def test_block_score_kernel_compiles_for_sm90_without_spills(sass_run):
    out = sass_run("block-score")
    assert out.returncode == 0, out.stderr[-2000:]
    row = [line.split() for line in out.stdout.splitlines() if line.startswith("131k")]
    assert len(row) == 1, out.stdout
    shape, tile, regs, stack = row[0][:4]
    per_pair = float(row[0][-1])
    assert tile == "16x128x4"
    assert int(stack) == 0 and int(regs) <= 255
    assert 50 < per_pair < 300  # 199 when written: the four passes' loops, not the whole kernel


@pytest.mark.skipif(not HAS_PTXAS, reason="this triton build ships no ptxas")
def test_per_block_dkdv_kernel_gets_warpgroup_mmas_for_blocks_of_16(sass_run):
    """The point of the per-block dk/dv kernel: with the query block as the MMA's M (scores) and the
    head dim as M (transposed dk, dv), blocks of 16 compile to Hopper's warpgroup MMAs (HGMMA),
    where the one-block-a-program tile (16-row M) gets mma.sync (HMMA) only; at 8 warps 4 blocks a
    program do not spill at d 64 and do at d 128, where 2 do not (VIDHASH_DKDV_SUB=1's rule)."""
    out = sass_run("dkdv")
    assert out.returncode == 0, out.stderr[-2000:]
    rows = {}
    for line in out.stdout.splitlines()[1:]:
        d, bq, name, g, warps, stages, regs, stack, per_sm, loop, spills, hmma, hgmma = line.split()
        rows[(int(d), name, int(g), int(warps), int(stages))] = dict(regs=int(regs), spills=int(spills), hmma=int(hmma),
                                                                     hgmma=int(hgmma), per_sm=int(per_sm))
    tile, sub = rows[(64, "tile", 1, 8, 2)], rows[(64, "per-block", 4, 8, 2)]
    assert tile["hmma"] > 0 and tile["hgmma"] == 0
    assert sub["hgmma"] > 0 and sub["hmma"] == 0
    assert sub["spills"] == 0 and sub["regs"] <= 255
    assert rows[(128, "per-block", 4, 8, 2)]["spills"] > 0 and rows[(128, "per-block", 2, 8, 2)]["spills"] == 0
    assert rows[(64, "per-block", 2, 8, 2)]["per_sm"] == 2 and sub["per_sm"] == 1


@pytest.mark.skipif(not HAS_PTXAS, reason="this triton build ships no ptxas")
def test_tma_forward_capped_configs_fit_more_programs_without_spills(sass_run):
    """The TMA forward's register-capped configs (query blocks of 128): at head dim 128 the 128-register
    one fits two programs (4 warpgroups) where every uncapped 8-warp config fits one; at head dim 64
    the 160-register 4-warp one fits three where the uncapped 4-warp ones fit two; no spill in the loop."""
    out = sass_run("tma-forward")
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [dict(zip(("d", "warps", "stages", "maxnreg", "regs", "stack", "smem", "per_sm", "loop", "spills"),
                     map(int, line.split()))) for line in out.stdout.splitlines()[1:]]
    capped = [r for r in rows if r["d"] == 128 and r["maxnreg"] == 128]
    plain = [r for r in rows if r["d"] == 128 and r["warps"] == 8 and r["maxnreg"] == 0]
    assert len(capped) == 1 and plain
    assert capped[0]["per_sm"] == 2 and capped[0]["spills"] == 0 and capped[0]["regs"] <= 128
    assert all(r["per_sm"] == 1 for r in plain)
    four = [r for r in rows if r["d"] == 64 and r["warps"] == 4 and r["maxnreg"] == 160]
    four_plain = [r for r in rows if r["d"] == 64 and r["warps"] == 4 and r["maxnreg"] == 0]
    assert len(four) == 1 and four[0]["per_sm"] == 3 and four[0]["spills"] == 0 and four[0]["stack"] == 0
    assert all(r["per_sm"] == 2 for r in four_plain)


@pytest.mark.skipif(not HAS_PTXAS, reason="this triton build ships no ptxas")
def test_tma_dkdv_halves_under_a_cap_fit_two_programs(sass_run):
    """The TMA dk/dv kernel at the 131K backward (d 64, query blocks of 128) and wan-mini training
    (d 128, query blocks of 64) shapes: every whole-block 8-warp config fits one program an SM; the
    query block in halves under a 128-register cap fits two."""
    out = sass_run("tma-dkdv")
    assert out.returncode == 0, out.stderr[-2000:]
    keys = ("d", "bq", "qsplit", "warps", "stages", "maxnreg", "regs", "stack", "smem", "per_sm", "loop", "per_block", "spills")
    rows = [dict(zip(keys, map(int, line.split()))) for line in out.stdout.splitlines()[1:]]
    for d, bq in ((64, 128), (128, 64)):
        whole8 = [r for r in rows if (r["d"], r["bq"], r["qsplit"], r["warps"]) == (d, bq, 1, 8)]
        capped = [r for r in rows if (r["d"], r["bq"], r["qsplit"], r["maxnreg"]) == (d, bq, 2, 128)]
        assert whole8 and all(r["per_sm"] == 1 for r in whole8)
        assert len(capped) == 1 and capped[0]["per_sm"] == 2 and capped[0]["regs"] <= 128


@pytest.mark.skipif(not HAS_PTXAS, reason="this triton build ships no ptxas")
def test_pointer_forward_and_dq_capped_configs_fit_two_programs_for_blocks_of_16(sass_run):
    """The pointer forward and dq kernels (blocks of 16): their 8-warp BLOCK_N=64 config fits one
    program an SM; under the 128-register cap two, with no spill at d 64."""
    out = sass_run("pointer-forward")
    assert out.returncode == 0, out.stderr[-2000:]
    keys = ("d", "bq", "bk", "block_n", "warps", "stages", "maxnreg", "regs", "stack", "per_sm", "loop", "spills")
    rows = [dict(zip(keys, map(int, line.split()))) for line in out.stdout.splitlines()[1:]]
    pick = lambda d, cap: [r for r in rows if (r["d"], r["block_n"], r["warps"], r["stages"], r["maxnreg"]) == (d, 64, 8, 2, cap)]
    plain, capped = pick(64, 0), pick(64, 128)
    assert len(plain) == len(capped) == 1 and plain[0]["per_sm"] == 1
    assert capped[0]["per_sm"] == 2 and capped[0]["spills"] == 0 and capped[0]["regs"] <= 128
    assert pick(128, 128)[0]["per_sm"] == 2
    out = sass_run("pointer-dq")
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [dict(zip(keys, map(int, line.split()))) for line in out.stdout.splitlines()[1:]]
    plain, capped = pick(64, 0), pick(64, 128)  # the dq kernel: the same config, the same effect
    assert plain[0]["per_sm"] == 1 and capped[0]["per_sm"] == 2 and capped[0]["spills"] == 0
