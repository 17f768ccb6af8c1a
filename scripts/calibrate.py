"""python scripts/calibrate.py PIPELINE_DIR [--out DIR] [--bits 32] [--clips 8] [--top-k 32] [--steps 300] [--json report.json]

Thin entry point for `vidhash calibrate` (see vidhash/calibrate.py); takes the same arguments.
"""
import sys

from vidhash.cli import main

if __name__ == "__main__":
    sys.exit(main(["calibrate", *sys.argv[1:]]))
