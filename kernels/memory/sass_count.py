"""Offline SASS count of the levels-select kernels for sm_90 (no GPU needed).

    python -m vidhash.kernels.memory.sass_count [--bits 32] [--top-k 64]

Compiles each kernel of ``memory_select_levels`` with ``triton.compile`` for ``cuda:90`` as the
JIT specializes it at the benchmark's shape (16-byte aligned pointers, sizes divisible by 16),
disassembles the cubin with the bundled ``cuobjdump`` and prints, per kernel: registers, spill
(local memory) bytes, and the instructions of its main loop per (query, entry) pair — for the
expansion (one warp per query), warp instructions per lane — with the loop's instruction mix.
kernels/memory/NOTES.md quotes the numbers.
"""
from __future__ import annotations

import argparse
import collections
import os
import tempfile

from vidhash.kernels.sass import compile_sm90, main_loop


def count(n_bits: int = 32, top_k: int = 64, queries: int = 2048, capacity: int = 65536) -> list[dict]:
    """Registers, spills and loop instructions per pair of each kernel (see the module docstring)."""
    import triton

    from vidhash.kernels.memory import kernel as K

    ints = {"N": queries, "C": capacity, "n_bits": n_bits, "top_k": top_k, "R": 1, "PR": 1, "RMAX": 32,
            "RT": queries * 12, "p": 2}
    kp = max(32, triton.next_power_of_2(n_bits))
    scoring = dict.fromkeys(("qa_ptr", "bits_ptr"), "*i8") | dict.fromkeys(("off_ptr", "nv_ptr", "st_ptr", "part_ptr"), "*i32")
    count_sig = scoring | dict.fromkeys(("p", "N", "C", "n_bits", "top_k", "R", "PR", "RMAX", "RT"), "i32")
    emit_sig = scoring | {"p": "i32", "items_ptr": "*i32", "nitems_ptr": "*i32"} | dict.fromkeys(
        ("N", "C", "n_bits", "top_k", "R", "PR", "RMAX", "RT"), "i32")
    expand_sig = dict.fromkeys(("qsig_ptr", "sigc_ptr", "emap_ptr", "nv_ptr", "st_ptr", "items_ptr", "nitems_ptr",
                                "idx_ptr"), "*i32") | dict.fromkeys(("N", "C", "n_bits", "top_k", "R"), "i32")
    tile = dict(KP=kp, BQ=64, BC=128)
    after = {"FIRST": False, "PNREG": 4, "PSAMPLE": 8, "PWINDOW": True, "COUNT": True}  # what each pass settles: the one before
    jobs = [  # name, kernel, signature, constexprs, warps, stages, loop marker, pairs (lanes) per thread per iteration
        ("probe (every 32nd)", K.level_count_kernel, count_sig,
         {**tile, "COUNT": True, "NREG": 4, "SAMPLE": 32, "WINDOW": False, "FIRST": True, "PNREG": 1, "PSAMPLE": 1, "PWINDOW": False}, 4, 3, "IGMMA", 64),
        ("probe (every 8th)", K.level_count_kernel, count_sig,
         {**tile, "COUNT": True, "NREG": 4, "SAMPLE": 8, "WINDOW": True, "FIRST": False, "PNREG": 4, "PSAMPLE": 32, "PWINDOW": False}, 4, 3, "IGMMA", 64),
        ("window pass", K.level_count_kernel, count_sig, {**tile, "NREG": 2, "SAMPLE": 1, "WINDOW": True, **after}, 4, 3, "IGMMA", 64),
        ("closing pass", K.level_count_kernel, count_sig,
         {**tile, "COUNT": True, "NREG": 3, "SAMPLE": 1, "WINDOW": False, "FIRST": False, "PNREG": 2, "PSAMPLE": 1, "PWINDOW": True}, 4, 3, "IGMMA", 64),
        ("emit", K.level_emit_kernel, emit_sig, {**tile, "USE_POPC": True, "PNREG": 3, "PSAMPLE": 1, "PWINDOW": False}, 4, 3, "IGMMA", 64),
        ("expand (1 warp, /lane)", K.level_expand_kernel, expand_sig, {"NW": (n_bits + 31) // 32, "G": 16, "BW": 16, "USE_POPC": True}, 1, 1, None, 256),
    ]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, fn, sig, consts, warps, stages, marker, per_thread in jobs:
            sass, use = compile_sm90(fn, sig, consts, ints, warps, stages, tmp)
            body = main_loop(sass, marker)
            mix = collections.Counter(op.split(".")[0] for op in body)
            rows.append({"kernel": name, "regs": use.get("REG", 0), "local_bytes": use.get("LOCAL", 0),
                         "loop_instr": len(body), "per_pair": len(body) / per_thread, "mix": dict(mix.most_common(8))})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bits", type=int, default=32)
    p.add_argument("--top-k", type=int, default=64)
    args = p.parse_args(argv)
    os.environ.pop("TRITON_INTERPRET", None)
    for r in count(args.bits, args.top_k):
        mix = ", ".join(f"{k} {v}" for k, v in r["mix"].items())
        print(f"{r['kernel']:20s} {r['regs']:4d} regs, {r['local_bytes']} B local; loop {r['loop_instr']:4d} instr = "
              f"{r['per_pair']:5.2f} per pair  ({mix})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
