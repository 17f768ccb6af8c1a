#!/usr/bin/env bash
# Does predicting the clean frame fix the noisy invented ground? (nvidia-h200-x2, ~9.5 minutes)
# world-tiny-v1 predicts the velocity noise − x0: 192 numbers per 8×8 patch through a 192-wide
# token, and noise does not compress. Its copies of seen ground lose ~1.5 dB per chunk (24.2 dB,
# ceiling 25.6 dB even for a repeated frame) and new ground turns to noisy patchwork. With
# model.prediction=sample the last layer gives x0 (on the image manifold) and the forward derives
# the velocity. Expectation if that is the cause: seen_psnr well above 25.6 dB, away realism
# towards real frames' 0.85, revisit gaps kept.
# Two 1-GPU runs at once, 128 clips each, same time and data, world_tiny geometry:
#   A: prediction=sample, noise.sigma_sampling=uniform (as v1);
#   B: prediction=sample, logit-normal σ (mean 0.8, std 0.8: mostly noisy chunks, as Li & He).
# Then the next-chunk probe of v1, A, B and `vidhash eval world` at 60 s (world 1000000, hashed and
# window) for all three. Archives: $OUT/logs.tgz, $OUT/A.tgz, $OUT/B.tgz (the exports, ~9 MB each).
#   source scripts/gpu/setup.sh && bash scripts/gpu/xpred_x2.sh
set -u
[[ ":${PYTHONPATH:-}:" == *":/tmp/site:"* ]] || source scripts/gpu/setup.sh || exit 1
T0=$(date +%s)
L="$OUT/logs"; mkdir -p "$L"
TRAIN="python3 -m vidhash.cli train world_tiny model.prediction=sample batch_size=128 gradient_checkpointing=false
       compile=true fit_schedule=true checkpoint.every=1000000 log_every=50 export_max_mb=10 --max-minutes ${TRAIN_MIN:-6.0} --no-progress"
CUDA_VISIBLE_DEVICES=0 $TRAIN out_dir=/tmp/A > "$L/train_A.log" 2>&1 &
CUDA_VISIBLE_DEVICES=1 $TRAIN out_dir=/tmp/B noise.sigma_sampling=logit_normal noise.logit_mean=0.8 noise.logit_std=0.8 \
  > "$L/train_B.log" 2>&1 &
wait
echo "trained at $(( $(date +%s) - T0 )) s"
for r in A B; do
  echo "== train $r"; grep -v "^step \|Warning\|return node" "$L/train_$r.log" | tail -3
  grep "^step " "$L/train_$r.log" | awk 'NR % 10 == 0' | cut -c1-90
  cp /tmp/$r/loss.csv "$L/loss_$r.csv" 2>/dev/null
done
[ -d /tmp/A/export ] && [ -d /tmp/B/export ] || { echo "an export is missing"; }
E="python3 -m vidhash.cli eval world --device cuda --dtype bfloat16 --fps 8 --quiet --horizons 60 --modes hashed,window
   --seeds 1000000 --memory policy=merge,num_buckets=1024,slots=32,top_k=32768"
( CUDA_VISIBLE_DEVICES=1 timeout 60 python3 scripts/world_probe.py models/world-tiny-v1 /tmp/A/export /tmp/B/export \
    --device cuda > "$L/probe.log" 2>&1
  CUDA_VISIBLE_DEVICES=1 timeout 100 $E /tmp/B/export --json "$L/eval_B.json" > "$L/eval_B.log" 2>&1 ) &
CUDA_VISIBLE_DEVICES=0 timeout 100 $E /tmp/A/export --json "$L/eval_A.json" > "$L/eval_A.log" 2>&1
CUDA_VISIBLE_DEVICES=0 timeout 100 $E models/world-tiny-v1 --json "$L/eval_v1.json" > "$L/eval_v1.log" 2>&1 &
wait
grep "^{" "$L/probe.log" | cut -c1-400
for f in v1 A B; do echo "== eval $f"; grep -E "^60 s|target|^time:|realism" "$L/eval_$f.log" | head -12; done
echo "all done at $(( $(date +%s) - T0 )) s"
cd /tmp && for r in A B; do [ -d /tmp/$r/export ] && tar czf "$OUT/$r.tgz" -C /tmp/$r export; done
tar czf /tmp/logs.tgz -C "$OUT" logs && rm -rf "$OUT/logs" && mv /tmp/logs.tgz "$OUT/"
