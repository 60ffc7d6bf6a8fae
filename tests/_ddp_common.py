"""Shared tail of the DDP test workers (``tests/_ddp_*.py``)."""

import os
import sys
from pathlib import Path


def run_worker(main):
    """Run ``main(Path(argv[1]))``, then leave without the interpreter's finalisation: with torch
    2.13 + gloo a rank sometimes aborts there ("terminate called without an active exception",
    about 1 run in 10 on a loaded 2-core machine) after all work is done and the process group
    destroyed."""
    main(Path(sys.argv[1]))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
