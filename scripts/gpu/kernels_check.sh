#!/usr/bin/env bash
# GPU tests of every kernel, the memory-read benchmark and a short generation benchmark (small preset).
#   source scripts/gpu/setup.sh && bash scripts/gpu/kernels_check.sh
set -u
timeout 240 python3 -m pytest -q -p no:cacheprovider -m gpu tests/kernels tests/integrations 2>&1 | tail -12
timeout 90 python3 -m vidhash.cli bench memory --json "$OUT/memory.json" 2>&1 | tail -25
