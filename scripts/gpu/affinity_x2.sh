#!/usr/bin/env bash
# One ~6.5-minute call on nvidia-h200-x2 (2026-11-30, evening 2): the 2-GPU ratio once the host has
# slack. A profiled 1-GPU step (scripts/gpu/host_h200.sh, batch 64) spent as long inside host
# operators as its kernels ran (89.6 vs 68.6 ms/step under the profiler, 1,473 launches): the host is
# near-critical, so two processes sharing one host leave the GPUs waiting (two independent 1-GPU runs
# at once: 1.70x). Here, with fused AdamW and the foreach EMA (less host time per step) and 128 clips
# per GPU (twice the GPU work for the same launches):
#   A. 1 GPU, batch 128 (pays the compilation; profiles steps 150..159)
#   B. 2 GPUs, DDP defaults, 128 per GPU
#   C. B with data.reserve_cores=2 (each main thread on 2 physical cores of its own, workers elsewhere)
# nvidia-smi samples every 0.5 s. One archive comes back: $OUT/all.tgz.
#   source scripts/gpu/setup.sh && bash scripts/gpu/affinity_x2.sh
set -u
[[ ":${PYTHONPATH:-}:" == *":/tmp/site:"* ]] || source scripts/gpu/setup.sh || exit 1
nvidia-smi --query-gpu=timestamp,index,clocks.sm,power.draw,temperature.gpu,utilization.gpu,clocks_event_reasons.active \
  --format=csv,noheader -lms 500 > "$OUT/smi.csv" 2>&1 &
SMI=$!
BATCH=${BATCH:-128} PROFILE=${PROFILE:-150:160} A_MIN=${A_MIN:-1.6} B_MIN=${B_MIN:-1.8} C_MIN=${C_MIN:-1.4} \
  C_OPTS=${C_OPTS:-data.reserve_cores=2} timeout ${T_SCALING:-400} bash scripts/gpu/scaling_x2.sh 2>&1 | grep -v "^ddp:" | tail -22
kill $SMI 2>/dev/null
python3 - "$OUT/smi.csv" <<'PY'
import csv, sys
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) >= 7]
busy = {}
for r in rows:  # busy samples only (> 20% utilisation): clock, power, utilisation per GPU
    if float(r[5].split()[0]) > 20:
        busy.setdefault(r[1].strip(), []).append([float(r[i].split()[0]) for i in (2, 3, 5)])
for g, v in sorted(busy.items()):
    n = len(v)
    print(f"GPU {g}: {n} busy samples, mean SM {sum(x[0] for x in v) / n:.0f} MHz, {sum(x[1] for x in v) / n:.0f} W, "
          f"utilisation {sum(x[2] for x in v) / n:.0f}%")
PY
cd "$OUT" && tar czf /tmp/all.tgz . && find . -mindepth 1 -delete && mv /tmp/all.tgz .
