"""python scripts/bench_attention.py --sizes 16384,65536,131072,262144 --block-sizes 64,16 --json attention.json

Thin entry point for `vidhash bench attention` (see vidhash/bench/attention.py).
"""
import sys

from vidhash.bench.attention import main

if __name__ == "__main__":
    sys.exit(main())
