"""Crash-safe checkpoints: atomic + durable saves, safe loads, rotation, time-based saving.

A save writes a temporary file in the target directory, flushes and fsyncs it, renames it
over the target with ``os.replace`` (atomic on POSIX) and fsyncs the directory, so a crash
at any instant leaves either the old file or the new one, never a truncated file. Loads
always use ``torch.load(weights_only=True)``: a checkpoint cannot run code, and a save
refuses, before writing anything, state that such a load would refuse.

Which files the manager owns (docs/checkpoint.md, "Which files are rotated"): the pinned
names (``best.pt``, ``last.pt``, ``pinned``), the k-best files it keeps, and rotating files:
names saved through :meth:`CheckpointManager.save` by this manager (or restored by
``load_state_dict``), and files named ``<prefix><digits>.pt`` for a prefix in
``rotating_prefixes``. Rotation deletes only rotating files; any other file is left alone.
"""

from __future__ import annotations

import errno
import math
import numbers
import os
import re
import shutil
import time
import warnings
import zipfile
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainkit._state import require_keys
from trainkit._validate import check_choice, check_float, check_int, shown
from trainkit.atomic import TMP_PREFIX, atomic_write

__all__ = [
    "CheckpointError",
    "CheckpointManager",
    "check_model_state",
    "load_checkpoint",
    "load_model_state",
]

_PINNED = ("best.pt", "last.pt")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # used with fullmatch: no trailing newline
ROTATING_PREFIXES = ("epoch-", "step-", "ckpt-", "checkpoint-", "model.ckpt-")
_BEST_MODES = ("min", "max")

# What torch.load(weights_only=True) rebuilds without an allowlist (torch/_weights_only_unpickler.py)
_PLAIN_TYPES = (
    type(None),
    bool,
    int,
    float,
    complex,
    str,
    bytes,
    bytearray,
    torch.Size,
    torch.device,
    torch.dtype,
    torch.layout,
)
_MAPPING_TYPES = (dict, OrderedDict, Counter)
_SEQUENCE_TYPES = (list, tuple, set)
_TENSOR_TYPES = (torch.Tensor, nn.Parameter)


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


def _check_name(argument: str, name: Any) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or name.startswith(TMP_PREFIX):
        raise ValueError(f"{argument} must be a plain file name like 'last.pt', got {name!r}")
    return name


def _check_every_seconds(value: Any) -> None:
    if value is None:
        return
    check_float("every_seconds", value, above=0)


def _metric_value(value: Any) -> float:
    """``value`` as a float: a real number or a one-element tensor (NaN and inf pass through).

    Raises:
        ValueError: anything else (``None``, a string such as ``"0.3"``, a bool, a tensor of
            several elements), or an int too large for a float; the message shows the value.
    """
    what = f"value must be a real number or a one-element tensor, got {shown(value)}"
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_complex() or value.dtype == torch.bool:
            raise ValueError(what)
        return float(value.item())
    is_bool = isinstance(value, bool) or type(value).__name__ == "bool_"  # NumPy's bool too
    if is_bool or not isinstance(value, numbers.Real):
        raise ValueError(what)
    try:
        return float(value)
    except OverflowError:
        raise ValueError(
            f"value must fit a float, got an int of {int(value).bit_length()} bits"
        ) from None


def _type_name(kind: type) -> str:
    return (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )


def _allowed_types(extra: Iterable[Any]) -> tuple[type, ...]:
    """Classes the user allowed: ``safe_globals`` here and torch's ``add_safe_globals``."""
    found = []
    for entry in (*torch.serialization.get_safe_globals(), *extra):
        obj = entry[0] if isinstance(entry, tuple) else entry
        if isinstance(obj, type):
            found.append(obj)
    return tuple(found)


