"""python scripts/generate.py --model random-tiny --seconds 60 --fps 8 --out clip.mp4 [key=value ...]

Thin entry point for `vidhash generate` (see vidhash/generate_cli.py); takes the same arguments.
"""
import sys

from vidhash.cli import main

if __name__ == "__main__":
    sys.exit(main(["generate", *sys.argv[1:]]))
