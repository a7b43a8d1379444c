"""Model selection and stopping rules of the seed's two pipelines.

``EarlyStopper`` is the proposed pipeline's patience rule on validation loss;
``RunningAverage`` is the original pipeline's eval-process rule (keep the model whose
exponentially averaged loss is lowest); ``BestValue`` is the plain best-loss rule.

All three satisfy one model-selection protocol (docs/stopping.md): ``step(value) ->
improved``, ``best``, ``best_epoch``, ``should_stop``, ``state_dict()``/``load_state_dict()``,
and ``feeds`` -- what a training loop passes to ``step`` each epoch: ``"epoch_mean"`` (the
validation loss of the pass) or ``"batch_losses"`` (each validation batch's loss, in order).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar, Literal, Protocol, SupportsFloat

from trainkit._state import require_keys
from trainkit._validate import check_int, shown

__all__ = ["BestValue", "EarlyStopper", "RunningAverage", "Selector", "feed"]

Feeds = Literal["epoch_mean", "batch_losses"]


class Selector(Protocol):
    """The model-selection protocol a training loop relies on (docs/stopping.md)."""

    feeds: ClassVar[Feeds]
    best: float
    best_epoch: int
    should_stop: bool

    def step(self, value: Any) -> bool:
        """Record one epoch's value (``feeds`` says which); True when it is a new best."""

    def state_dict(self) -> dict[str, Any]:
        """The state as plain values."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""


_MODES = ("min", "max")


def feed(selector: Selector, epoch_mean: float, batch_losses: Sequence[float]) -> bool:
    """Step ``selector`` with what its ``feeds`` asks for (``"epoch_mean"`` when it has no ``feeds``).

    Args:
        selector: An object of the model-selection protocol.
        epoch_mean: The validation pass's loss.
        batch_losses: Each validation batch's loss, in order.

    Returns:
        True when the epoch's model is the new best.
    """
    feeds = getattr(selector, "feeds", "epoch_mean")
    return bool(selector.step(batch_losses if feeds == "batch_losses" else epoch_mean))


def _check_saved_number(owner: str, key: str, value: Any, *, none_ok: bool = False) -> None:
    """Raise unless a saved ``value`` is an int/float that is not NaN (+/-inf allowed)."""
    if value is None and none_ok:
        return
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not is_number or math.isnan(value):
        raise ValueError(f"{owner} state {key!r} must be a number (not NaN), got {shown(value)}")


def _check_saved_count(owner: str, state: Any, key: str) -> None:
    """Raise unless ``state[key]`` (when present) is an int >= 0."""
    if key in state:
        check_int(f"{owner} state {key!r}", state[key], minimum=0)


def _check_saved_flag(owner: str, state: Any, key: str) -> None:
    """Raise unless ``state[key]`` is a bool."""
    if not isinstance(state[key], bool):
        raise ValueError(f"{owner} state {key!r} must be a bool, got {shown(state[key])}")


def _as_float(name: str, value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}") from None


class EarlyStopper:
    """Patience-based early stopping, exactly the seed's loop.

    Each validation value is recorded with :meth:`step`. It is an improvement when
    ``value < best - min_delta`` (mode ``"min"``; ``value > best + min_delta`` for ``"max"``);
    an improvement resets ``counter`` to 0, anything else adds one. ``should_stop`` turns
    True on a non-improving step once ``counter >= patience`` and at least ``min_epochs``
    values have been seen (the seed: patience 5, min_epochs 8, epochs counted from 1).
    NaN and +/-inf are never improvements.

    Args:
        patience: Non-improving epochs tolerated (seed: 5).
        min_epochs: Epochs that must be seen before stopping (seed: 8).
        mode: ``"min"`` (loss) or ``"max"`` (accuracy).
        min_delta: Margin an improvement must beat.

    Raises:
        ValueError: ``patience < 0``, ``min_epochs < 0``, ``min_delta < 0`` or unknown ``mode``.

    Attributes:
        best: Best value so far (``inf``/``-inf`` before any finite value).
        best_epoch: 1-based epoch of ``best`` (0 before any improvement).
        counter: Non-improving steps since the last improvement.
        epoch: Number of values seen.
        should_stop: Whether the stopping rule has fired.
    """

    feeds: ClassVar[Feeds] = "epoch_mean"

    def __init__(
        self, patience: int = 5, min_epochs: int = 0, mode: str = "min", min_delta: float = 0.0
    ) -> None:
        check_int("patience", patience, minimum=0)
        check_int("min_epochs", min_epochs, minimum=0)
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
        min_delta = _as_float("min_delta", min_delta)
        if not (min_delta >= 0) or math.isinf(min_delta):
            raise ValueError(f"min_delta must be a finite number >= 0, got {min_delta!r}")
        self.patience = patience
        self.min_epochs = min_epochs
        self.mode = mode
        self.min_delta = min_delta
        self.best = math.inf if mode == "min" else -math.inf
        self.best_epoch = 0
        self.counter = 0
        self.epoch = 0
        self.should_stop = False

    def is_improvement(self, value: float) -> bool:
        """Whether ``value`` would be a new best (pure: records nothing).

        Args:
            value: A validation value.

        Returns:
            True when ``value`` is finite and beats ``best`` by more than ``min_delta``.
        """
        value = _as_float("value", value)
        if not math.isfinite(value):
            return False
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def step(self, value: SupportsFloat) -> bool:
        """Record one validation value.

        Args:
            value: The epoch's validation value (a float or a 0-d tensor).

        Returns:
            True when ``value`` is a new best (save your best checkpoint then).
        """
        value = _as_float("value", value)
        self.epoch += 1
        if self.is_improvement(value):
            self.best = value
            self.best_epoch = self.epoch
            self.counter = 0
            return True
        self.counter += 1
        if self.counter >= self.patience and self.epoch >= self.min_epochs:
            self.should_stop = True
        return False

    def state_dict(self) -> dict[str, Any]:
        """Return the full state as plain Python values."""
        return {
            "patience": self.patience,
            "min_epochs": self.min_epochs,
            "mode": self.mode,
            "min_delta": self.min_delta,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "counter": self.counter,
            "epoch": self.epoch,
            "should_stop": self.should_stop,
        }

    def check_state_dict(self, state: Any) -> None:
        """Raise unless :meth:`load_state_dict` would accept ``state``; changes nothing.

        The saved settings are adopted on load (a restored stopper decides as the saved one
        did), so they are checked as the constructor checks them.

        Raises:
            ValueError: a key is missing, a saved setting is invalid, or a counter is not an
                int >= 0, ``best`` not a number or ``should_stop`` not a bool (the key named).
        """
        require_keys(
            state,
            (
                "patience",
                "min_epochs",
                "mode",
                "min_delta",
                "best",
                "best_epoch",
                "counter",
                "epoch",
                "should_stop",
            ),
            "EarlyStopper",
        )
        try:
            EarlyStopper(state["patience"], state["min_epochs"], state["mode"], state["min_delta"])
        except TypeError as exc:  # a min_delta that is no number
            raise ValueError(f"EarlyStopper state: {exc}") from None
        _check_saved_number("EarlyStopper", "best", state["best"])
        for key in ("best_epoch", "counter", "epoch"):
            _check_saved_count("EarlyStopper", state, key)
        _check_saved_flag("EarlyStopper", state, "should_stop")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state from :meth:`state_dict`; later decisions are identical.

        Raises:
            ValueError: as :meth:`check_state_dict` (nothing is changed then).
        """
        self.check_state_dict(state)
        self.__init__(state["patience"], state["min_epochs"], state["mode"], state["min_delta"])  # type: ignore[misc]
        self.best = float(state["best"])
        self.best_epoch = int(state["best_epoch"])
        self.counter = int(state["counter"])
        self.epoch = int(state["epoch"])
        self.should_stop = bool(state["should_stop"])

    def __repr__(self) -> str:
        return (
            f"EarlyStopper(patience={self.patience}, min_epochs={self.min_epochs}, mode={self.mode!r}, "
            f"best={self.best!r}, best_epoch={self.best_epoch}, counter={self.counter}, epoch={self.epoch})"
        )


