#!/usr/bin/env bash
# One ~9.5-minute call on nvidia-h200-x2 (2026-11-30, evening 2):
#   1. scripts/gpu/scaling_x2.sh with run D: is the 2-GPU shortfall (1.77x, target >= 1.8x) DDP's or
#      the host's? A (1 GPU), D (two independent 1-GPU runs at once, no communication), B (DDP
#      defaults), C (DDP static graph + gradients as bucket views, 6 data workers per process);
#      nvidia-smi samples SM clock, power, temperature and throttle reasons every 0.5 s meanwhile;
#   2. continue training the shipped model on both GPUs (init_from=models/world-tiny-v1, batch 128,
#      lr 2e-4 cosine fitted to the time left) for the rest of the call; fp16 export, then the
#      next-chunk probe of both models. Candidate v2: shipped only if vidhash eval world says it is better.
# One archive comes back: $OUT/all.tgz (model/ = the fp16 export).
#   source scripts/gpu/setup.sh && bash scripts/gpu/scale_train_x2.sh
set -u
[[ ":${PYTHONPATH:-}:" == *":/tmp/site:"* ]] || source scripts/gpu/setup.sh || exit 1
T0=$(date +%s)
nvidia-smi --query-gpu=timestamp,index,clocks.sm,clocks.mem,power.draw,temperature.gpu,utilization.gpu,clocks_event_reasons.active \
  --format=csv,noheader -lms 500 > "$OUT/smi.csv" 2>&1 &
SMI=$!
RUN_D=1 A_MIN=${A_MIN:-1.3} B_MIN=${B_MIN:-0.75} C_MIN=${C_MIN:-0.75} D_MIN=${D_MIN:-0.75} \
  C_OPTS="ddp_static_graph=true ddp_gradient_as_bucket_view=true data.num_workers=6" \
  timeout ${T_SCALING:-330} bash scripts/gpu/scaling_x2.sh 2>&1 | grep -v "^vidhash train\|^ddp:" | tail -16
echo "scaling done at $(( $(date +%s) - T0 )) s"
LEFT=$(( ${T_END:-560} - ($(date +%s) - T0) ))
MIN=$(python3 -c "print(round(max(0.5, ($LEFT - 50) / 60), 2))")  # 50 s: launch, compile (warm cache), export
echo "training v2 for $MIN min"
${LAUNCH2:-python3 -m accelerate.commands.launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision bf16 --dynamo_backend no} \
  -m vidhash.cli train configs/train/world_tiny.yaml gradient_checkpointing=false compile=true fit_schedule=true \
  checkpoint.every=1000000 log_every=50 batch_size=128 init_from=models/world-tiny-v1 optim.lr=2e-4 optim.warmup_steps=200 \
  export_max_mb=15 out_dir=/tmp/v2 --max-minutes "$MIN" --no-progress > "$OUT/train_v2.log" 2>&1
echo "train rc $? at $(( $(date +%s) - T0 )) s"; grep -v "^step " "$OUT/train_v2.log" | grep -v Warning | tail -6
grep "^step " "$OUT/train_v2.log" | awk 'NR % 10 == 0' | cut -c1-90
cp /tmp/v2/loss.csv "$OUT/train_v2.csv" 2>/dev/null; cp -r /tmp/v2/export "$OUT/model" 2>/dev/null
[ -d "$OUT/model" ] && timeout 40 python3 scripts/world_probe.py models/world-tiny-v1 "$OUT/model" --device cuda 2>&1 | grep "^{"
kill $SMI 2>/dev/null
cd "$OUT" && tar czf /tmp/all.tgz . && find . -mindepth 1 -delete && mv /tmp/all.tgz .
echo "all done at $(( $(date +%s) - T0 )) s"
