"""Argument checks shared by every component: one ``ValueError`` that names the argument.

Private to trainkit. Each check returns the value (converted where that is its job), so a
constructor reads ``self.patience = check_int("patience", patience, minimum=0)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, TypeVar

__all__ = ["check_choice", "check_float", "check_int", "shown"]

T = TypeVar("T")


def shown(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters for one-line messages."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _bounds(minimum: float | None, maximum: float | None) -> str:
    if minimum is not None and maximum is not None:
        return f" in [{minimum}, {maximum}]"
    if minimum is not None:
        return f" >= {minimum}"
    if maximum is not None:
        return f" <= {maximum}"
    return ""


def check_int(
    name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None
) -> int:
    """Return ``value`` if it is an int (not a bool) within ``[minimum, maximum]``.

    Args:
        name: The argument's name, for the message.
        value: What was passed.
        minimum, maximum: Inclusive bounds (None: unbounded).

    Returns:
        ``value`` as a plain ``int`` (NumPy integers are accepted).

    Raises:
        ValueError: ``value`` is not an int, or out of bounds.
    """
    is_int = isinstance(value, int) or (
        type(value).__module__ == "numpy" and hasattr(value, "__index__")
    )
    if isinstance(value, bool) or not is_int:
        raise ValueError(f"{name} must be an int{_bounds(minimum, maximum)}, got {shown(value)}")
    number = int(value)
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        raise ValueError(f"{name} must be an int{_bounds(minimum, maximum)}, got {shown(value)}")
    return number


def check_float(
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    above: float | None = None,
    below: float | None = None,
) -> float:
    """Return ``float(value)`` if it is a finite real number within the bounds.

    Args:
        name: The argument's name, for the message.
        value: What was passed (an int or float; not a bool or a string).
        minimum, maximum: Inclusive bounds (None: unbounded).
        above: An exclusive lower bound (``above=0``: strictly positive).
        below: An exclusive upper bound (``above=0, below=1``: the open interval (0, 1)).

    Returns:
        ``value`` as a ``float``.

    Raises:
        ValueError: not a real number, not finite, or out of bounds.
    """
    bounds = _bounds(minimum, maximum)
    if above is not None and below is not None:
        bounds += f" in ({above}, {below})"
    elif above is not None:
        bounds += f" > {above}"
    elif below is not None:
        bounds += f" < {below}"
    what = f"{name} must be a finite number{bounds}, got {shown(value)}"
    if isinstance(value, (bool, str, bytes)) or value is None:
        raise ValueError(what)
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(what) from None
    if not math.isfinite(number):
        raise ValueError(what)
    if (
        (minimum is not None and number < minimum)
        or (maximum is not None and number > maximum)
        or (above is not None and number <= above)
        or (below is not None and number >= below)
    ):
        raise ValueError(what)
    return number


def check_choice(name: str, value: T, choices: Iterable[T]) -> T:
    """Return ``value`` if it is one of ``choices`` (compared with ``==``, bools by identity).

    Raises:
        ValueError: ``value`` is not one of them (all are listed).
    """
    options = tuple(choices)
    for option in options:
        if isinstance(option, bool) or isinstance(value, bool):
            if option is value:
                return value
        elif type(option) is type(value) and option == value:
            return value
    listed = ", ".join(repr(option) for option in options)
    raise ValueError(f"{name} must be one of {listed}, got {shown(value)}")
