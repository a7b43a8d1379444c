"""Atomic, durable file writes: the one place trainkit renames a temporary file over a target.

A write goes to a temporary file in the target's directory, is flushed and fsynced, renamed
over the target with ``os.replace`` (atomic on POSIX) and the directory is fsynced: a crash
at any instant leaves the old file or the new one, never a truncated one. Every file trainkit
and its examples write (checkpoints, logs rewritten on resume, results, data caches) goes
through :func:`atomic_write`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["TMP_PREFIX", "atomic_write"]

TMP_PREFIX = ".trainkit-tmp-"


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(
    path: str | os.PathLike[str],
    content: bytes | str | Callable[[BinaryIO], None],
    *,
    durable: bool = True,
) -> Path:
    """Replace ``path`` with ``content`` so that a crash never leaves a partial file.

    Args:
        path: The file to write; its directory must exist.
        content: Bytes, text (written as UTF-8), or a function that writes into the open
            binary temporary file (e.g. ``lambda f: torch.save(state, f)``).
        durable: fsync the file and its directory (survives power loss, not only a kill).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        OSError: the write failed (disk full, permissions, ...); the previous file of that
            name is left intact and the temporary file is removed.
    """
    target = Path(path)
    tmp = target.with_name(f"{TMP_PREFIX}{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as handle:
            if callable(content):
                content(handle)
            else:
                handle.write(content.encode("utf-8") if isinstance(content, str) else content)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, target)
        if durable:
            _fsync_directory(target.parent)
    except BaseException:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise
    return target
