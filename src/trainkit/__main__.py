"""``python -m trainkit``: the ``trainkit`` command (``sweep``, ``report``)."""

from __future__ import annotations

import sys

from trainkit.sweep.cli import main

if __name__ == "__main__":
    sys.exit(main())