class RunningAverage:
    """The original pipeline's running-average loss (``calc_running_avg_loss``).

    The first value is taken as is; later ones update ``avg = decay*avg + (1-decay)*value``;
    then ``avg = min(avg, clip)``. ``is_best`` is True after an update whose average is
    below every earlier average (the eval process then saved "bestmodel").

    Args:
        decay: Averaging factor (original: 0.99).
        clip: Upper clip of the average (original: 12.0).

    As a model-selection rule (:meth:`step`), it is fed each validation batch's loss in
    order, as the reference's eval process did; a pass improved when the average fell below
    the best so far at any batch of it. It never stops a run (``should_stop`` is False).

    Raises:
        ValueError: ``decay`` outside ``[0, 1)`` or ``clip`` not a positive finite number.
    """

    feeds: ClassVar[Feeds] = "batch_losses"
    should_stop: bool = False

    def __init__(self, decay: float = 0.99, clip: float = 12.0) -> None:
        decay = _as_float("decay", decay)
        clip = _as_float("clip", clip)
        if not (0.0 <= decay < 1.0):
            raise ValueError(f"decay must be in [0, 1), got {decay!r}")
        if not (math.isfinite(clip) and clip > 0):
            raise ValueError(f"clip must be a finite number > 0, got {clip!r}")
        self.decay = decay
        self.clip = clip
        self.avg: float | None = None
        self.best = math.inf
        self.is_best = False
        self.count = 0
        self.nonfinite = 0
        self.epoch = 0  # passes fed through step()
        self.best_epoch = 0  # 1-based pass whose average set ``best`` (0: none yet)

    def step(self, batch_losses: Sequence[float]) -> bool:
        """Fold one validation pass's batch losses into the average, in order.

        Args:
            batch_losses: Each validation batch's loss (floats or 0-d tensors).

        Returns:
            True when the average fell below the best so far at some batch of the pass
            (save the model as the best one then); ``best_epoch`` is this pass then.
        """
        if isinstance(batch_losses, (str, bytes)) or not isinstance(batch_losses, Sequence):
            raise TypeError(
                f"batch_losses must be a sequence of numbers, got {type(batch_losses).__name__}"
            )
        self.epoch += 1
        improved = False
        for value in batch_losses:
            self.update(value)
            improved = improved or self.is_best
        if improved:
            self.best_epoch = self.epoch
        return improved

    def update(self, value: SupportsFloat) -> float:
        """Fold one loss value into the average.

        Args:
            value: A loss value (float or 0-d tensor).

        Returns:
            The new running average. A NaN or infinite value is not folded in (it is
            counted in ``nonfinite``); the average stays as it was and ``is_best`` is False.
        """
        value = _as_float("value", value)
        if not math.isfinite(value):  # a NaN would poison the average for good: skip it
            self.nonfinite += 1
            self.is_best = False
            return math.nan if self.avg is None else self.avg
        if self.avg is None:
            avg = value
        else:
            avg = self.decay * self.avg + (1 - self.decay) * value
        avg = min(avg, self.clip)
        self.avg = avg
        self.count += 1
        self.is_best = avg < self.best  # False for NaN
        if self.is_best:
            self.best = avg
        return avg

    def state_dict(self) -> dict[str, Any]:
        """Return the full state as plain Python values."""
        return {
            "decay": self.decay,
            "clip": self.clip,
            "avg": self.avg,
            "best": self.best,
            "is_best": self.is_best,
            "count": self.count,
            "nonfinite": self.nonfinite,
            "epoch": self.epoch,
            "best_epoch": self.best_epoch,
        }

    def check_state_dict(self, state: Any) -> None:
        """Raise unless :meth:`load_state_dict` would accept ``state``; changes nothing.

        Raises:
            ValueError: a key is missing, ``decay``/``clip`` are invalid, ``avg``/``best`` are
                not numbers, ``is_best`` is not a bool or a count is not an int >= 0.
        """
        require_keys(state, ("decay", "clip", "avg", "best", "is_best", "count"), "RunningAverage")
        try:
            RunningAverage(state["decay"], state["clip"])
        except TypeError as exc:  # a setting that is no number
            raise ValueError(f"RunningAverage state: {exc}") from None
        _check_saved_number("RunningAverage", "avg", state["avg"], none_ok=True)
        _check_saved_number("RunningAverage", "best", state["best"])
        _check_saved_flag("RunningAverage", state, "is_best")
        for key in ("count", "nonfinite", "epoch", "best_epoch"):
            _check_saved_count("RunningAverage", state, key)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state from :meth:`state_dict`.

        Raises:
            ValueError: as :meth:`check_state_dict` (nothing is changed then).
        """
        self.check_state_dict(state)
        self.__init__(state["decay"], state["clip"])  # type: ignore[misc]
        self.avg = None if state["avg"] is None else float(state["avg"])
        self.best = float(state["best"])
        self.is_best = bool(state["is_best"])
        self.count = int(state["count"])
        self.nonfinite = int(state.get("nonfinite", 0))
        self.epoch = int(state.get("epoch", 0))
        self.best_epoch = int(state.get("best_epoch", 0))

    def __repr__(self) -> str:
        return f"RunningAverage(decay={self.decay}, clip={self.clip}, avg={self.avg!r}, best={self.best!r})"


class BestValue:
    """The plain best-value rule: an epoch improves when its value beats every earlier one.

    NaN and +/-inf are never improvements; it never stops a run.

    Args:
        mode: ``"min"`` (loss) or ``"max"`` (accuracy).

    Raises:
        ValueError: unknown ``mode``.

    Attributes:
        best: Best value so far (``inf``/``-inf`` before any finite value).
        best_epoch: 1-based epoch of ``best`` (0 before any improvement).
        epoch: Number of values seen.
    """

    feeds: ClassVar[Feeds] = "epoch_mean"
    should_stop: bool = False

    def __init__(self, mode: str = "min") -> None:
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
        self.mode = mode
        self.best = math.inf if mode == "min" else -math.inf
        self.best_epoch = 0
        self.epoch = 0

    def step(self, value: float) -> bool:
        """Record one value (float or 0-d tensor); True when it is a new best."""
        value = _as_float("value", value)
        self.epoch += 1
        improved = math.isfinite(value) and (
            value < self.best if self.mode == "min" else value > self.best
        )
        if improved:
            self.best = value
            self.best_epoch = self.epoch
        return improved

    def state_dict(self) -> dict[str, Any]:
        """Return the full state as plain Python values."""
        return {
            "mode": self.mode,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "epoch": self.epoch,
        }

    def check_state_dict(self, state: Any) -> None:
        """Raise unless :meth:`load_state_dict` would accept ``state``; changes nothing.

        Raises:
            ValueError: a key is missing, the saved mode is unknown, ``best`` is not a number
                or a count is not an int >= 0.
        """
        require_keys(state, ("mode", "best", "best_epoch", "epoch"), "BestValue")
        BestValue(state["mode"])
        _check_saved_number("BestValue", "best", state["best"])
        for key in ("best_epoch", "epoch"):
            _check_saved_count("BestValue", state, key)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state from :meth:`state_dict`.

        Raises:
            ValueError: as :meth:`check_state_dict` (nothing is changed then).
        """
        self.check_state_dict(state)
        self.__init__(state["mode"])  # type: ignore[misc]
        self.best = float(state["best"])
        self.best_epoch = int(state["best_epoch"])
        self.epoch = int(state["epoch"])

    def __repr__(self) -> str:
        return f"BestValue(mode={self.mode!r}, best={self.best!r}, best_epoch={self.best_epoch}, epoch={self.epoch})"
