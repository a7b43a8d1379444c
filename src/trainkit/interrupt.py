"""Stop a run cleanly on SIGINT/SIGTERM (see docs/trainer.md, "Interrupting a run").

The first signal only sets a flag: the loop finishes the current step, writes ``last.pt``
and raises :class:`TrainingInterrupted`. A second signal ends the process at once.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType, TracebackType
from typing import Any

import torch

from trainkit import distributed

__all__ = ["InterruptHandler", "TrainingInterrupted"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(Exception):
    """``fit()`` stopped on SIGINT/SIGTERM after saving a resumable ``last.pt``."""


class InterruptHandler:
    """While entered (in the main thread), SIGINT/SIGTERM set :attr:`requested`.

    Handlers are installed only in the main thread (Python allows no other) and the
    previous ones are restored on exit. A second signal restores the default action
    and re-sends itself: the process ends at once.

    Attributes:
        requested: The name of the signal received (``"SIGINT"``), or None.
    """

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is not None:  # the second one: leave now
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.requested = signal.Signals(signum).name

    def requested_anywhere(self, device: torch.device) -> str | None:
        """:attr:`requested`, agreed by every rank under torchrun (a collective: all must call)."""
        if not distributed.context().enabled:
            return self.requested
        flag = torch.tensor([float(self.requested is not None)], device=device)
        anywhere = bool(distributed.all_reduce_sum(flag).item())
        return self.requested or ("a signal on another rank" if anywhere else None)

    def __enter__(self) -> InterruptHandler:
        self.requested = None
        if threading.current_thread() is threading.main_thread():
            for signum in _SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}