def _refused_entry(
    value: Any, path: str, allowed: tuple[type, ...], seen: set[int]
) -> tuple[str, type] | None:
    """The first entry (key path, type) that ``torch.load(weights_only=True)`` would refuse."""
    kind = type(value)
    if kind in _PLAIN_TYPES or kind in _TENSOR_TYPES:
        return None
    if id(value) in seen:  # a shared or recursive container: pickle's memo handles it
        return None
    if kind in _MAPPING_TYPES:
        seen.add(id(value))
        for key, item in value.items():
            found = _refused_entry(key, f"{path} key {key!r}", allowed, seen)
            found = found or _refused_entry(item, f"{path}[{key!r}]", allowed, seen)
            if found:
                return found
        return None
    if kind in _SEQUENCE_TYPES:
        seen.add(id(value))
        for index, item in enumerate(value):
            found = _refused_entry(
                item, f"{path}[{index}]" if kind is not set else f"{path} item", allowed, seen
            )
            if found:
                return found
        return None
    if kind in allowed:
        seen.add(id(value))
        for attribute, item in getattr(value, "__dict__", {}).items():
            found = _refused_entry(item, f"{path}.{attribute}", allowed, seen)
            if found:
                return found
        return None
    return path, kind


def _tensor_bytes(value: Any) -> int:
    """About how many bytes the tensors of ``value`` take (for the disk-full message)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, Mapping):
        return sum(_tensor_bytes(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(item) for item in value)
    return 0


def _save_error(exc: BaseException, target: Path, state: Mapping[str, Any]) -> CheckpointError:
    """Turn a failed write into one line; a full disk says so, whatever torch reported.

    torch's zip writer can report a short write as "[enforce fail at inline_container.cc]
    unexpected pos" with no OS error, so a writer failure is also checked against the free
    space left in the directory.
    """
    first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    no_space = isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
    free: int | None = None
    if not no_space:
        try:
            free = shutil.disk_usage(target.parent).free
        except OSError:
            free = None
        needed = _tensor_bytes(state) + (1 << 20)
        writer_failed = (
            "inline_container" in first_line
            or "unexpected pos" in first_line
            or "failed writing" in first_line
        )
        no_space = writer_failed and free is not None and free < needed
    if no_space:
        detail = "" if free is None else f" ({free / 2**20:.1f} MiB free)"
        return CheckpointError(
            f"could not save checkpoint {target}: No space left on device{detail}"
        )
    return CheckpointError(f"could not save checkpoint {target}: {first_line}")


class CheckpointManager:
    """Save and load training state in one directory, safely.

    Args:
        directory: Where checkpoints live (created if missing).
        keep_last: How many rotating checkpoints to keep; older ones are deleted after a
            save. Rotating files are the names saved through :meth:`save` by this manager
            (except ``best.pt``, ``last.pt``, ``pinned`` and k-best files) and the files
            named ``<prefix><digits>.pt`` for a prefix in ``rotating_prefixes``. No other
            file is ever deleted. The original pipeline kept 3.
        every_seconds: If set, :meth:`due` turns True this many seconds after the last
            rotating save (the original pipeline saved every 60 s).
        pinned: Extra names never rotated (e.g. ``"bestmodel.pt"``).
        clock: Monotonic clock in seconds; injectable for tests.
        rotating_prefixes: Name prefixes of rotating files recognised without having been
            saved by this manager object (after a restart, or by another process).
        keep_best: How many best checkpoints :meth:`save_best` keeps (0: disabled).
        best_mode: ``"min"`` (lower metric is better) or ``"max"``.
        safe_globals: Extra classes that :meth:`save` accepts and :meth:`load` rebuilds
            (passed to ``torch.serialization.safe_globals``; see docs/checkpoint.md).

    Raises:
        ValueError: ``keep_last < 1``, ``every_seconds <= 0``, ``keep_best < 0``, an
            unknown ``best_mode``, or a bad prefix or safe global.
        CheckpointError: ``directory`` cannot be created.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        keep_last: int = 3,
        every_seconds: float | None = None,
        pinned: tuple[str, ...] = (),
        clock: Callable[[], float] = time.monotonic,
        *,
        rotating_prefixes: tuple[str, ...] = ROTATING_PREFIXES,
        keep_best: int = 0,
        best_mode: str = "min",
        safe_globals: Iterable[type] = (),
    ) -> None:
        check_int("keep_last", keep_last, minimum=1)
        check_int("keep_best", keep_best, minimum=0)
        _check_every_seconds(every_seconds)
        if best_mode not in _BEST_MODES:
            raise ValueError(f"best_mode must be 'min' or 'max', got {best_mode!r}")
        if isinstance(rotating_prefixes, str) or not all(
            isinstance(p, str) and (p == "" or _NAME_RE.fullmatch(p)) for p in rotating_prefixes
        ):
            raise ValueError(
                f"rotating_prefixes must be a tuple of file-name prefixes, got {rotating_prefixes!r}"
            )
        self.safe_globals = tuple(safe_globals)
        if not all(isinstance(g, type) for g in self.safe_globals):
            raise ValueError(f"safe_globals must be classes, got {self.safe_globals!r}")
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CheckpointError(
                f"cannot create checkpoint directory {self.directory}: {exc}"
            ) from exc
        self.keep_last = keep_last
        self.every_seconds = None if every_seconds is None else float(every_seconds)
        self.pinned = frozenset(_PINNED + tuple(pinned))
        self.rotating_prefixes = tuple(rotating_prefixes)
        self._rotating_re = re.compile(
            "|".join(f"{re.escape(prefix)}[0-9]+\\.pt" for prefix in self.rotating_prefixes)
            or "(?!)"
        )
        self.keep_best = keep_best
        self.best_mode = best_mode
        self._saved: list[str] = []  # rotating names saved through save()
        self._best: list[tuple[str, float]] = []  # k-best files, best first
        self._clock = clock
        self._last_rotating_save = clock()

    # ------------------------------------------------------------------ saving
    def save(self, name: str, state: Mapping[str, Any]) -> Path:
        """Atomically and durably write ``state`` to ``directory/name``.

        Args:
            name: File name (e.g. ``"last.pt"``, ``"epoch-0003.pt"``); no path separators.
            state: A mapping of tensors and plain Python values (what ``weights_only``
                loading accepts, plus ``safe_globals``).

        Returns:
            The path written.

        Raises:
            ValueError: ``name`` is not a plain file name, or ``state`` holds an object that
                ``torch.load(weights_only=True)`` would refuse (nothing is written; the
                message names its key path, e.g. ``state['config']['path']: pathlib.PosixPath``).
            CheckpointError: writing failed ("could not save checkpoint <path>: No space
                left on device" when the disk is full, else the OS or torch reason); the previous file of that name
                is left intact and no temporary file remains.
        """
        _check_name("name", name)
        if name in self.best_names():
            raise ValueError(
                f"name {name!r} is a k-best checkpoint kept by save_best; pick another name"
            )
        target = self._write(name, state)
        if name not in self.pinned:
            if name not in self._saved:
                self._saved.append(name)
            self._last_rotating_save = self._clock()
            self._rotate()
        return target

    def _write(self, name: str, state: Mapping[str, Any]) -> Path:
        if not isinstance(state, Mapping):
            raise ValueError(f"state must be a mapping, got {type(state).__name__}")
        state = dict(state)
        refused = _refused_entry(state, "state", _allowed_types(self.safe_globals), set())
        if refused is not None:
            path, kind = refused
            raise ValueError(
                f"{path}: {_type_name(kind)} cannot be loaded back with torch.load(weights_only=True); "
                f"save a plain value instead (str(path), dataclasses.asdict(config), float(x), "
                f"module.state_dict()) or allow the class with CheckpointManager(..., safe_globals=[{kind.__name__}])"
            )
        self._remove_stray_temp_files()
        target = self.directory / name
        try:
            atomic_write(target, lambda handle: torch.save(state, handle))
        except (OSError, RuntimeError) as exc:
            raise _save_error(exc, target, state) from exc
        return target

    def save_best(
        self, name: str, state: Mapping[str, Any], value: float | torch.Tensor
    ) -> Path | None:
        """Keep ``state`` as ``name`` if ``value`` is among the ``keep_best`` best so far.

        When a better value pushes the worst kept file out, that file is deleted (after the
        new one is written). A NaN/inf value is never kept; a tie with the worst kept
        value keeps the earlier file. A name already kept is overwritten only by a better
        value (one file holds one state: the better one stays). Call it next to saving ``best.pt``, e.g. with
        ``name=f"best-epoch-{epoch:04d}.pt"`` and the validation loss.

        Args:
            name: File name for this candidate; not a pinned or rotating name.
            state: What to save (as for :meth:`save`).
            value: The metric (a float or a 0-d tensor; reading a tensor syncs once).

        Returns:
            The path written, or None when ``value`` did not make the top ``keep_best``.

        Raises:
            ValueError: ``keep_best`` is 0, ``name`` is a pinned or rotating name, ``value``
                is not a real number or one-element tensor (``None``, ``"0.3"``), or the
                state holds an object that a safe load would refuse.
            CheckpointError: writing failed.
        """
        if self.keep_best < 1:
            raise ValueError(
                "save_best needs CheckpointManager(..., keep_best=k) with k >= 1, got keep_best=0"
            )
        _check_name("name", name)
        if name in self.pinned or self._is_rotating(name):
            raise ValueError(
                f"name {name!r} is a pinned or rotating checkpoint name; pick another for save_best"
            )
        number = _metric_value(value)
        if not math.isfinite(number):
            return None
        previous = dict(self._best).get(name)
        if previous is not None and not self._better(number, previous):
            return None  # the file already holds a better (or equal) state under this name
        kept = [(n, v) for n, v in self._best if n != name]
        if len(kept) >= self.keep_best and not self._better(number, kept[-1][1]):
            return None
        target = self._write(name, state)
        kept.append((name, number))
        # sort is stable: on ties the earlier checkpoint stays first
        kept.sort(key=lambda entry: entry[1], reverse=self.best_mode == "max")
        for dropped, _ in kept[self.keep_best :]:
            (self.directory / dropped).unlink(missing_ok=True)
        self._best = kept[: self.keep_best]
        return target

    def _better(self, value: float, than: float) -> bool:
        return value < than if self.best_mode == "min" else value > than

    def best_names(self) -> list[str]:
        """Names of the k-best files kept by :meth:`save_best`, best first."""
        return [name for name, _ in self._best]

    def best_checkpoints(self) -> list[tuple[Path, float]]:
        """The k-best files kept by :meth:`save_best` with their metric, best first."""
        return [(self.directory / name, value) for name, value in self._best]

    def due(self) -> bool:
        """Whether a time-based save is due (always False without ``every_seconds``)."""
        if self.every_seconds is None:
            return False
        return self._clock() - self._last_rotating_save >= self.every_seconds

    def _is_rotating(self, name: str) -> bool:
        return name not in self.pinned and (
            name in self._saved or self._rotating_re.fullmatch(name) is not None
        )

    def _rotating_files(self) -> list[Path]:
        """The rotating files present in the directory, oldest first."""
        files = [p for p in self.directory.iterdir() if self._is_rotating(p.name) and p.is_file()]
        return sorted(files, key=_age_key)

    def _rotate(self) -> None:
        files = self._rotating_files()
        for old in files[: max(0, len(files) - self.keep_last)]:
            old.unlink(missing_ok=True)
            if old.name in self._saved:
                self._saved.remove(old.name)
        self._saved = [name for name in self._saved if (self.directory / name).exists()]

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
        return load_checkpoint(path, map_location=map_location, safe_globals=self.safe_globals)

    def checkpoints(self) -> list[Path]:
        """Resumable checkpoints, newest first: ``last.pt`` and the rotating files.

        Best-model files (``best.pt``, the other ``pinned`` names and the k-best files) are
        left out: resuming from them would go back in time. Files the manager does not own
        (see the class docstring) are left out too.
        """
        files = self._rotating_files()
        last = self.directory / "last.pt"
        if last.is_file():
            files = sorted([*files, last], key=_age_key)
        return files[::-1]

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
                return path, load_checkpoint(
                    path, map_location=map_location, safe_globals=self.safe_globals
                )
            except (CheckpointError, FileNotFoundError) as exc:
                warnings.warn(
                    f"skipping unloadable checkpoint {path}: {exc}", RuntimeWarning, stacklevel=2
                )
        return None

    def latest(self) -> Path | None:
        """The newest loadable checkpoint's path (best-model files excluded), or None.

        Corrupt newer files are reported (one warning each) and skipped.
        """
        found = self.load_latest(map_location="cpu")
        return None if found is None else found[0]

    def state_dict(self) -> dict[str, Any]:
        """Settings, the time since the last rotating save, the rotating names saved and the k-best record."""
        return {
            "keep_last": self.keep_last,
            "every_seconds": self.every_seconds,
            "seconds_since_save": self._clock() - self._last_rotating_save,
            "saved": list(self._saved),
            "keep_best": self.keep_best,
            "best_mode": self.best_mode,
            "best": [[name, value] for name, value in self._best],
        }

    def check_state_dict(self, state: Any) -> None:
        """Raise unless :meth:`load_state_dict` would accept ``state``; changes nothing.

        Raises:
            ValueError: a required key is missing or a value has the wrong type or range
                (``keep_last < 1``, a bad name, a k-best record longer than ``keep_best``, a
                k-best entry with a NaN value, a pinned or rotating name, or a name twice).
        """
        require_keys(
            state, ("keep_last", "every_seconds", "seconds_since_save"), "CheckpointManager"
        )
        check_int("keep_last", state["keep_last"], minimum=1)
        _check_every_seconds(state["every_seconds"])
        check_float("seconds_since_save", state["seconds_since_save"])
        saved = state.get("saved", self._saved)
        if not isinstance(saved, list):
            raise ValueError(f"saved must be a list of file names, got {saved!r}")
        for name in saved:
            _check_name("saved", name)
        keep_best = state.get("keep_best", self.keep_best)
        check_int("keep_best", keep_best, minimum=0)
        check_choice("best_mode", state.get("best_mode", self.best_mode), _BEST_MODES)
        best = state.get("best", [[n, v] for n, v in self._best])
        if not isinstance(best, list) or len(best) > keep_best:
            raise ValueError(
                f"best must be a list of at most keep_best={keep_best} [name, value] pairs, "
                f"got {shown(best)}"
            )
        seen: set[str] = set()
        for entry in best:
            self._check_best_entry(entry, saved, seen)

    def _check_best_entry(self, entry: Any, saved: list[str], seen: set[str]) -> None:
        """Raise unless ``entry`` is a ``[name, value]`` pair a k-best record may hold."""
        is_pair = isinstance(entry, (list, tuple)) and len(entry) == 2
        if not is_pair or isinstance(entry[1], bool) or not isinstance(entry[1], (int, float)):
            raise ValueError(f"best entries must be [name, value] pairs, got {shown(entry)}")
        name, value = entry
        _check_name("best", name)
        if not math.isfinite(value):
            raise ValueError(f"best entry {name!r} has the value {value!r}, which is never kept")
        if name in self.pinned or name in saved or self._rotating_re.fullmatch(name):
            raise ValueError(
                f"best entry {name!r} is a pinned or rotating checkpoint name, not a k-best file"
            )
        if name in seen:
            raise ValueError(f"best entry {name!r} appears twice")
        seen.add(name)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore settings, the save timer and the k-best record from :meth:`state_dict`.

        :meth:`check_state_dict` runs first, so a refused state changes nothing. ``saved``,
        ``keep_best``, ``best_mode`` and ``best`` are optional (states written before they
        existed).

        Raises:
            ValueError: as :meth:`check_state_dict`.
        """
        self.check_state_dict(state)
        saved = state.get("saved", self._saved)
        best = state.get("best", [[n, v] for n, v in self._best])
        self.keep_last = state["keep_last"]
        self.every_seconds = (
            None if state["every_seconds"] is None else float(state["every_seconds"])
        )
        self._last_rotating_save = self._clock() - float(state["seconds_since_save"])
        self._saved = [name for name in saved if name not in self.pinned]
        self.keep_best = state.get("keep_best", self.keep_best)
        self.best_mode = state.get("best_mode", self.best_mode)
        entries = [(str(name), float(value)) for name, value in best]
        entries.sort(key=lambda entry: entry[1], reverse=self.best_mode == "max")  # best first
        self._best = entries


def _reason(exc: Exception, path: Path) -> str:
    """The informative line of torch's load error (its advice to load unsafely is dropped)."""
    if not zipfile.is_zipfile(path):
        return "not a torch.save checkpoint (a raw pickle or an old-format file), which is never unpickled"
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(exc).splitlines()]
    lines = [line for line in lines if line]
    for markers in (("Unsupported global", "Unsupported operand"), ("WeightsUnpickler error",)):
        for line in lines:
            if any(marker in line for marker in markers):
                return line
    return lines[0] if lines else type(exc).__name__


