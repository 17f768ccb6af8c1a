"""python scripts/coherence.py clip.mp4 [more.mp4 ...] [--poses poses.json] [--json out.json] [--plot out.png]

Thin entry point for `vidhash coherence` (see vidhash/metrics/cli.py); takes the same arguments.
"""
import sys

from vidhash.metrics.cli import main

if __name__ == "__main__":
    sys.exit(main())
