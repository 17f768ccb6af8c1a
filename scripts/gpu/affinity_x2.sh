#!/usr/bin/env bash
# One ~7-minute call on nvidia-h200-x2 (2026-11-30, evening 2): does keeping cores for each training
# process's main thread (data.reserve_cores) close the 2-GPU gap? The previous call found the host, not
# DDP, short: two independent 1-GPU runs at once gave 1.70x one run (fwd 18.5 -> 24-30 ms per step while
# the GPUs sat at 1980 MHz, ~550 W, no throttling, but only ~80% busy against 98% alone).
#   A. 1 GPU (pays the compilation); B. DDP defaults; C. DDP with data.reserve_cores=2 (each main
#   thread gets 2 physical cores; all data workers run on the rest); E. C with 6 workers per process
#   (accelerate already gives each process 1 OpenMP thread). nvidia-smi samples every 0.5 s; every run
#   profiles steps 200..214 (--profile-steps: host time, kernel time, launches per step).
# One archive comes back: $OUT/all.tgz.
#   source scripts/gpu/setup.sh && bash scripts/gpu/affinity_x2.sh
set -u
[[ ":${PYTHONPATH:-}:" == *":/tmp/site:"* ]] || source scripts/gpu/setup.sh || exit 1
nvidia-smi --query-gpu=timestamp,index,clocks.sm,power.draw,temperature.gpu,utilization.gpu,clocks_event_reasons.active \
  --format=csv,noheader -lms 500 > "$OUT/smi.csv" 2>&1 &
SMI=$!
PROFILE=${PROFILE:-200:215} A_MIN=${A_MIN:-1.3} B_MIN=${B_MIN:-1.5} C_MIN=${C_MIN:-1.5} C_OPTS=${C_OPTS:-data.reserve_cores=2} \
  E_MIN=${E_MIN:-1.2} E_OPTS=${E_OPTS:-data.reserve_cores=2 data.num_workers=6} \
  timeout ${T_SCALING:-420} bash scripts/gpu/scaling_x2.sh 2>&1 | grep -v "^ddp:" | tail -20
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
