"""One run of a sweep, wherever it executes: in the sweep's process, a pool worker or a Ray task.

:func:`run_one` is the whole contract with the user's training function: import it from its
``module:function`` reference, give torch its thread budget, make the run directory, call
``train(config, seed, run_dir)``, check what it returns and write ``sweep_result.json``
atomically. That file is the only mark of a finished run.
"""

from __future__ import annotations

import importlib
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from trainkit._validate import shown
from trainkit.sweep.rundir import SweepError, write_json

__all__ = ["RESULT_FILE", "TrainFn", "check_result", "load_train", "run_one"]

RESULT_FILE = "sweep_result.json"
TrainFn = Callable[[dict[str, Any], int, Path], Mapping[str, Any]]
"""``train(config, seed, run_dir) -> {metric: number, info: text}``."""


def load_train(reference: str) -> TrainFn:
    """The function named by ``"module:function"`` (the module is imported from ``sys.path``).

    Raises:
        SweepError: a malformed reference, a module that does not import, or no such function.
    """
    module_name, _, function_name = reference.partition(":")
    if not module_name or not function_name:
        raise SweepError(f"train must be 'module:function', got {shown(reference)}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SweepError(f"train {reference!r}: cannot import {module_name!r} ({exc})") from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise SweepError(f"train {reference!r}: {module_name} has no function {function_name!r}")
    return function  # type: ignore[no-any-return]


def check_result(result: Any, where: str) -> dict[str, float | str]:
    """What a training function returned, as stored: finite numbers (metrics) and strings (info).

    Args:
        result: The returned mapping.
        where: Names the run (or file) in the message.

    Returns:
        A plain dict: numbers as floats, strings kept.

    Raises:
        SweepError: not a mapping, a key that is not a string, or a value that is neither a
            finite number nor a string.
    """
    if not isinstance(result, Mapping) or not result:
        raise SweepError(
            f"{where}: the training function must return a non-empty dict of metrics, got {shown(result)}"
        )
    checked: dict[str, float | str] = {}
    for key, value in result.items():
        if not isinstance(key, str):
            raise SweepError(f"{where}: metric names must be strings, got {shown(key)}")
        if isinstance(value, str):
            checked[key] = value
            continue
        number = _finite(value)
        if number is None:
            raise SweepError(
                f"{where}: {key} must be a finite number or a string, got {shown(value)}"
            )
        checked[key] = number
    return checked


def _finite(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def run_one(
    train: str, row: str, seed: int, config: dict[str, Any], run_dir: str, threads: int
) -> dict[str, Any]:
    """Train one run and write its ``sweep_result.json``.

    Args:
        train: The ``module:function`` reference.
        row, seed: Which run this is.
        config: The row's configuration (the sweep's ``shared`` values, then the row's).
        run_dir: The run's directory (made if missing; after a kill it holds what the
            earlier attempt left, for a training function that resumes from it).
        threads: torch's intra-op threads for this run (results may depend on it, never
            on how many runs execute at once).

    Returns:
        The record written: ``row``, ``seed``, ``config``, ``result``, ``seconds``.

    Raises:
        SweepError: the function cannot be loaded or returned something malformed.
        Exception: whatever the training function raises.
    """
    function = load_train(train)
    directory = Path(run_dir)
    directory.mkdir(parents=True, exist_ok=True)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    start = time.perf_counter()
    try:
        returned = function(dict(config), seed, directory)
    finally:
        torch.set_num_threads(previous)
    seconds = time.perf_counter() - start
    record = {
        "row": row,
        "seed": seed,
        "config": config,
        "result": check_result(returned, f"run {row} seed {seed}"),
        "seconds": seconds,
    }
    write_json(directory / RESULT_FILE, record)
    return record
