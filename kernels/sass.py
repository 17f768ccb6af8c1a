"""Offline SASS reading of the Triton kernels for sm_90 (no GPU needed).

    python -m vidhash.kernels.sass block-score [--tiles 16x128x4,64x32x4]
    python -m vidhash.kernels.sass block-mass
    python -m vidhash.kernels.sass dkdv              (the backward's dk/dv kernels, key blocks of 16)
    python -m vidhash.kernels.sass tma-forward       (the TMA forward's autotune configs: programs per SM)
    python -m vidhash.kernels.sass tma-dkdv          (the same for the TMA dk/dv kernel)
    python -m vidhash.kernels.sass pointer-forward   (the same for the pointer forward: blocks of 16)
    python -m vidhash.kernels.sass pointer-dq        (and the pointer dq kernel)
    python -m vidhash.kernels.memory.sass_count           (the memory read's kernels)

Compiles a kernel with ``triton.compile`` for ``cuda:90`` as the JIT would specialize it
(16-byte aligned pointers, integer arguments divisible by 16 where they are), disassembles the
cubin with the ``cuobjdump`` that ships with Triton and reports registers, stack (spills) and the
instructions of each loop (a backward branch) — per block pair and thread where the caller says
how many pairs a thread holds per iteration. Instruction counts are what the code issues per
iteration, not time: a GPU run decides (kernels' NOTES.md quote both).
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import tempfile

INSTR = re.compile(r"\s*/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_.]+)(.*?);")
BRANCH = re.compile(r"BRA\s+(?:`?\(?)0x([0-9a-f]+)")


def disassemble(ck, workdir: str, name: str) -> tuple[str, str]:
    """SASS text and ``-res-usage`` text of a compiled kernel ``ck``."""
    import triton

    cubin = os.path.join(workdir, f"{name}.cubin")
    with open(cubin, "wb") as f:
        f.write(ck.asm["cubin"])
    dump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    sass = subprocess.run([dump, "-sass", cubin], capture_output=True, text=True, check=True).stdout
    res = subprocess.run([dump, "-res-usage", cubin], capture_output=True, text=True, check=True).stdout
    return sass, res


def compile_sm90(fn, sig: dict, consts: dict, ints: dict, warps: int, stages: int, workdir: str,
                 maxnreg: int | None = None):
    """``(sass, usage)`` of ``fn`` compiled for sm_90: ``sig`` maps each runtime argument to its
    Triton type (``"*i8"``, ``"i32"``, ``"tensordesc<...>"``…), ``consts`` the constexprs, ``ints``
    the integer values the JIT would see (divisible by 16 → specialized as such), ``maxnreg`` a
    config's register cap; ``usage`` = ``{"REG", "STACK", "LOCAL", "SHARED"}`` (bytes of shared memory)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature = {**sig, **dict.fromkeys(consts, "constexpr")}
    names = list(fn.arg_names)
    attrs = {(names.index(k),): [["tt.divisibility", 16]] for k, t in sig.items()
             if t.startswith("*") or ints.get(k, 1) % 16 == 0}
    src = ASTSource(fn=fn, signature=signature, constexprs=consts, attrs=attrs)
    options = {"num_warps": warps, "num_stages": stages} | ({"maxnreg": maxnreg} if maxnreg else {})
    ck = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)
    sass, res = disassemble(ck, workdir, fn.__name__)
    usage = {k: int(v) for k, v in re.findall(r"(REG|LOCAL|STACK):(\d+)", res)}
    usage["SHARED"] = int(ck.metadata.shared)
    return sass, usage


