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


def _run(cmd, out):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd + [f"out_dir={out}", "--no-progress"], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rows = list(csv.DictReader(open(out / "loss.csv")))
    two = "--nproc_per_node" in cmd
    assert ("fastest process (median ms/step): data" in proc.stdout + proc.stderr) == two  # per-process spread
    return [float(r["loss"]) for r in rows], load_file(str(out / "export" / "transformer" / "diffusion_pytorch_model.safetensors"))


@pytest.mark.timeout(400)
def test_two_processes_match_one(tmp_path):
    one = [sys.executable, "-m", "vidhash.cli", "train", *ARGS]
    two = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "vidhash.cli", "train", *ARGS]
    loss1, w1 = _run(one, tmp_path / "one")
    loss2, w2 = _run(two, tmp_path / "two")
    assert len(loss1) == len(loss2) == 4
    assert loss2 == pytest.approx(loss1, rel=1e-5)
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], atol=1e-6, rtol=1e-5)
