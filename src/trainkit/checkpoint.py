"""Crash-safe checkpoints: atomic + durable saves, safe loads, rotation, time-based saving.

A save writes a temporary file in the target directory, flushes and fsyncs it, renames it
over the target with ``os.replace`` (atomic on POSIX) and fsyncs the directory, so a crash
at any instant leaves either the old file or the new one, never a truncated file. Loads
always use ``torch.load(weights_only=True)``: a checkpoint cannot run code.
"""

from __future__ import annotations

import os
import re
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainkit.atomic import TMP_PREFIX, atomic_write

__all__ = ["CheckpointManager", "CheckpointError", "load_checkpoint", "load_model_state"]

_PINNED = ("best.pt", "last.pt")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class CheckpointError(RuntimeError):
    """A checkpoint could not be written, or a file could not be loaded safely."""


def _age_key(path: Path) -> tuple[int, list[Any]]:
    """Sort key oldest-first: modification time, then the name with numbers compared as numbers
    (so ``step-10.pt`` is newer than ``step-9.pt`` on a filesystem with coarse timestamps)."""
    parts = re.split(r"(\d+)", path.name)
    return path.stat().st_mtime_ns, [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class CheckpointManager:
    """Save and load training state in one directory, safely.

    Args:
        directory: Where checkpoints live (created if missing).
        keep_last: How many rotating checkpoints (every name except ``best.pt``,
            ``last.pt`` and ``pinned``) to keep; older ones are deleted after a save.
            The original pipeline kept 3.
        every_seconds: If set, :meth:`due` turns True this many seconds after the last
            rotating save (the original pipeline saved every 60 s).
        pinned: Extra names never rotated (e.g. ``"bestmodel.pt"``).
        clock: Monotonic clock in seconds; injectable for tests.

    Raises:
        ValueError: ``keep_last < 1`` or ``every_seconds <= 0``.
        CheckpointError: ``directory`` cannot be created.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        keep_last: int = 3,
        every_seconds: float | None = None,
        pinned: tuple[str, ...] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1:
            raise ValueError(f"keep_last must be an int >= 1, got {keep_last!r}")
        if every_seconds is not None and not (float(every_seconds) > 0 and float(every_seconds) < float("inf")):
            raise ValueError(f"every_seconds must be a finite number > 0 or None, got {every_seconds!r}")
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CheckpointError(f"cannot create checkpoint directory {self.directory}: {exc}") from exc
        self.keep_last = keep_last
        self.every_seconds = None if every_seconds is None else float(every_seconds)
        self.pinned = frozenset(_PINNED + tuple(pinned))
        self._clock = clock
        self._last_rotating_save = clock()

    # ------------------------------------------------------------------ saving
    def save(self, name: str, state: Mapping[str, Any]) -> Path:
        """Atomically and durably write ``state`` to ``directory/name``.

        Args:
            name: File name (e.g. ``"last.pt"``, ``"epoch-0003.pt"``); no path separators.
            state: A mapping of tensors and plain Python values (what ``weights_only``
                loading accepts).

        Returns:
            The path written.

        Raises:
            ValueError: ``name`` is not a plain file name.
            CheckpointError: writing failed (disk full, permissions, ...); the previous
                file of that name is left intact and no temporary file remains.
        """
        if not isinstance(name, str) or not _NAME_RE.match(name) or name.startswith(TMP_PREFIX):
            raise ValueError(f"name must be a plain file name like 'last.pt', got {name!r}")
        self._remove_stray_temp_files()
        target = self.directory / name
        try:
            atomic_write(target, lambda handle: torch.save(dict(state), handle))
        except (OSError, RuntimeError) as exc:
            raise CheckpointError(f"could not save checkpoint {target}: {exc}") from exc
        if name not in self.pinned:
            self._last_rotating_save = self._clock()
            self._rotate()
        return target

    def due(self) -> bool:
        """Whether a time-based save is due (always False without ``every_seconds``)."""
        if self.every_seconds is None:
            return False
        return self._clock() - self._last_rotating_save >= self.every_seconds

    def _checkpoint_files(self, skip: frozenset[str]) -> list[Path]:
        """``*.pt`` files of the directory (temp files and ``skip`` left out), oldest first."""
        files = [
            p
            for p in self.directory.iterdir()
            if p.is_file() and not p.name.startswith(".") and p.suffix == ".pt" and p.name not in skip
        ]
        return sorted(files, key=_age_key)

    def _rotate(self) -> None:
        files = self._checkpoint_files(self.pinned)
        for old in files[: max(0, len(files) - self.keep_last)]:
            old.unlink(missing_ok=True)

    def _remove_stray_temp_files(self) -> None:
        """Delete temp files left by a crashed save (its process is gone, or it was ours)."""
        for stray in self.directory.glob(f"{TMP_PREFIX}*"):
            pid_text = stray.name.rsplit(".", 2)[-2] if stray.name.count(".") >= 2 else ""
            pid = int(pid_text) if pid_text.isdigit() else -1
            if pid == os.getpid() or pid < 0 or not _pid_alive(pid):
                try:
                    stray.unlink()
                except OSError:
                    pass

    # ----------------------------------------------------------------- loading
    def load(self, name: str = "best.pt", map_location: Any = None) -> dict[str, Any]:
        """Load ``directory/name`` with ``torch.load(weights_only=True)``.

        Args:
            name: File name inside the directory, or a path to a checkpoint file.
            map_location: Passed to ``torch.load`` (e.g. ``"cpu"``).

        Returns:
            The saved dict.

        Raises:
            FileNotFoundError: no such checkpoint.
            CheckpointError: the file is truncated, corrupt, or holds objects that safe
                loading refuses (such as a malicious pickle).
        """
        path = Path(name)
        if not path.is_absolute() and path.parent == Path("."):
            path = self.directory / name
        return load_checkpoint(path, map_location=map_location)

    def checkpoints(self) -> list[Path]:
        """Resumable checkpoints, newest first: ``last.pt`` and the rotating ones.

        Best-model files (``best.pt`` and the other ``pinned`` names) are left out: resuming
        from them would go back in time.
        """
        return self._checkpoint_files(self.pinned - {"last.pt"})[::-1]

    def load_latest(self, map_location: Any = None) -> tuple[Path, dict[str, Any]] | None:
        """Load the newest loadable checkpoint of :meth:`checkpoints` (best-model files excluded).

        A newest file that is truncated or corrupt is reported with one warning naming it,
        and the previous one is tried.

        Args:
            map_location: Passed to ``torch.load``.

        Returns:
            ``(path, state)``, or None when no checkpoint loads.
        """
        for path in self.checkpoints():
            try:
                return path, load_checkpoint(path, map_location=map_location)
            except (CheckpointError, FileNotFoundError) as exc:
                warnings.warn(f"skipping unloadable checkpoint {path}: {exc}", RuntimeWarning, stacklevel=2)
        return None

    def latest(self) -> Path | None:
        """The newest loadable checkpoint's path (best-model files excluded), or None.

        Corrupt newer files are reported (one warning each) and skipped.
        """
        found = self.load_latest(map_location="cpu")
        return None if found is None else found[0]

    def state_dict(self) -> dict[str, Any]:
        """Settings and the time since the last rotating save."""
        return {
            "keep_last": self.keep_last,
            "every_seconds": self.every_seconds,
            "seconds_since_save": self._clock() - self._last_rotating_save,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore settings and the save timer from :meth:`state_dict`."""
        self.keep_last = int(state["keep_last"])
        self.every_seconds = None if state["every_seconds"] is None else float(state["every_seconds"])
        self._last_rotating_save = self._clock() - float(state["seconds_since_save"])


def _reason(exc: Exception) -> str:
    """The informative line of torch's load error (its advice to load unsafely is dropped)."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(exc).splitlines()]
    lines = [line for line in lines if line]
    for line in lines:
        if "Unsupported global" in line or "Unsupported operand" in line or "WeightsUnpickler error" in line:
            return line
    return lines[0] if lines else type(exc).__name__


def load_checkpoint(path: str | os.PathLike[str], map_location: Any = None) -> dict[str, Any]:
    """Load one checkpoint file safely (``weights_only=True``, never unsafe unpickling).

    Args:
        path: The checkpoint file.
        map_location: Passed to ``torch.load``.

    Returns:
        The saved dict.

    Raises:
        FileNotFoundError: the file does not exist.
        CheckpointError: it cannot be loaded safely (truncated, corrupt, or not weights-only).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt/unsafe files
        raise CheckpointError(f"cannot load checkpoint {path} safely: {_reason(exc)}") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, expected a dict")
    return state


def _names(keys: list[str], limit: int = 4) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def load_model_state(model: nn.Module, state: Mapping[str, Any]) -> None:
    """Load ``state`` into ``model`` strictly, after checking that it fits.

    torch's own mismatch error is a long multi-line message; this one is a single line
    listing the missing, unexpected and mis-shaped keys (the first few of each).

    Args:
        model: The module to load into.
        state: A ``state_dict`` (e.g. a checkpoint's ``"model"`` entry).

    Raises:
        ValueError: ``state`` is not a mapping, or its keys or shapes differ from the model's.
    """
    if not isinstance(state, Mapping):
        raise ValueError(f"state must be a model state_dict (a mapping), got {type(state).__name__}")
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    misshaped = [
        f"{key} {list(state[key].shape)} vs {list(value.shape)}"
        for key, value in expected.items()
        if key in state and isinstance(state[key], torch.Tensor) and state[key].shape != value.shape
    ]
    problems = [
        f"{label} {_names(keys)}"
        for label, keys in (("missing keys:", missing), ("unexpected keys:", unexpected),
                            ("mis-shaped (checkpoint vs model):", misshaped))
        if keys
    ]
    if problems:
        raise ValueError(f"checkpoint does not match the model ({type(model).__name__}): {'; '.join(problems)}")
    model.load_state_dict(state)
