"""Run directories that survive a kill: one process at a time, JSON written atomically.

    with locked(run_dir, create=True):          # fcntl.flock on run_dir/.lock, pid written in it
        write_json(run_dir / "config.json", config)
        ...
    differing_fields(saved, current, may_change=("epochs",))   # what a resume may not change

A kill of the holder releases its lock (the kernel drops ``flock`` locks with the process),
so a sweep killed as a whole, children included, can be resumed at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from trainkit.atomic import atomic_write

__all__ = ["LOCK_FILE", "SweepError", "differing_fields", "locked", "read_json", "write_json"]

LOCK_FILE = ".lock"


class SweepError(ValueError):
    """A sweep or run directory that cannot be used as it is; the message is one line."""


def write_json(path: Path, value: Any) -> None:
    """Write ``value`` as indented JSON to ``path`` atomically: a kill never leaves half a file.

    Args:
        path: The file; its directory must exist.
        value: Anything ``json.dumps`` accepts.
    """
    atomic_write(path, json.dumps(value, indent=2))


def read_json(path: Path, hint: str = "") -> Any:
    """``path`` parsed as JSON.

    Args:
        path: The file to read.
        hint: Appended to the message of the error (e.g. ``" (not a run directory?)"``).

    Returns:
        The parsed value.

    Raises:
        SweepError: missing, unreadable, not UTF-8 or not valid JSON (one line naming the file).
    """
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SweepError(f"{path} is not readable JSON ({exc}){hint}") from None


@contextlib.contextmanager
def locked(directory: Path, create: bool = False) -> Iterator[None]:
    """Hold ``directory/.lock`` (``fcntl.flock``) while the body runs.

    Args:
        directory: The run (or sweep) directory.
        create: Make ``directory`` (and its parents) first; it must not exist yet.

    Raises:
        SweepError: another process holds the lock (the message names its pid).
        OSError: ``directory`` cannot be created (exists already, a file in the way, ...).
    """
    directory = Path(directory)
    if create:
        directory.mkdir(parents=True)
    handle = (directory / LOCK_FILE).open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        written = handle.read().split()
        holder = written[-1] if written else "unknown"  # the newest pid written
        handle.close()
        raise SweepError(
            f"{directory} is in use by process {holder} (it holds {directory / LOCK_FILE})"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    try:
        yield
    finally:
        handle.close()  # releases the lock


def differing_fields(
    saved: Mapping[str, Any], current: Mapping[str, Any], may_change: Iterable[str] = ()
) -> list[str]:
    """The keys whose values differ between a saved configuration and the current one.

    Values compare as JSON (a tuple equals the list it was saved as); a key missing on one
    side differs.

    Args:
        saved: What the run directory holds (its config.json, a checkpoint's config).
        current: What this resume would run with.
        may_change: Keys a resume may change (e.g. ``epochs``: a longer run).

    Returns:
        The differing keys, in the order of ``current`` then of ``saved``.
    """
    allowed = set(may_change)
    keys = [*current, *(key for key in saved if key not in current)]
    differ = []
    for key in keys:
        if key in allowed:
            continue
        if key not in saved or key not in current:
            differ.append(key)
        elif json.dumps(saved[key], sort_keys=True) != json.dumps(current[key], sort_keys=True):
            differ.append(key)
    return differ
