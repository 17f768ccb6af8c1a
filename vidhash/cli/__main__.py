"""``python -m vidhash.cli COMMAND ...``: the ``vidhash`` command (e.g. under ``accelerate launch -m vidhash.cli``)."""
import sys

from vidhash.cli import main

sys.exit(main())
