#!/usr/bin/env bash
# Training throughput: world_tiny for ~2 min on 1 GPU, then ~2 min on 2 GPUs (accelerate, the
# same per-GPU batch), and the ratio of samples/s. Run on the nvidia-h200-x2 kind.
#   bash scripts/gpu/train_world_scale.sh [MINUTES] [PER_GPU_BATCH]
set -u
source scripts/gpu/setup.sh || exit 1
MIN=${1:-2}
B=${2:-64}
common=(checkpoint.every=1000000 max_steps=1000000 log_every=10 --no-export --no-progress --max-minutes "$MIN")
python3 -m vidhash.cli train configs/train/world_tiny.yaml out_dir=/tmp/scale1 batch_size=$B "${common[@]}" | tail -4
python3 -m accelerate.commands.launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision bf16 \
  --dynamo_backend no -m vidhash.cli train configs/train/world_tiny.yaml out_dir=/tmp/scale2 batch_size=$((2 * B)) \
  "${common[@]}" | tail -4
cp /tmp/scale1/loss.csv "$OUT/scale_1gpu.csv"; cp /tmp/scale2/loss.csv "$OUT/scale_2gpu.csv"
python3 - "$OUT/scale_1gpu.csv" "$OUT/scale_2gpu.csv" <<'PY' | tee "$OUT/scale.txt"
import csv, statistics, sys
def sps(path):  # median samples/s over the rows after the first three (warm-up, data pool build)
    rows = [float(r["samples_per_s"]) for r in csv.DictReader(open(path))]
    return statistics.median(rows[3:] or rows)
one, two = sps(sys.argv[1]), sps(sys.argv[2])
print(f"1 GPU {one:.1f} samples/s; 2 GPUs {two:.1f} samples/s; ratio {two / one:.2f}x (target >= 1.8x)")
PY
