"""Which autotune config of which pointer kernel faults or gives wrong gradients (GPU only).

Each config of the pointer kernels' autotune lists (forward, dq, grouped dk/dv, per-block dk/dv)
runs alone — the other kernels pinned to their first config that fits — under
``CUDA_LAUNCH_BLOCKING=1``, on key blocks of 16 (d 64, d 128, d 64 causal; 3,000 tokens, query
blocks of 128, density 0.2), gradients against float32 autograd through the reference. A CUDA
fault kills the context, so a worker process runs the jobs from a position on and the driver
restarts past a fault. One JSON line per job to stdout and ``$OUT/config_faults.json``.

    CUDA_LAUNCH_BLOCKING=1 python3 scripts/gpu/config_faults.py
"""
import json
import os
import subprocess
import sys
import traceback

DEV = "cuda" if os.environ.get("TRITON_INTERPRET") != "1" else "cpu"  # the CPU: a smoke run of the script
CASES = ((64, False), (128, False), (64, True))


def jobs():
    import vidhash.kernels.sparse_attention.kernel as K
    out = []
    for name, kern, flags in (("fwd", K.sparse_attn_fwd_kernel, ("0",)), ("dq", K.sparse_attn_bwd_dq_kernel, ("0",)),
                              ("dkdv", K.sparse_attn_bwd_dkdv_kernel, ("0",)),
                              ("dkdv_sub", K.sparse_attn_bwd_dkdv_sub_kernel, ("2", "4"))):
        for i in range(len(kern.configs)):
            out.append((name, i, flags))
    return out


def worker(start: int):
    import torch
    import vidhash.kernels.sparse_attention.kernel as K
    from vidhash.attention import block_sparse_attention, select_blocks
    from vidhash.kernels.sparse_attention.ops import block_sparse_attention_triton

    kerns = {"fwd": K.sparse_attn_fwd_kernel, "dq": K.sparse_attn_bwd_dq_kernel, "dkdv": K.sparse_attn_bwd_dkdv_kernel,
             "dkdv_sub": K.sparse_attn_bwd_dkdv_sub_kernel}
    every = {n: list(k.configs) for n, k in kerns.items()}
    first = {n: next(c for c in cs if c.kwargs.get("BLOCK_N", 16) >= 16) for n, cs in every.items()}
    data = {}
    for d, causal in CASES:
        torch.manual_seed(0)
        q, k, v = (torch.randn(1, 3, 3000 if DEV == "cuda" else 200, d, device=DEV, dtype=torch.bfloat16) for _ in range(3))
        sel = select_blocks(q, k, density=0.2, block_size=16, query_block_size=128, causal=causal)
        dout = torch.randn_like(q)
        qf, kf, vf = (t.detach().float().requires_grad_(True) for t in (q, k, v))
        block_sparse_attention(qf, kf, vf, sel).backward(dout.float())
        data[(d, causal)] = (q, k, v, sel, dout, [qf.grad, kf.grad, vf.grad])
    todo = jobs()
    for pos in range(start, len(todo)):
        name, i, flags = todo[pos]
        for n, kern in kerns.items():
            kern.configs = [every[n][i]] if n == name else [first[n]]
            kern.cache.clear()
        cfg = every[name][i]
        rec = {"pos": pos, "kernel": name, "config": str(cfg), "errors": {}}
        try:
            for flag in flags:
                os.environ["VIDHASH_DKDV_SUB"] = flag
                for (d, causal), (q, k, v, sel, dout, ref) in data.items():
                    if name == "fwd" or name == "dq":
                        if cfg.kwargs.get("BLOCK_N", 16) < 16:
                            continue
                    leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]
                    block_sparse_attention_triton(*leaves, sel).backward(dout)
                    if DEV == "cuda":
                        torch.cuda.synchronize()
                    for g, a, r in zip(("dq", "dk", "dv"), leaves, ref):
                        rec["errors"][f"d{d}{'c' if causal else ''} sub={flag} {g}"] = round(
                            ((a.grad.float() - r).norm() / r.norm()).item(), 5)
            rec["worst"] = max(rec["errors"].values(), default=0.0)
            print(json.dumps(rec), flush=True)
        except Exception as exc:  # noqa: BLE001 — a fault: name the launch, let the driver restart
            frames = [f"{f.filename.split('/')[-1]}:{f.lineno} {f.name}" for f in traceback.extract_tb(exc.__traceback__)
                      if "vidhash" in f.filename or "kernels" in f.filename]
            rec.update(fault=f"{type(exc).__name__}: {str(exc).splitlines()[0]}", frames=frames[-4:])
            print(json.dumps(rec), flush=True)
            sys.exit(3)


def main():
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        return worker(int(sys.argv[2]))
    env = dict(os.environ, CUDA_LAUNCH_BLOCKING="1")
    total, pos, lines = len(jobs()), 0, []
    while pos < total:
        run = subprocess.run([sys.executable, __file__, "--worker", str(pos)], env=env, capture_output=True, text=True)
        got = [json.loads(x) for x in run.stdout.splitlines() if x.startswith("{")]
        for rec in got:
            print(json.dumps(rec), flush=True)
        lines += got
        if run.returncode not in (0, 3) or not got:
            print(run.stderr[-3000:])
            break
        pos = got[-1]["pos"] + 1
    out = os.environ.get("OUT", ".")
    os.makedirs(out, exist_ok=True)
    json.dump(lines, open(os.path.join(out, "config_faults.json"), "w"), indent=1)
    bad = [r for r in lines if "fault" in r or r.get("worst", 0) > 2e-2]
    print(f"{len(lines)} jobs, {len(bad)} faulted or wrong")


if __name__ == "__main__":
    main()
