#!/usr/bin/env bash
# A ~4-minute call on nvidia-h200-x2: where does a world_tiny training step go, on 1 GPU and 2?
#   A. GPU 0 alone, batch 64                             (A_MIN minutes; pays the first compile)
#   B. both GPUs, DDP defaults, batch 128 (64 per GPU)  (B_MIN minutes; inductor's cache is warm)
#   C. both GPUs, C_OPTS (static graph, gradients as bucket views, smaller buckets, more workers)
#   D. (RUN_D=1) two independent 1-GPU runs at once, one per GPU, no DDP (D_MIN minutes): what this
#      host gives two processes without any communication, the ceiling for B and C
# Each run: bf16, compiled blocks, no gradient checkpointing (the world_tiny GPU recipe), no export,
# the trainer's step-time breakdown (loss.csv columns data_ms..step_ms; the summary medians leave
# the first 5 steps out: compilation). CPU use is sampled for 15 s near the end of each run.
# Prints a table: samples/s, median ms per part, 2-GPU/1-GPU ratios (target >= 1.8). Results
# (logs, loss.csv, table) under $OUT/scaling/.
#   source scripts/gpu/setup.sh && bash scripts/gpu/scaling_x2.sh
# Env: A_MIN B_MIN C_MIN D_MIN E_MIN (1.45 0.9 0.9 0.9 1.2), SKIP_C (set: no run C), RUN_D (set: run D),
#      PROFILE (START:STOP: --profile-steps for every run; profile*.txt under $OUT/scaling), E_OPTS (set: run E, both GPUs with these overrides) E_ENV (its environment, e.g. OMP_NUM_THREADS=2), C_OPTS, CFG (configs/train/world_tiny.yaml), LOG_EVERY (25),
#      BATCH (64 per GPU), COMPILE (true), EXTRA (more overrides for every run), LAUNCH2 (2-process launcher).
set -u
[[ ":${PYTHONPATH:-}:" == *":/tmp/site:"* ]] || source scripts/gpu/setup.sh || exit 1
export OUT=${OUT:-/tmp/out}
A_MIN=${A_MIN:-1.45}; B_MIN=${B_MIN:-0.9}; C_MIN=${C_MIN:-0.9}
C_OPTS=${C_OPTS:-ddp_static_graph=true ddp_gradient_as_bucket_view=true ddp_bucket_cap_mb=5 data.num_workers=14}
CFG=${CFG:-configs/train/world_tiny.yaml}
R=$OUT/scaling; mkdir -p $R
T0=$(date +%s)
echo "cpus $(nproc), $(free -g | awk '/Mem:/{print $2}') GiB RAM, /dev/shm $(df -h /dev/shm | awk 'NR==2{print $2}')" | tee $R/machine.txt
lscpu 2>/dev/null | grep -iE "^model name|thread|core|socket|numa node" | tee -a $R/machine.txt
nvidia-smi 2>/dev/null --query-gpu=name,memory.total --format=csv,noheader >> $R/machine.txt 2>&1
nvidia-smi topo -m >> $R/machine.txt 2>&1
BATCH=${BATCH:-64}
common=($CFG gradient_checkpointing=false compile=${COMPILE:-true} checkpoint.every=1000000 max_steps=100000
        log_every=${LOG_EVERY:-25} ${EXTRA:-})
LAUNCH2=${LAUNCH2:-python3 -m accelerate.commands.launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision bf16 --dynamo_backend no}

cpu_sample() {  # cpu_sample NAME SECONDS_FROM_NOW: CPU busy share over 15 s
  ( sleep "$2"; python3 - "$R/cpu_$1.txt" <<'PY'
import sys, time
def snap():
    f = [float(x) for x in open("/proc/stat").readline().split()[1:]]
    return sum(f), f[3] + f[4]  # total, idle + iowait
t1, i1 = snap(); time.sleep(15); t2, i2 = snap()
open(sys.argv[1], "w").write(f"{100 * (1 - (i2 - i1) / (t2 - t1)):.0f}\n")
PY
  ) &
}

run() {  # run NAME MINUTES LAUNCHER... -- OVERRIDES...
  local name=$1 min=$2; shift 2
  rm -rf /tmp/scal_$name
  cpu_sample $name "$(python3 -c "print(max(5, int($min * 60 - 12)))")"
  local t=$(date +%s)
  "$@" --max-minutes "$min" --no-progress --no-export ${PROFILE:+--profile-steps $PROFILE} > $R/$name.log 2>&1
  echo "$name: rc $? in $(( $(date +%s) - t )) s (at $(( $(date +%s) - T0 )) s)"
  grep -E "^timing|^fastest|^ddp|^vidhash train" $R/$name.log | head -5
  cp /tmp/scal_$name/loss.csv $R/$name.csv 2>/dev/null
  for f in /tmp/scal_$name/profile*.txt; do [ -f "$f" ] && cp "$f" "$R/${name}_$(basename $f)" && head -2 "$f" | tail -1; done
}

