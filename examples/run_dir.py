"""The run directory of examples/pointer_v45.py: its lock, its JSON files, its log, resuming it.

A run directory holds ``config.json`` (written first), ``train.log``, ``metrics.jsonl``,
``steps.jsonl``, ``checkpoints/`` and, once finished, ``results.json`` (docs/recipes.md).
One process at a time works in it: :func:`locked` takes ``fcntl.flock`` on ``RUN_DIR/.lock``.
The lock, the atomic JSON files and the configuration comparison are ``trainkit.sweep``'s
(``trainkit.sweep.rundir``); this module adds the example's errors, logging and Trainer resume.
"""

from __future__ import annotations

import contextlib
import json
import logging
import logging.handlers
import os
import sys
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from trainkit import distributed
from trainkit.atomic import atomic_write
from trainkit.sweep import SweepError, rundir

log = logging.getLogger("pointer_v45")
_FORMAT = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
# Fields a resumed run may change: a longer run extends the schedule (and may shorten the warmup).
RESUME_MAY_CHANGE = ("epochs", "schedule_epochs", "warmup")


class UsageError(Exception):
    """Bad command-line, config or run-directory input: printed as one line, exit status 2."""


def process_seconds() -> float:
    """Seconds since this process started (Linux: from /proc; elsewhere since this import)."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.perf_counter() - _IMPORTED


_IMPORTED = time.perf_counter()


def write_json(path: Path, value: Any) -> None:
    """Write ``path`` atomically: a kill never leaves half a file."""
    rundir.write_json(path, value)


def read_json(path: Path, hint: str = "") -> Any:
    """``path`` parsed as JSON.

    Raises:
        UsageError: missing or not valid JSON (one line naming the file, then ``hint``).
    """
    try:
        return rundir.read_json(path, hint)
    except SweepError as exc:
        raise UsageError(str(exc)) from None


@contextlib.contextmanager
def locked(run_dir: Path, create: bool = False) -> Iterator[None]:
    """Hold ``run_dir/.lock`` while the body runs (``trainkit.sweep.locked``).

    Raises:
        UsageError: another process holds the lock (the message names its pid).
        OSError: ``run_dir`` cannot be created (exists already, a file in the way, ...).
    """
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(rundir.locked(run_dir, create))
        except SweepError as exc:
            raise UsageError(str(exc)) from None
        yield


def setup_logging(main_process: bool = True) -> None:
    """Log to stdout, and keep the records until :func:`log_to_file` names the run directory."""
    root = logging.getLogger()
    root.setLevel(logging.INFO if main_process else logging.WARNING)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    stream = logging.StreamHandler(sys.stdout)
    stream.setFormatter(_FORMAT)
    root.addHandler(stream)
    root.addHandler(logging.handlers.MemoryHandler(100_000, flushLevel=logging.CRITICAL + 1))


def log_to_file(run_dir: Path) -> None:
    """From now on also log to ``run_dir/train.log`` (the records kept so far first)."""
    root = logging.getLogger()
    file = logging.FileHandler(run_dir / "train.log")
    file.setFormatter(_FORMAT)
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler):
            root.removeHandler(handler)
            handler.close()
        elif isinstance(handler, logging.handlers.MemoryHandler):
            handler.setTarget(file)
            handler.flush()
            root.removeHandler(handler)
    root.addHandler(file)


def missing_config(run_dir: Path) -> UsageError:
    """The error for ``--resume`` of a directory without ``config.json``."""
    message = f"--resume {run_dir}: no config.json there (not a run directory?)"
    if run_dir.name.startswith("pointer_v45-") and run_dir.is_dir():
        message += "; the run stopped before it started: nothing to resume, start a new run"
    return UsageError(message)


def check_resume_flags(run_dir: Path, asked: Mapping[str, Any], saved: Mapping[str, Any]) -> None:
    """Refuse a flag given with ``--resume`` whose value differs from the run's own.

    Args:
        asked: Flag -> value given (None: not given).
        saved: Flag -> the run's value (from its config.json).
    """
    for flag, value in asked.items():
        if value is not None and value != saved.get(flag):
            raise UsageError(
                f"--resume {run_dir}: {flag} {value} conflicts with the run's {saved.get(flag)!r} "
                "(its config.json); leave the flag out"
            )


def resume(trainer: Any, run_dir: Path, training: Mapping[str, Any]) -> None:
    """Continue ``trainer`` from the newest loadable checkpoint, after checking it fits this run.

    Killed before its first checkpoint, the run starts over. Skipped unloadable files are
    logged, one line each.

    Args:
        training: The run's recipe fields, as in config.json's ``training`` section.

    Raises:
        UsageError: the checkpoint was written by another recipe or optimizer, or a state
            block of it is malformed.
    """
    manager = trainer.checkpoints
    if not manager.checkpoints():
        log.warning(
            "resume: no checkpoint in %s yet: starting the run from the beginning",
            manager.directory,
        )
        for name in ("metrics.jsonl", "steps.jsonl"):
            (run_dir / name).unlink(missing_ok=True)
        return
    _drop_malformed_steps(run_dir / "steps.jsonl")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # trainer.resume() below reports each skipped file
        found = manager.load_latest(map_location="cpu")
    if found is not None:
        _check_fits(found[0], found[1], training)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            trainer.resume()
        except (KeyError, TypeError, IndexError, AttributeError, RuntimeError) as exc:
            raise UsageError(
                f"cannot resume {run_dir}: a checkpoint's state is malformed "
                f"({type(exc).__name__}: {exc})"
            ) from None
        finally:
            for warning in caught:
                log.warning("resume: %s", warning.message)


def _drop_malformed_steps(path: Path) -> None:
    """Drop lines of ``steps.jsonl`` that are not a record with an integer step (a torn write)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            kept.append(line + "\n")
    atomic_write(path, "".join(kept))


def _check_fits(path: Path, state: Any, training: Mapping[str, Any]) -> None:
    """Refuse a checkpoint of another recipe before anything is loaded (another model or optimizer
    is refused by ``Trainer.resume`` itself, block by block, before it changes anything)."""
    saved = ((state.get("config") or {}).get("training") or {}) if isinstance(state, dict) else {}
    shared = {key: value for key, value in training.items() if key in saved}
    differ = rundir.differing_fields(saved, shared, RESUME_MAY_CHANGE)
    differ = [key for key in differ if key in shared]
    if differ:
        raise UsageError(
            f"{path} was written by another recipe (it differs in {', '.join(differ)}): "
            "resume each run from its own directory"
        )
    if not isinstance(state.get("rng"), dict):
        raise UsageError(f"{path}: its rng state is malformed")


class TimedLoader:
    """A loader that adds the wall time of each full pass over it to ``seconds``."""

    def __init__(self, loader: Any) -> None:
        self.loader, self.seconds = loader, 0.0

    def __iter__(self) -> Any:
        start = time.perf_counter()
        yield from self.loader
        self.seconds += time.perf_counter() - start

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str) -> Any:  # shard(), set_epoch(), ...
        return getattr(self.loader, name)


def pick_device(name: str) -> torch.device:
    """cpu, cuda or auto; under torchrun each process takes the GPU of its local rank."""
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and distributed.launched_by_torchrun():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(name)
