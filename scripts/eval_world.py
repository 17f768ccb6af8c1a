"""python scripts/eval_world.py PIPELINE_DIR|random-tiny --seeds 1000000,1000001 --horizons 10,60,300 --json world.json --plot world.png

Thin entry point for `vidhash eval world` (see vidhash/eval/world.py); takes the same arguments.
"""
import sys

from vidhash.eval.world import main

if __name__ == "__main__":
    sys.exit(main())