run A_1gpu "$A_MIN" env CUDA_VISIBLE_DEVICES=0 python3 -m vidhash.cli train "${common[@]}" batch_size=$BATCH out_dir=/tmp/scal_A_1gpu
run B_2gpu "$B_MIN" $LAUNCH2 -m vidhash.cli train "${common[@]}" batch_size=$((2 * BATCH)) out_dir=/tmp/scal_B_2gpu
if [ -n "${RUN_D:-}" ]; then
  D_MIN=${D_MIN:-0.9}
  run D_2x1_g1 "$D_MIN" env CUDA_VISIBLE_DEVICES=1 python3 -m vidhash.cli train "${common[@]}" batch_size=$BATCH out_dir=/tmp/scal_D_2x1_g1 > /dev/null &
  run D_2x1 "$D_MIN" env CUDA_VISIBLE_DEVICES=0 python3 -m vidhash.cli train "${common[@]}" batch_size=$BATCH out_dir=/tmp/scal_D_2x1
  wait
fi
[ -n "${SKIP_C:-}" ] || run C_2gpu "$C_MIN" $LAUNCH2 -m vidhash.cli train "${common[@]}" batch_size=$((2 * BATCH)) out_dir=/tmp/scal_C_2gpu $C_OPTS
[ -z "${E_OPTS:-}" ] || run E_2gpu "${E_MIN:-1.2}" env ${E_ENV:-} $LAUNCH2 -m vidhash.cli train "${common[@]}" batch_size=$((2 * BATCH)) out_dir=/tmp/scal_E_2gpu $E_OPTS
wait

python3 - "$R" "$C_OPTS" "${E_ENV:-} ${E_OPTS:-}" <<'PY' | tee $R/table.txt
import csv, json, statistics, sys
from pathlib import Path
R, c_opts, e_opts = Path(sys.argv[1]), sys.argv[2], sys.argv[3].strip()
parts = ["data", "sync", "h2d", "fwd", "bwd", "opt", "ema", "idle", "log", "step"]
runs = {"A_1gpu": "1 GPU", "B_2gpu": "2 GPU defaults", "C_2gpu": "2 GPU " + c_opts, "E_2gpu": "2 GPU " + e_opts,
        "D_2x1": "two independent 1-GPU runs at once (GPU 0; the GPU 1 run is D_2x1_g1)", "D_2x1_g1": "D on GPU 1"}
res = {}
for name in runs:
    t, rows = None, []
    try:
        for line in open(R / f"{name}.log"):
            if line.startswith("{") and '"timing"' in line:  # one summary per process: the slowest
                tt = json.loads(line).get("timing")
                if tt and (t is None or tt["samples_per_s"] < t["samples_per_s"]):
                    t = tt
    except OSError:
        pass
    try:
        rows = list(csv.DictReader(open(R / f"{name}.csv")))[2:]  # the first rows hold compilation
    except OSError:
        pass
    cpu = (R / f"cpu_{name}.txt").read_text().strip() if (R / f"cpu_{name}.txt").exists() else "?"
    res[name] = (t, rows, cpu)
print("median ms per step (device parts: CUDA events; data/log: host wait; largest over processes)")
print(f"{'run':8} {'steps':>5} {'samp/s':>7} {'csv s/s':>7} " + " ".join(f"{p:>6}" for p in parts) + "  cpu%")
sps = {}
for name, (t, rows, cpu) in res.items():
    if not t:
        print(f"{name:8} no timing (see {name}.log)")
        continue
    csv_sps = statistics.median(float(r["samples_per_s"]) for r in rows) if rows else float("nan")
    if t["steps"] >= 50:  # fewer steady steps (compilation ate the run): no ratio from it
        sps[name] = (t["samples_per_s"], csv_sps)
    print(f"{name:8} {t['steps']:5d} {t['samples_per_s']:7.0f} {csv_sps:7.0f} "
          + " ".join(f"{t[p + '_ms']:6.1f}" for p in parts) + f"  {cpu:>4}"
          + ("" if name in sps else "  (under 50 steps: no ratio)"))
if "D_2x1" in sps and "D_2x1_g1" in sps:  # the two D runs together: their samples/s add
    sps["D_2x1+g1"] = tuple(x + y for x, y in zip(sps["D_2x1"], sps["D_2x1_g1"]))
    runs["D_2x1+g1"] = runs["D_2x1"].split(" (")[0] + ": the host's ceiling without communication"
for name in ("B_2gpu", "C_2gpu", "E_2gpu", "D_2x1+g1"):
    if name in sps and "A_1gpu" in sps:
        a, b = sps["A_1gpu"], sps[name]
        print(f"{name} / A_1gpu: {b[0] / a[0]:.2f}x (csv medians {b[1] / a[1]:.2f}x), target >= 1.8x  [{runs[name]}]")
print("samp/s: batch x steps / their wall time after the first 5 steps; csv s/s: median of the log rows after the "
      "first 2. Parts overlap on GPU: sync+h2d+fwd+bwd+opt+ema+idle ~ step; data/log are host time (hidden unless idle grows).")
PY
echo "all done at $(( $(date +%s) - T0 )) s"