def load_checkpoint(
    path: str | os.PathLike[str], map_location: Any = None, *, safe_globals: Iterable[type] = ()
) -> dict[str, Any]:
    """Load one checkpoint file safely (``weights_only=True``, never unsafe unpickling).

    torch's own warnings about the file's pickle protocol are silenced: a failure is
    reported once, by the raised error, which names the file.

    Args:
        path: The checkpoint file.
        map_location: Passed to ``torch.load``.
        safe_globals: Extra classes to rebuild (``torch.serialization.safe_globals``).

    Returns:
        The saved dict.

    Raises:
        FileNotFoundError: the file does not exist.
        CheckpointError: it cannot be loaded safely (truncated, corrupt, a raw pickle, or
            not weights-only).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(list(safe_globals)):
            warnings.filterwarnings(
                "ignore", message="Detected pickle protocol", category=UserWarning
            )
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt/unsafe files
        raise CheckpointError(
            f"cannot load checkpoint {path} safely: {_reason(exc, path)}"
        ) from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, expected a dict")
    return state


def _names(keys: list[str], limit: int = 4) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def check_model_state(model: nn.Module, state: Any, what: str = "checkpoint") -> None:
    """Raise unless ``model.load_state_dict(state)`` would load ``state`` whole; changes nothing.

    Args:
        model: The module that would receive ``state``.
        state: A ``state_dict`` (e.g. a checkpoint's ``"model"`` entry).
        what: Where ``state`` comes from, for the message (``"checkpoint"``, ``"EMA state"``).

    Raises:
        ValueError: ``state`` is not a mapping, or lists keys the model lacks, lacks keys it
            has, holds a non-tensor where the model has a tensor, or a tensor of another
            shape (one line naming the first few keys of each kind).
    """
    if not isinstance(state, Mapping):
        raise ValueError(
            f"{what}: a model state_dict must be a mapping, got {type(state).__name__}"
        )
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    present = [key for key in expected if key in state]
    not_tensors = [
        f"{key} ({type(state[key]).__name__})"
        for key in present
        if isinstance(expected[key], torch.Tensor) and not isinstance(state[key], torch.Tensor)
    ]
    misshaped = [
        f"{key} {list(state[key].shape)} vs {list(expected[key].shape)}"
        for key in present
        if isinstance(state[key], torch.Tensor) and state[key].shape != expected[key].shape
    ]
    problems = [
        f"{label} {_names(keys)}"
        for label, keys in (
            ("missing keys:", missing),
            ("unexpected keys:", unexpected),
            ("not tensors:", not_tensors),
            ("mis-shaped (checkpoint vs model):", misshaped),
        )
        if keys
    ]
    if problems:
        raise ValueError(
            f"{what} does not match the model ({type(model).__name__}): {'; '.join(problems)}"
        )


def load_model_state(model: nn.Module, state: Mapping[str, Any]) -> None:
    """Load ``state`` into ``model`` strictly, after checking that it fits.

    torch's own mismatch error is a long multi-line message; this one is a single line
    listing the missing, unexpected, non-tensor and mis-shaped keys (the first few of each).

    Args:
        model: The module to load into.
        state: A ``state_dict`` (e.g. a checkpoint's ``"model"`` entry).

    Raises:
        ValueError: as :func:`check_model_state`; nothing is loaded then.
    """
    check_model_state(model, state)
    model.load_state_dict(state)
