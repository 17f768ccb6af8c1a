"""Thin entry for ``vidhash train`` (also under ``accelerate launch scripts/train.py CONFIG ...``)."""
import sys

from vidhash.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
