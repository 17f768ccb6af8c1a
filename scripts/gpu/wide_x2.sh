#!/usr/bin/env bash
# Capacity or training time? Two runs side by side on nvidia-h200-x2, one GPU each, equal GPU time
# (2026-11-30, issue 5: invented ground of world-tiny-v2 is soft and has no landmarks):
#   W: world_wide (8.74M parameters, hidden 256) from scratch, v2's two-stage recipe;
#   T: world_tiny warm-started from models/world-tiny-v2, v2's stage-2 recipe, for the same time.
# If capacity limits invention, W beats T on away realism at equal GPU time; if training time
# does, T moves too. STAGE=1 trains W stage 1 (uniform σ) and T; STAGE=2 (carry out/xp) trains W
# stage 2 from out/xp/W1 and T on from out/xp/T1, then probes and evaluates both (1 min, 3 worlds).
# Exports come back split in ~9 MB parts: $OUT/<run>.tgz.part-aa, -ab ... (cat them, tar xzf).
#   source scripts/gpu/setup.sh && STAGE=1 bash scripts/gpu/wide_x2.sh
set -u
[[ ":${PYTHONPATH:-}:" == *":/tmp/site:"* ]] || source scripts/gpu/setup.sh || exit 1
T0=$(date +%s)
STAGE=${STAGE:-1}
L="$OUT/logs"; mkdir -p "$L"
COMMON="batch_size=128 gradient_checkpointing=false compile=true fit_schedule=true checkpoint.every=1000000
        log_every=50 export_max_mb=20 --max-minutes ${TRAIN_MIN:-7.5} --no-progress"
STAGE2="optim.warmup_steps=100 noise.sigma_sampling=logit_normal noise.logit_mean=0.3 noise.logit_std=1.0"
if [ "$STAGE" = 1 ]; then
  W="W1"; T="T1"
  CUDA_VISIBLE_DEVICES=0 python3 -m vidhash.cli train world_wide $COMMON out_dir=/tmp/W1 > "$L/train_W1.log" 2>&1 &
  CUDA_VISIBLE_DEVICES=1 python3 -m vidhash.cli train world_tiny $COMMON $STAGE2 out_dir=/tmp/T1 \
    init_from=models/world-tiny-v2 > "$L/train_T1.log" 2>&1 &
else
  W="W2"; T="T2"
  CUDA_VISIBLE_DEVICES=0 python3 -m vidhash.cli train world_wide $COMMON $STAGE2 out_dir=/tmp/W2 \
    init_from=out/xp/W1 > "$L/train_W2.log" 2>&1 &
  CUDA_VISIBLE_DEVICES=1 python3 -m vidhash.cli train world_tiny $COMMON $STAGE2 out_dir=/tmp/T2 \
    init_from=out/xp/T1 > "$L/train_T2.log" 2>&1 &
fi
wait
echo "trained at $(( $(date +%s) - T0 )) s"
for r in $W $T; do
  echo "== train $r"; grep -v "^step \|Warning\|return node" "$L/train_$r.log" | tail -2 | cut -c1-300
  grep "^step " "$L/train_$r.log" | awk 'NR % 15 == 0' | cut -c1-90
  cp /tmp/$r/loss.csv "$L/loss_$r.csv" 2>/dev/null
done
if [ "$STAGE" = 2 ]; then
  E="python3 -m vidhash.cli eval world --device cuda --dtype bfloat16 --fps 8 --quiet --horizons 60 --modes hashed,window
     --seeds 1000000,1000001,1000002 --memory policy=merge,num_buckets=1024,slots=32,top_k=32768"
  ( CUDA_VISIBLE_DEVICES=1 timeout 60 python3 scripts/world_probe.py /tmp/W2/export /tmp/T2/export models/world-tiny-v2 \
      --device cuda > "$L/probe.log" 2>&1
    CUDA_VISIBLE_DEVICES=1 timeout 110 $E /tmp/T2/export --json "$L/eval_T2.json" > "$L/eval_T2.log" 2>&1 ) &
  CUDA_VISIBLE_DEVICES=0 timeout 130 $E /tmp/W2/export --json "$L/eval_W2.json" > "$L/eval_W2.log" 2>&1
  wait
  grep "^{" "$L/probe.log" | cut -c1-400
  for f in W2 T2; do echo "== eval $f"; grep -E "^60 s|target|^time:" "$L/eval_$f.log" | head -12; done
fi
echo "all done at $(( $(date +%s) - T0 )) s"
for r in $W $T; do
  [ -d /tmp/$r/export ] && tar czf - -C /tmp/$r export | split -b 9M - "$OUT/$r.tgz.part-"
done
tar czf /tmp/logs.tgz -C "$OUT" logs && rm -rf "$OUT/logs" && mv /tmp/logs.tgz "$OUT/"
ls -la "$OUT"
