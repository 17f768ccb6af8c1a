"""Which autotune config of which pointer kernel faults or gives wrong results (GPU only).

Each config of the pointer kernels' autotune lists — forward, dq, grouped dk/dv, and the per-block
dk/dv's whole space (4 and 8 warps: ``kernel._tile_configs(False)``, though it autotunes over 8 only
since it faulted at 4) — runs alone through the autotuner (``VIDHASH_AUTOTUNE=1``) under
``CUDA_LAUNCH_BLOCKING=1``, the other kernels held to the config the autotuner would keep first for
each case (``kernel._prune_block_n``: causal-safe on causal cases). Cases: key blocks of 16, 3,000
tokens, query blocks of 128, density 0.2; d 64, d 128, d 64 causal; bf16. Output and gradients are
checked against float32 autograd through the reference. A config out of shared memory is recorded
for that case and skipped, as the autotuner would. A CUDA fault kills the context, so a worker
process runs the jobs from a position on; after a fault, a crash or a hang (``--job-timeout``), the
driver records it and restarts past that job. Prints one JSON line per job and writes the list to
``$OUT/config_faults.json``.

    python3 scripts/gpu/config_faults.py            (on the CPU, TRITON_INTERPRET=1: a smoke run of
                                                     the script only — the interpreter runs one config)
"""
import argparse
import json
import os
import subprocess
import sys
import traceback

DEV = "cuda" if os.environ.get("TRITON_INTERPRET") != "1" else "cpu"
CASES = ((64, False), (128, False), (64, True))
KERNELS = ("fwd", "dq", "dkdv", "dkdv_sub")
FLAGS = {"fwd": ("0",), "dq": ("0",), "dkdv": ("0",), "dkdv_sub": ("2", "4")}  # VIDHASH_DKDV_SUB per kernel


def kernels():
    import vidhash.kernels.sparse_attention.kernel as K
    return {"fwd": K.sparse_attn_fwd_kernel, "dq": K.sparse_attn_bwd_dq_kernel, "dkdv": K.sparse_attn_bwd_dkdv_kernel,
            "dkdv_sub": K.sparse_attn_bwd_dkdv_sub_kernel}


def spaces():
    """Each kernel's configs to try: its autotune list; the per-block kernel's whole space."""
    import vidhash.kernels.sparse_attention.kernel as K
    out = {n: list(k.configs) for n, k in kernels().items()}
    out["dkdv_sub"] = K._tile_configs(False)
    return out


def jobs():
    return [(name, i) for name, cfgs in spaces().items() for i in range(len(cfgs))]


def worker(start: int):
    import torch
    from triton.runtime.errors import OutOfResources

    import vidhash.kernels.sparse_attention.kernel as K
    from vidhash.attention import block_sparse_attention, select_blocks
    from vidhash.kernels.sparse_attention.ops import autotuning, block_sparse_attention_triton

    assert DEV == "cpu" or autotuning(), "the pinned configs run through the autotuner: VIDHASH_AUTOTUNE=1"
    kerns, every, originals = kernels(), spaces(), {n: list(k.configs) for n, k in kernels().items()}
    data = {}
    for d, causal in CASES:
        torch.manual_seed(0)
        q, k, v = (torch.randn(1, 3, 3000 if DEV == "cuda" else 200, d, device=DEV, dtype=torch.bfloat16) for _ in range(3))
        sel = select_blocks(q, k, density=0.2, block_size=16, query_block_size=128, causal=causal)
        dout = torch.randn_like(q)
        qf, kf, vf = (t.detach().float().requires_grad_(True) for t in (q, k, v))
        out = block_sparse_attention(qf, kf, vf, sel)
        out.backward(dout.float())
        data[(d, causal)] = (q, k, v, sel, dout, [out.detach(), qf.grad, kf.grad, vf.grad])
    todo = jobs()
    for pos in range(start, len(todo)):
        name, i = todo[pos]
        cfg = every[name][i]
        rec = {"pos": pos, "kernel": name, "config": str(cfg), "errors": {}, "out_of_resources": []}
        try:
            for flag in FLAGS[name]:
                os.environ["VIDHASH_DKDV_SUB"] = flag
                for (d, causal), (q, k, v, sel, dout, ref) in data.items():
                    case = f"d{d}{'c' if causal else ''} sub={flag}"
                    for n, kern in kerns.items():  # the others: what the autotuner would keep first here
                        kept = K._prune_block_n(originals[n], {}, BK_PAD=16, CAUSAL=causal) if n in ("fwd", "dq") else originals[n]
                        kern.configs = [cfg] if n == name else [kept[0]]
                        kern.cache.clear()
                    leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]
                    try:
                        out = block_sparse_attention_triton(*leaves, sel)
                        out.backward(dout)
                        if DEV == "cuda":
                            torch.cuda.synchronize()
                    except OutOfResources:
                        rec["out_of_resources"].append(case)
                        continue
                    for g, a, r in zip(("out", "dq", "dk", "dv"), [out] + [t.grad for t in leaves], ref):
                        rec["errors"][f"{case} {g}"] = round(((a.float() - r).norm() / r.norm()).item(), 5)
            rec["worst"] = max(rec["errors"].values(), default=0.0)
            print(json.dumps(rec), flush=True)
        except Exception as exc:  # noqa: BLE001 — a fault: name the launch, let the driver restart
            frames = [f"{f.filename.split('/')[-1]}:{f.lineno} {f.name}" for f in traceback.extract_tb(exc.__traceback__)
                      if "vidhash" in f.filename or "kernels" in f.filename]
            rec.update(fault=f"{type(exc).__name__}: {str(exc).splitlines()[0]}", frames=frames[-4:])
            print(json.dumps(rec), flush=True)
            sys.exit(3)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--job-timeout", type=float, default=240.0, help="seconds a worker may run before it counts as hung")
    args = ap.parse_args()
    if args.worker is not None:
        return worker(args.worker)
    env = dict(os.environ, CUDA_LAUNCH_BLOCKING="1", VIDHASH_AUTOTUNE="1")
    todo = jobs()
    pos, lines = 0, []
    while pos < len(todo):
        try:
            run = subprocess.run([sys.executable, __file__, "--worker", str(pos)], env=env, capture_output=True, text=True,
                                 timeout=args.job_timeout)
            stdout, rc, err = run.stdout, run.returncode, run.stderr
        except subprocess.TimeoutExpired as exc:
            stdout, rc, err = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or ""), None, "hung"
        got = [json.loads(x) for x in stdout.splitlines() if x.startswith("{")]
        for rec in got:
            print(json.dumps(rec), flush=True)
        lines += got
        if rc == 0:
            break
        nxt = got[-1]["pos"] + 1 if got else pos
        if rc != 3:  # died (signal, abort) or hung on job nxt without a record: record it, go past it
            name, i = todo[nxt]
            rec = {"pos": nxt, "kernel": name, "config": str(spaces()[name][i]),
                   "fault": f"worker {'hung' if rc is None else f'exited {rc}'}: {err[-300:]}"}
            print(json.dumps(rec), flush=True)
            lines.append(rec)
            nxt += 1
        pos = nxt
    out = os.environ.get("OUT", ".")
    os.makedirs(out, exist_ok=True)
    json.dump(lines, open(os.path.join(out, "config_faults.json"), "w"), indent=1)
    bad = [r for r in lines if "fault" in r or r.get("worst", 0) > 2e-2]
    print(f"{len(lines)} of {len(todo)} jobs reported, {len(bad)} faulted or wrong")


if __name__ == "__main__":
    main()
