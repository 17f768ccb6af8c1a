"""python scripts/bench_coherence.py --size 128 --frames 480 --threads 1,2

Thin entry point for `vidhash bench coherence` (see vidhash/bench/coherence.py).
"""
import sys

from vidhash.bench.coherence import main

if __name__ == "__main__":
    sys.exit(main())
