#!/usr/bin/env bash
# GPU tests of every kernel (and the drop-in and model CUDA paths), then the memory-read benchmark
# at the issue's shape and at a generation chunk's shape (256 queries × 3 heads × 16,384 entries).
# tests/kernels runs whole: most kernel tests take the device they find (DEV = cuda there) and carry
# no `gpu` marker — `-m gpu` selects only the CUDA-only ones (it missed test_block_score.py and
# test_block_mass.py entirely on 2026-12-05).
# The whole of tests/kernels takes longer than one call on an H100 (2026-12-06, 21st session: the memory part's
# 135 tests 169 s; test_sparse_attention.py alone more than 300 s, its every-config tests compiling each config),
# so PART splits it: memory (the memory read/write, remainder and signature kernels), attention
# (test_sparse_attention.py), tma (test_sparse_attention_tma.py), select (block selection and scoring, benches),
# none (only the later steps); unset runs the whole folder. Each test is cut at TEST_TIMEOUT s (pytest-timeout, in the GPU image) so one
# that hangs fails with its traceback instead of taking the call; the -v log goes to $OUT/pytest_$PART.log.
# XDIST (default 8) pytest processes share the GPU. MEM_S=0, MEMGEN_S=0, PYTEST_GPU_S=0 skip the later steps.
#   source scripts/gpu/setup.sh && PART=memory bash scripts/gpu/kernels_check.sh
set -u
case "${PART:-}" in
  memory) files="tests/kernels/test_memory_*.py tests/kernels/test_remainder_triton.py tests/kernels/test_signature.py" ;;
  attention) files="tests/kernels/test_sparse_attention.py" ;;
  tma) files="tests/kernels/test_sparse_attention_tma.py" ;;
  select) files="tests/kernels/test_block_*.py tests/kernels/test_bench_*.py" ;;
  none) files="" ;;  # the later steps only
  "") files="tests/kernels" ;;
  *) echo "PART must be memory, attention, tma, select, none or unset, got $PART" >&2; exit 2 ;;
esac
cut=""
python3 -c "import pytest_timeout" 2>/dev/null && cut="--timeout ${TEST_TIMEOUT:-120}"
# pytest-xdist (in the GPU image): XDIST processes share the GPU and compile kernels in parallel — the parts'
# time is mostly Triton compiling each new shape and config on one core. XDIST=0 runs in one process.
python3 -c "import xdist" 2>/dev/null && [ "${XDIST:-8}" != 0 ] && cut="$cut -n ${XDIST:-8}"
# logged_pytest NAME SECONDS ARGS...: pytest -v into $OUT/pytest_NAME.log (no captured log records: torch's
# compile DEBUG lines buried a failure's traceback on 2026-12-06), then the counts, failures and the summary
logged_pytest() {
  local name=$1 secs=$2; shift 2
  local log="${OUT:-/tmp}/pytest_$name.log"
  timeout "$secs" python3 -m pytest -v -p no:cacheprovider -p no:logging -rfE --tb=short "$@" > "$log" 2>&1
  echo "pytest $name rc $? (124: cut after $secs s); $(grep -c ' PASSED' "$log") passed, $(grep -c ' SKIPPED' "$log") skipped"
  grep -E " (FAILED|ERROR)|^E  " "$log" | head -30
  tail -12 "$log"
}
[ -n "$files" ] && logged_pytest "${PART:-all}" "${PYTEST_S:-300}" --durations=8 $cut $files
# the GPU-marked tests of the other folders
[ "${PYTEST_GPU_S:-200}" = 0 ] || logged_pytest gpu "${PYTEST_GPU_S:-200}" -m gpu tests/integrations tests/models \
  tests/pipelines tests/test_attention.py tests/metrics
[ "${MEM_S:-75}" = 0 ] || timeout ${MEM_S:-75} python3 -m vidhash.cli bench memory --json "$OUT/memory.json" 2>&1 | tail -25
[ "${MEMGEN_S:-45}" = 0 ] || timeout ${MEMGEN_S:-45} python3 -m vidhash.cli bench memory --queries 256 --heads 3 --buckets 1024 --slots 16 --top-k 32,64 \
  --json "$OUT/memory_generation.json" 2>&1 | tail -16
