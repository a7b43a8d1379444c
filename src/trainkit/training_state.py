"""A training run's state as one dict: ``{name: component.state_dict()}`` plus the counters.

The Trainer keeps its components in a name -> object mapping (Ignite's ``Checkpoint`` maps
``state_dict`` over such a dict the same way). :func:`load_training_state` checks every
block before it changes anything, so a checkpoint of another model, optimizer or recipe is
refused with one line and leaves the run as it was (docs/reliability.md).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from trainkit import distributed
from trainkit.checkpoint import (
    CheckpointError,
    CheckpointManager,
    load_checkpoint,
    load_model_state,
)
from trainkit.optim import check_optimizer_state
from trainkit.progress import TrainingProgress
from trainkit.rng import get_rng_state, set_rng_state
from trainkit.state import require_keys

__all__ = ["load_best", "load_resume_state", "load_training_state", "training_state"]

log = logging.getLogger("trainkit.trainer")

# Blocks restored only when present: the manager's timer (a state saved without one has none).
_OPTIONAL = ("checkpoints",)
# Blocks saved but never restored: the schedule is a pure function of the epoch, built from the
# (possibly extended) run's settings; its saved state records what the run used.
_RECORD_ONLY = ("schedule",)


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
        ValueError: a block is missing, another optimizer's, of another precision, or the
            model's keys/shapes differ (one line naming it); nothing was changed then.
    """
    restored = {name: part for name, part in parts.items() if name not in _RECORD_ONLY}
    require_keys(
        state, [*(name for name in restored if name not in _OPTIONAL), "rng"], "Trainer checkpoint"
    )
    TrainingProgress.check_state(state)
    if not _fits(parts["model"], state["model"]):
        load_model_state(
            parts["model"], state["model"]
        )  # raises its one-line message, loads nothing
    check_optimizer_state(
        parts["optimizer"], state["optimizer"]
    )  # another recipe's checkpoint fails here
    loaded = {name: part for name, part in restored.items() if name != "model" and name in state}
    for name, part in loaded.items():
        require_keys(state[name], part.state_dict().keys(), f"{type(part).__name__} ({name!r})")
    require_keys(state["rng"], ("python", "numpy", "torch"), "RNG state ('rng')")
    amp = parts.get("amp")
    if amp is not None and state["amp"]["precision"] != amp.precision:
        raise ValueError(
            f"checkpoint precision {state['amp']['precision']!r} differs from this run's {amp.precision!r}"
        )
    load_model_state(parts["model"], state["model"])
    for name, part in loaded.items():
        part.load_state_dict(state[name])
    progress.load_state_dict(state, device)
    set_rng_state(state["rng"])


def _fits(model: torch.nn.Module, state: Any) -> bool:
    """Whether ``state`` has exactly ``model``'s keys and shapes (what ``load_model_state`` checks)."""
    if not isinstance(state, Mapping):
        return False
    expected = model.state_dict()
    return set(state) == set(expected) and all(
        not isinstance(state[key], torch.Tensor) or state[key].shape == value.shape
        for key, value in expected.items()
    )


def load_resume_state(
    manager: CheckpointManager | None, path: str | Path | None, device: torch.device | None = None
) -> tuple[Path, dict[str, Any]]:
    """The checkpoint to resume from: ``path``, or the newest loadable one of ``manager``.

    Under torchrun rank 0 picks the file and every rank loads that same file. A damaged
    newest checkpoint is reported (one warning naming it) and the previous one used; when
    that is not ``last.pt``, ``last.pt`` is rewritten from it so that it names the newest state.

    Returns:
        ``(path, state)``.

    Raises:
        FileNotFoundError: no loadable checkpoint.
        CheckpointError: ``path`` cannot be loaded safely.
    """
    if path is not None:
        return Path(path), load_checkpoint(path, map_location=device)
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
    if found[0].name != "last.pt":  # last.pt is damaged or older: renew it
        manager.save("last.pt", found[1])  # type: ignore[union-attr]
    return found


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
