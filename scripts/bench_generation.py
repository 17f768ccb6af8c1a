"""python scripts/bench_generation.py --preset tiny --seconds 10,60,600 --fps 8 --json generation.json

Thin entry point for `vidhash bench generation` (see vidhash/bench/generation.py); takes the same arguments.
"""
import sys

from vidhash.bench.generation import main

if __name__ == "__main__":
    sys.exit(main())
