"""``python -m vidhash COMMAND ...``: the ``vidhash`` command (as ``python -m vidhash.cli``)."""
import sys

from vidhash.cli import main

sys.exit(main())
