"""A training run's state as one dict: ``{name: component.state_dict()}`` plus the counters.

The Trainer keeps its components in a name -> object mapping (Ignite's ``Checkpoint`` maps
``state_dict`` over such a dict the same way). :func:`load_training_state` checks every
block before it changes anything: the keys, the counters' types, the model's keys and
shapes, the optimizer, and each part's own ``check_state_dict(state)`` (EMA decay, stopper
settings, k-best record...). A checkpoint of another model, optimizer or recipe is refused
with one line and leaves the run as it was, files included (docs/reliability.md).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from trainkit import distributed
from trainkit._state import require_keys
from trainkit._validate import check_int, shown
from trainkit.checkpoint import (
    CheckpointError,
    CheckpointManager,
    check_model_state,
    load_checkpoint,
    load_model_state,
)
from trainkit.optim import check_optimizer_state
from trainkit.progress import TrainingProgress
from trainkit.rng import get_rng_state, set_rng_state

__all__ = [
    "check_counters",
    "check_training_state",
    "load_best",
    "load_resume_state",
    "load_training_state",
    "renew_last",
    "training_state",
]

log = logging.getLogger("trainkit.trainer")

# Blocks restored only when present: the manager's timer (a state saved without one has none).
_OPTIONAL = ("checkpoints",)
# Blocks saved but never restored: the schedule is a pure function of the epoch, built from the
# (possibly extended) run's settings; its saved state records what the run used.
_RECORD_ONLY = ("schedule",)
# The counters of TrainingProgress that are ints >= 0.
_COUNTERS = ("epoch", "global_step", "step_in_epoch", "fp16_overflow_steps", "nonfinite_steps")


def training_state(
    parts: Mapping[str, Any], progress: TrainingProgress, config: dict[str, Any]
) -> dict[str, Any]:
    """Everything a resumed run needs, as tensors and plain values.

    Args:
        parts: ``{name: component}``; ``"model"`` is an ``nn.Module``, the others have ``state_dict()``.
        progress: The run's counters (flattened into the top level: ``state["epoch"]``, ...).
        config: Plain data saved as ``state["config"]``.

    Returns:
        ``{name: part.state_dict()}``, the counters, ``"rng"`` and ``"config"``.
    """
    blocks = {name: part.state_dict() for name, part in parts.items()}
    return {**blocks, **progress.state_dict(), "rng": get_rng_state(), "config": config}


def check_counters(state: Any) -> None:
    """Raise unless the counters of a Trainer checkpoint have their types (changes nothing).

    Raises:
        ValueError: a counter is missing, not an int >= 0 (``epoch: "three"``), ``stopped_early``
            is not a bool, ``history`` not a list or ``epoch_sums`` neither None nor a tensor;
            the message names the key.
    """
    TrainingProgress.check_state(state)
    for key in _COUNTERS:
        check_int(f"checkpoint key {key!r}", state[key], minimum=0)
    if not isinstance(state["stopped_early"], bool):
        raise ValueError(
            f"checkpoint key 'stopped_early' must be a bool, got {shown(state['stopped_early'])}"
        )
    history = state["history"]
    if not isinstance(history, list) or not all(isinstance(r, Mapping) for r in history):
        raise ValueError(
            f"checkpoint key 'history' must be a list of records, got {shown(history)}"
        )
    sums = state["epoch_sums"]
    if sums is not None and not isinstance(sums, torch.Tensor):
        raise ValueError(f"checkpoint key 'epoch_sums' must be a tensor or None, got {shown(sums)}")


def check_training_state(parts: Mapping[str, Any], state: Any) -> None:
    """Check every block of ``state`` against ``parts``; changes nothing (not even a file).

    Args:
        parts: As for :func:`training_state`; needs ``"model"`` and ``"optimizer"``.
        state: What :func:`training_state` returned.

    Raises:
        ValueError: a block is missing, a counter mistyped, the model's keys/shapes differ,
            the optimizer is another one, the precision differs, or a part's own
            ``check_state_dict`` refuses its block (one line naming it).
    """
    restored = {name: part for name, part in parts.items() if name not in _RECORD_ONLY}
    require_keys(
        state, [*(name for name in restored if name not in _OPTIONAL), "rng"], "Trainer checkpoint"
    )
    check_counters(state)
    check_model_state(parts["model"], state["model"])
    # another recipe's checkpoint fails here
    check_optimizer_state(parts["optimizer"], state["optimizer"])
    for name, part in _loaded_parts(parts, state).items():
        require_keys(state[name], part.state_dict().keys(), f"{type(part).__name__} ({name!r})")
        check = getattr(part, "check_state_dict", None)  # a user's object may not have one
        if check is not None:
            check(state[name])  # the part's own settings: EMA decay, k-best record, ...
    require_keys(state["rng"], ("python", "numpy", "torch"), "RNG state ('rng')")
    amp = parts.get("amp")
    if amp is not None and state["amp"]["precision"] != amp.precision:
        raise ValueError(
            f"checkpoint precision {state['amp']['precision']!r} differs from this run's {amp.precision!r}"
        )


def _loaded_parts(parts: Mapping[str, Any], state: Mapping[str, Any]) -> dict[str, Any]:
    """The parts other than the model whose block ``state`` holds and that are restored."""
    return {
        name: part
        for name, part in parts.items()
        if name not in _RECORD_ONLY and name != "model" and name in state
    }


def load_training_state(
    parts: Mapping[str, Any],
    progress: TrainingProgress,
    state: Any,
    device: torch.device | None = None,
) -> None:
    """Check every block of ``state``, then restore the parts, the counters and the RNG states.

    Args:
        parts: As for :func:`training_state`; needs ``"model"`` and ``"optimizer"``, may hold ``"amp"``.
        progress: Receives the counters.
        state: What :func:`training_state` returned (e.g. loaded from ``last.pt``).
        device: Where the mid-epoch sums go.

    Raises:
        ValueError: as :func:`check_training_state`, which runs first: nothing was changed then.
    """
    check_training_state(parts, state)
    load_model_state(parts["model"], state["model"])
    for name, part in _loaded_parts(parts, state).items():
        part.load_state_dict(state[name])
    progress.load_state_dict(state, device)
    set_rng_state(state["rng"])


def load_resume_state(
    manager: CheckpointManager | None, path: str | Path | None, device: torch.device | None = None
) -> tuple[Path, dict[str, Any]]:
    """The checkpoint to resume from: ``path``, or the newest loadable one of ``manager``.

    Under torchrun rank 0 picks the file and every rank loads that same file. A damaged
    newest checkpoint is reported (one warning naming it) and the previous one used. Nothing
    is written: once the state is loaded, :func:`renew_last` rewrites ``last.pt`` from it.

    Returns:
        ``(path, state)``.

    Raises:
        FileNotFoundError: no loadable checkpoint.
        CheckpointError: ``path`` cannot be loaded safely.
        ValueError: the chosen file's counters are mistyped (one line naming the file and key).
    """
    if path is not None:
        chosen, state = Path(path), load_checkpoint(path, map_location=device)
    else:
        chosen, state = _latest(manager, device)
    try:
        check_counters(state)
    except ValueError as exc:
        raise ValueError(f"cannot resume from {chosen}: {exc}") from None
    return chosen, state


def _latest(
    manager: CheckpointManager | None, device: torch.device | None
) -> tuple[Path, dict[str, Any]]:
    """The newest loadable checkpoint of ``manager``, the same file on every rank."""
    found = (
        manager.load_latest(map_location=device)
        if manager is not None and distributed.context().is_main
        else None
    )
    chosen = distributed.broadcast_object(None if found is None else str(found[0]))
    if chosen is None:
        where = "" if manager is None else f" in {manager.directory}"
        raise FileNotFoundError(f"no loadable checkpoint to resume from{where}")
    if found is None:  # another rank than 0
        return Path(chosen), load_checkpoint(chosen, map_location=device)
    return found


def renew_last(manager: CheckpointManager | None, chosen: Path, state: Mapping[str, Any]) -> None:
    """After a resume from ``chosen`` has loaded ``state``: rewrite ``last.pt`` from it.

    When the newest loadable checkpoint was not ``last.pt`` (damaged, or older after a kill
    between the epoch copy and ``last.pt``), ``last.pt`` then holds the state resumed from.
    Call it only once the state is loaded, and only for a resume that picked the file itself
    (``resume()`` without a path): a refused resume writes nothing. Only rank 0 writes.

    Args:
        manager: The run's checkpoints (None: nothing to renew).
        chosen: The file the state came from.
        state: The loaded state.
    """
    if manager is None or chosen.name == "last.pt" or not distributed.context().is_main:
        return
    manager.save("last.pt", state)


def load_best(
    manager: CheckpointManager | None,
    best_name: str,
    best_epoch: int,
    load: Callable[[dict[str, Any]], None],
    final_epoch: int,
    device: torch.device | None = None,
) -> str:
    """Load the best model for the final evaluation, falling back when its file is damaged.

    Tries ``best_name``, then the best epoch's ``epoch-NNNN.pt`` (the same weights, when
    rotation kept it); if neither loads, the current (final) weights stay, with a warning.

    Args:
        manager: Where the checkpoints are (None: the final weights are evaluated).
        best_name: The best model's file name.
        best_epoch: The selector's best epoch (1-based; 0: none).
        load: Applies a loaded state to the model(s); may raise ``KeyError``/``ValueError``.
        final_epoch: The epoch of the current weights (for the description).
        device: ``map_location`` for loading.

    Returns:
        What is evaluated, e.g. ``"best.pt (epoch 7)"`` or ``"final weights (epoch 9): no best.pt"``.
    """
    if manager is None:
        return "final weights (no checkpoints)"
    problem = f"no {best_name}"
    for name in (best_name, f"epoch-{best_epoch:04d}.pt"):
        try:
            state = manager.load(name, map_location=device)
            load(state)
        except (CheckpointError, FileNotFoundError, KeyError, ValueError) as exc:
            problem = (
                problem if name != best_name or isinstance(exc, FileNotFoundError) else str(exc)
            )
            continue
        if name != best_name:
            log.warning("%s: evaluating %s, the best epoch's checkpoint", problem, name)
        return f"{name} (epoch {state['epoch']})"
    log.warning("%s and no epoch-%04d.pt: evaluating the final weights", problem, best_epoch)
    return f"final weights (epoch {final_epoch}): {problem}"
