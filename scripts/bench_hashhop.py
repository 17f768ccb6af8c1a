"""python scripts/bench_hashhop.py --sizes 1000,10000,100000,1000000 --json hashhop.json

Thin entry point for `vidhash bench hashhop` (see vidhash/bench/hashhop.py).
"""
import sys

from vidhash.bench.hashhop import main

if __name__ == "__main__":
    sys.exit(main())
