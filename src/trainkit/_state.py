"""The one check every ``load_state_dict`` in trainkit makes before it changes anything."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["require_keys"]


def require_keys(state: Any, keys: Iterable[str], what: str) -> None:
    """Raise unless ``state`` is a mapping holding every key in ``keys``.

    Args:
        state: What was passed to ``load_state_dict``.
        keys: The keys that ``state_dict()`` always writes.
        what: The owner, for the message (e.g. ``"EarlyStopper"``).

    Raises:
        ValueError: ``state`` is not a mapping, or lacks keys (all of them are named).
    """
    if not isinstance(state, Mapping):
        raise ValueError(
            f"state must be a mapping (a {what} state_dict()), got {type(state).__name__}"
        )
    missing = [key for key in keys if key not in state]
    if missing:
        raise ValueError(f"not a {what} state: it lacks {', '.join(repr(key) for key in missing)}")