def _config_counts(fn, sig: dict, consts: dict, ints: dict, cfg, workdir: str, first_loops: int | None = None) -> dict:
    """One autotune config ``cfg`` of ``fn`` compiled for sm_90: registers, stack, shared memory,
    programs an SM (by registers and shared memory), and the largest loop's instructions and spill
    instructions (among the first ``first_loops`` loops when given)."""
    sig = sig | {a: "i32" for a in fn.arg_names if a not in sig and a not in consts}
    sass, use = compile_sm90(fn, sig, consts, ints, cfg.num_warps, cfg.num_stages, workdir, cfg.maxnreg)
    body = max(loops(sass)[:first_loops], key=len)
    regs = use.get("REG", 0)
    per_sm = min(65536 // (-(-max(regs, 1) // 8) * 8 * 32 * cfg.num_warps), 232448 // max(use["SHARED"], 1))
    return {"warps": cfg.num_warps, "stages": cfg.num_stages, "maxnreg": cfg.maxnreg or 0, "regs": regs,
            "stack": use.get("STACK", 0), "smem": use["SHARED"], "per_sm": per_sm, "loop": len(body),
            "spills": sum(o.startswith(("STL", "LDL")) for o in body)}


def loops(sass: str) -> list[list[str]]:
    """Mnemonics of every loop body (from a backward branch's target to the branch), in code order."""
    code = [(int(m.group(1), 16), m.group(2), m.group(3)) for m in map(INSTR.match, sass.splitlines()) if m]
    out = []
    for addr, op, rest in code:
        b = BRANCH.search(op + rest) if op.startswith("BRA") else None
        if b and int(b.group(1), 16) < addr:
            out.append([o for a, o, _ in code if int(b.group(1), 16) <= a <= addr])
    return out


def main_loop(sass: str, needs: str | None) -> list[str]:
    """The first loop containing an instruction starting with ``needs``; the largest loop when None."""
    found = [body for body in loops(sass) if needs is None or any(o.startswith(needs) for o in body)]
    if not found:
        return []
    return found[0] if needs else max(found, key=len)


# --------------------------------------------------------------------------------------------
# the block-score kernel (pooled / learned selection), at the bench's shapes
# --------------------------------------------------------------------------------------------
BLOCK_SCORE_SHAPES = {  # name: (query blocks, key blocks, code width R, kept)
    "131k": (1024, 2048, 64, 64),  # N = 131,072, d 64, query blocks of 128, key blocks of 64, 1/32
    "wan": (256, 512, 128, 16),  # Wan 1.3B 480p, 32,760 tokens, d 128, same blocks and density
    "wanmini": (264, 528, 128, 66),  # wan-mini's drop-in: 33,792 tokens, d 128, key blocks of 64, 1/8
}


def block_score_counts(tiles=((16, 128, 4),), shapes=("131k", "wan"), m: int = 1, store: bool = False) -> list[dict]:
    """Registers, stack and per-pass loop instructions of the block-score kernel (pooled codes with
    ``m`` query sub-centroids — ``scorer="subgrid"`` is ``m=4`` —, non-causal; ``store``: the ``STORE``
    form, the later passes reading the coarse pass's levels) for each tile
    ``(block_m, block_n, warps)`` × shape; ``per_pair`` = the four passes' loop instructions per
    block pair a thread holds in one step."""
    from vidhash.kernels.block_score import kernel as K

    fn = K.block_score_kernel
    consts_names = ("R", "M", "P", "CAUSAL", "BLOCK_M", "BLOCK_N", "STORE")
    sig = {"QC": "*i8", "KC": "*i8", "SHIFT": "*i32", "OUT": "*i32", "LV": "*i16" if store else "*i32"}
    sig |= {n: "i32" for n in fn.arg_names if n not in sig and n not in consts_names}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for shape in shapes:
            nqb, nkb, width, kept = BLOCK_SCORE_SHAPES[shape]
            ints = {n: 16 for n in sig if n.startswith("stride")}
            ints |= dict(H=12, NQ=nqb * 128, NK=nkb * 64, NQB=nqb, NKB=nkb, NSUB=nkb, KEPT=kept, BQ=128, BK=64,
                         LOCAL=1, SINK=1, stride_kj=width, stride_qc=width, stride_lc=nkb)
            for bm, bn, warps in tiles:
                consts = dict(R=width, M=m, P=1, CAUSAL=False, BLOCK_M=bm, BLOCK_N=bn, STORE=store)
                sass, use = compile_sm90(fn, sig, consts, ints, warps, 3, tmp)
                passes = [len(b) for b in loops(sass)][:4]  # smax, coarse, fine, emit (then the -1 padding)
                per_thread = bm * bn / (32 * warps)
                mix = collections.Counter(o.split(".")[0] for b in loops(sass)[:4] for o in b)
                rows.append({"shape": shape, "m": m, "store": store, "tile": f"{bm}x{bn}x{warps}", "regs": use.get("REG", 0),
                             "stack": use.get("STACK", 0), "passes": passes, "per_pair": sum(passes) / per_thread,
                             "mix": dict(mix.most_common(6))})
    return rows


def block_mass_counts(query_stride: int = 4, dtype: str = "bf16") -> dict:
    """Registers, stack and the two sweeps' loop instructions of the block-mass kernel at the
    drop-in's ``reuse_mass`` shape (wan-mini: 3 heads, 33,792 tokens, d 128, query blocks of 64
    with every ``query_stride``-th query, key blocks of 64; the launcher's 64 queries a program)."""
    from vidhash.kernels.block_mass import kernel as K

    fn = K.block_mass_kernel
    tq = 64 // query_stride
    consts = dict(TQ=tq, G=max(1, 64 // tq), BK=64, D=128, PREC="tf32")
    sig = {"Q": f"*{dtype}", "K": f"*{dtype}", "OUT": "*fp32", "sm_scale_log2": "fp32"}
    sig |= {n: "i32" for n in fn.arg_names if n not in sig and n not in consts}
    ints = dict(stride_qb=3 * 33792 // query_stride * 128, stride_qh=128, stride_qn=384, stride_kb=3 * 33792 * 128,
                stride_kh=128, stride_kn=384, stride_ob=3 * 528 * 528, stride_oh=528 * 528, stride_oc=528,
                H=3, NQS=33792 // query_stride, NK=33792, NQB=528, NKB=528)
    with tempfile.TemporaryDirectory() as tmp:
        sass, use = compile_sm90(fn, sig, consts, ints, 4, 3, tmp)
    sweeps = [len(b) for b in loops(sass)]
    return {"query_stride": query_stride, "regs": use.get("REG", 0), "stack": use.get("STACK", 0), "loops": sweeps,
            "mma": sum(o.startswith(("HMMA", "HGMMA")) for b in loops(sass) for o in b)}  # HGMMA: wgmma, per warpgroup


def dkdv_counts(shapes=((64, 128), (128, 64)), bk: int = 16, configs=((4, 2), (4, 3), (8, 2), (8, 3))) -> list[dict]:
    """Registers, stack, programs an SM, spill and MMA instructions (``HMMA``: mma.sync; ``HGMMA``: a
    warpgroup MMA) in the loops of the dk/dv kernels for key blocks of ``bk`` (bf16, non-causal,
    131K tokens × 12 heads) at each ``(head dim, query block)``: the tile kernel one block a program
    (``G = 1``, how blocks of 16 run by default) and the per-block kernel with 4 and 2 blocks a
    program (``VIDHASH_DKDV_SUB=4`` / ``2``). The per-block kernel runs 8 warps only on a GPU (it faulted
    at 4 on an H200, ``kernel._sub_configs``); its 4-warp rows are kept for that comparison."""
    from vidhash.kernels.sparse_attention import kernel as K

    n, h = 131072, 12
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for d, bq in shapes:
            for name, fn, g in (("tile", K.sparse_attn_bwd_dkdv_kernel, 1), ("per-block", K.sparse_attn_bwd_dkdv_sub_kernel, 64 // bk),
                                ("per-block", K.sparse_attn_bwd_dkdv_sub_kernel, 2)):
                fn = fn.fn  # under the autotuner
                consts = dict(BQ=bq, BLOCK_M=bq, BK=bk, BK_SUB=bk, G=g, D=d, E=d, CAUSAL=False, PREC="tf32")
                sig = {a: "*bf16" for a in ("Q", "K", "V", "DO", "DK", "DV")}
                sig |= {a: "*fp32" for a in ("LSE", "DELTA")} | {a: "*i32" for a in ("PTR", "QLIST", "QBITS", "ORDER")}
                sig |= {"sm_scale": "fp32", "sm_scale_log2": "fp32"}
                sig |= {a: "i32" for a in fn.arg_names if a not in sig and a not in consts}
                ints = {a: (h * n * d if a.endswith("b") else d if a.endswith("h") else h * d) for a in sig if a.startswith("stride")}
                ints |= dict(H=h, NQ=n, NK=n, NGRP=n // bk // g)
                for warps, stages in configs:
                    sass, use = compile_sm90(fn, sig, consts, ints, warps, stages, tmp)
                    body = main_loop(sass, None)
                    ops = [o for b in loops(sass) for o in b]
                    regs = use.get("REG", 0)
                    rows.append({"d": d, "bq": bq, "kernel": name, "G": g, "warps": warps, "stages": stages, "regs": regs,
                                 "stack": use.get("STACK", 0), "per_sm": 65536 // (-(-max(regs, 1) // 8) * 8 * 32 * warps),
                                 "loop": len(body), "spills": sum(o.startswith(("STL", "LDL")) for o in ops),
                                 "hmma": sum(o.startswith("HMMA") for o in ops), "hgmma": sum(o.startswith("HGMMA") for o in ops)})
    return rows


def tma_forward_counts(ds=(64, 128), bq: int = 128, bk: int = 64) -> list[dict]:
    """:func:`_config_counts` of the TMA forward for each config of its autotune list (bf16,
    non-causal, key blocks of ``bk``, query blocks of ``bq``)."""
    from vidhash.kernels.sparse_attention import kernel_tma as KT

    fn = KT.sparse_attn_fwd_tma_kernel.fn
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for d in ds:
            consts = dict(BQ=bq, BK=bk, D=d, E=d, PREC="tf32")
            sig = {"q_desc": f"tensordesc<bf16[1,1,{bq},{d}]>", "k_desc": f"tensordesc<bf16[1,1,{bk},{d}]>",
                   "v_desc": f"tensordesc<bf16[1,1,{bk},{d}]>", "IDX": "*i32", "O": "*bf16", "LSE": "*fp32",
                   "sm_scale_log2": "fp32"}
            for cfg in KT._configs(forward=True):
                rows.append({"d": d, **_config_counts(fn, sig, consts, {}, cfg, tmp, first_loops=3)})
    return rows


def tma_dkdv_counts(shapes=((64, 128), (128, 64))) -> list[dict]:
    """As :func:`tma_forward_counts`, for the TMA dk/dv kernel's autotune configs (``QSPLIT`` 1: the
    query block whole, 2: in halves; ``per_block``: loop instructions per query block) at each
    ``(head dim, query block)``, key blocks of 64, bf16."""
    from vidhash.kernels.sparse_attention import kernel_tma as KT

    fn = KT.sparse_attn_bwd_dkdv_tma_kernel.fn
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for d, bq in shapes:
            for cfg in KT._prune_split(KT._dkdv_configs(), {}, BQ=bq):
                qs = cfg.kwargs["QSPLIT"]
                desc = lambda r: f"tensordesc<bf16[1,1,{r},{d}]>"
                sig = {"q_desc": desc(bq // qs), "k_desc": desc(64), "v_desc": desc(64), "do_desc": desc(bq // qs),
                       "LSE": "*fp32", "DELTA": "*fp32", "PTR": "*i32", "QLIST": "*i32", "ORDER": "*i32",
                       "DK": "*bf16", "DV": "*bf16", "sm_scale": "fp32", "sm_scale_log2": "fp32"}
                r = _config_counts(fn, sig, dict(BQ=bq, BK=64, D=d, E=d, PREC="tf32", QSPLIT=qs), {}, cfg, tmp)
                rows.append({"d": d, "bq": bq, "qsplit": qs, **r, "per_block": r["loop"] * qs})
    return rows


def pointer_forward_counts(shapes=((64, 128, 16), (128, 128, 16)), kernel: str = "fwd") -> list[dict]:
    """:func:`_config_counts` of the pointer forward (``kernel="fwd"``; blocks of 16 run it) or dq
    kernel (``"dq"``) for each non-causal config of its autotune list, per ``(head dim, query block,
    key block)``; bf16, strides divisible by 16 but the index list's."""
    from vidhash.kernels.sparse_attention import kernel as K

    autotuned = K.sparse_attn_fwd_kernel if kernel == "fwd" else K.sparse_attn_bwd_dq_kernel
    fn = autotuned.fn
    ints = {a: (1 if a == "stride_ic" else 16) for a in fn.arg_names if a.startswith("stride")}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for d, bq, bk in shapes:
            for cfg in K._prune_block_n(list(autotuned.configs), {}, BK_PAD=bk, CAUSAL=False):
                consts = dict(BQ=bq, BLOCK_M=bq, BK=bk, BK_PAD=bk, D=d, E=d, CAUSAL=False, PREC="tf32",
                              BLOCK_N=cfg.kwargs["BLOCK_N"])
                sig = {a: "*bf16" for a in ("Q", "K", "V", "O", "DO", "DQ") if a in fn.arg_names}
                sig |= {a: "*fp32" for a in ("LSE", "DELTA") if a in fn.arg_names} | {"IDX": "*i32"}
                sig |= {a: "fp32" for a in ("sm_scale", "sm_scale_log2") if a in fn.arg_names}
                rows.append({"d": d, "bq": bq, "bk": bk, "block_n": cfg.kwargs["BLOCK_N"],
                             **_config_counts(fn, sig, consts, ints, cfg, tmp)})
    return rows


def _tiles_arg(text: str):
    return tuple(tuple(int(x) for x in t.split("x")) for t in text.split(","))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("kernel", choices=["block-score", "block-mass", "dkdv", "tma-forward", "tma-dkdv", "pointer-forward",
                                      "pointer-dq"])
    p.add_argument("--tiles", type=_tiles_arg, default=((16, 128, 4),), help="block_m x block_n x warps, comma-separated")
    p.add_argument("--shapes", default="131k,wan", help=f"of {sorted(BLOCK_SCORE_SHAPES)}")
    p.add_argument("--m", type=int, default=1, help="query sub-centroids of the block-score kernel (subgrid: 4)")
    p.add_argument("--store", action="store_true", help="the block-score kernel's STORE form (levels written once, read back)")
    args = p.parse_args(argv)
    os.environ.pop("TRITON_INTERPRET", None)
    if args.kernel in ("pointer-forward", "pointer-dq"):
        print("d    bq   bk  block_n warps stages maxnreg regs stack per SM  loop instr  spill instr")
        shapes = ((64, 128, 16), (128, 128, 16)) if args.kernel == "pointer-forward" else ((64, 128, 16), (128, 64, 16))
        for r in pointer_forward_counts(shapes, "fwd" if args.kernel == "pointer-forward" else "dq"):
            print(f"{r['d']:<4d} {r['bq']:<4d} {r['bk']:<3d} {r['block_n']:7d} {r['warps']:5d} {r['stages']:6d} {r['maxnreg']:7d} "
                  f"{r['regs']:4d} {r['stack']:5d} {r['per_sm']:6d} {r['loop']:11d} {r['spills']:12d}")
        return 0
    if args.kernel == "tma-dkdv":
        print("d    bq   split warps stages maxnreg regs stack  smem    per SM  loop instr  per query block  spill instr")
        for r in tma_dkdv_counts():
            print(f"{r['d']:<4d} {r['bq']:<4d} {r['qsplit']:5d} {r['warps']:5d} {r['stages']:6d} {r['maxnreg']:7d} {r['regs']:4d} "
                  f"{r['stack']:5d} {r['smem']:7d} {r['per_sm']:6d} {r['loop']:11d} {r['per_block']:16d} {r['spills']:12d}")
        return 0
    if args.kernel == "tma-forward":
        print("d    warps stages maxnreg regs stack  smem    per SM  loop instr  spill instr")
        for r in tma_forward_counts():
            print(f"{r['d']:<4d} {r['warps']:5d} {r['stages']:6d} {r['maxnreg']:7d} {r['regs']:4d} {r['stack']:5d} "
                  f"{r['smem']:7d} {r['per_sm']:6d} {r['loop']:11d} {r['spills']:12d}")
        return 0
    if args.kernel == "dkdv":
        print("d    bq   kernel     G  warps stages regs stack per SM (by registers)  loop instr  spill  HMMA  HGMMA (in loops)")
        for r in dkdv_counts():
            print(f"{r['d']:<4d} {r['bq']:<4d} {r['kernel']:10s} {r['G']:2d} {r['warps']:5d} {r['stages']:6d} {r['regs']:4d} "
                  f"{r['stack']:5d} {r['per_sm']:6d} {r['loop']:11d} {r['spills']:6d} {r['hmma']:5d} {r['hgmma']:6d}")
        return 0
    if args.kernel == "block-mass":
        for stride in (1, 4):
            r = block_mass_counts(stride)
            print(f"block mass, query stride {stride}: {r['regs']} regs, {r['stack']} B stack, loops {r['loops']} "
                  f"instructions, {r['mma']} MMA instructions in them")
        return 0
    print("shape  tile       regs  stack  loop instr per pass (smax, coarse, fine, emit)  per pair")
    for r in block_score_counts(args.tiles, args.shapes.split(","), args.m, args.store):
        print(f"{r['shape']:6s} {r['tile']:10s} {r['regs']:4d} {r['stack']:6d}  "
              f"{str(r['passes']):44s} {r['per_pair']:7.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
