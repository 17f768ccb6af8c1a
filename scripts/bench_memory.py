"""python scripts/bench_memory.py --json memory.json

Thin entry point for `vidhash bench memory` (see vidhash/bench/memory.py).
"""
import sys

from vidhash.bench.memory import main

if __name__ == "__main__":
    sys.exit(main())
