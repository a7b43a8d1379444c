"""Shared test setup: make ``src/`` importable when trainkit is not installed."""

from __future__ import annotations

import os
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
# TRAINKIT_TEST_INSTALLED=1 (`make test`): test the installed wheel, never src/.
INSTALLED = os.environ.get("TRAINKIT_TEST_INSTALLED") == "1"
if not INSTALLED and str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))
