"""Shared test setup: make ``src/`` importable when trainkit is not installed; keep the
example's data cache out of the user's home."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))


@pytest.fixture(scope="session", autouse=True)
def _data_cache_in_tmp(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """The example's split cache goes to a temporary directory, never the user's ~/.cache
    (subprocesses inherit the variable)."""
    previous = os.environ.get("TRAINKIT_CACHE_DIR")
    os.environ["TRAINKIT_CACHE_DIR"] = str(tmp_path_factory.mktemp("trainkit-cache"))
    yield
    if previous is None:
        os.environ.pop("TRAINKIT_CACHE_DIR", None)
    else:
        os.environ["TRAINKIT_CACHE_DIR"] = previous
