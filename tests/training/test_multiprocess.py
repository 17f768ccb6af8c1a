"""Two training processes (DDP through accelerate, gloo on CPU, launched by torchrun) take the
same steps as one process with the same global batch: same losses, same weights."""
import csv
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

ARGS = ["configs/train/cpu_test.yaml", "max_steps=4", "checkpoint.every=2"]


def _start(cmd, out):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.Popen(cmd + [f"out_dir={out}", "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def _result(proc, two, out):
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stdout[-2000:] + stderr[-3000:]
    rows = list(csv.DictReader(open(out / "loss.csv")))
    assert ("fastest process (median ms/step): data" in stdout + stderr) == two  # per-process spread
    return [float(r["loss"]) for r in rows], load_file(str(out / "export" / "transformer" / "diffusion_pytorch_model.safetensors"))


@pytest.mark.timeout(400)
def test_two_processes_match_one(tmp_path):
    """The two runs at once (3 processes on 2 cores: about the time of the longer one alone)."""
    one = [sys.executable, "-m", "vidhash.cli", "train", *ARGS]
    two = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "vidhash.cli", "train", *ARGS]
    procs = [_start(two, tmp_path / "two"), _start(one, tmp_path / "one")]
    try:
        (loss2, w2), (loss1, w1) = [_result(p, name == "two", tmp_path / name) for p, name in zip(procs, ["two", "one"])]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert len(loss1) == len(loss2) == 4
    assert loss2 == pytest.approx(loss1, rel=1e-5)
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], atol=1e-6, rtol=1e-5)
