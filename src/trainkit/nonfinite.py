"""The non-finite loss policy: stop the run, or drop the step up to a cap (see docs/trainer.md).

``"raise"`` is the original pipeline's rule ("Loss is not finite. Stopping."). It costs no
host sync per step: each step's finite flag stays on the device and :meth:`check` reads
them all at once (the Trainer calls it every ``log_every`` steps and at the end of an
epoch). ``"skip"`` must decide before the optimizer step, so it reads the flag every step;
under ``torchrun`` every rank drops the step when the loss is non-finite on any rank.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from trainkit import distributed

__all__ = ["NonFiniteLossError", "NonFinitePolicy"]

_MODES = ("raise", "skip")


class NonFiniteLossError(RuntimeError):
    """Training produced a non-finite loss (the original pipeline's "Loss is not finite")."""


class NonFinitePolicy:
    """What a training loop does with a NaN or infinite loss.

    Args:
        mode: ``"raise"`` (stop at the next :meth:`check`) or ``"skip"`` (drop the step).
        max_nonfinite_steps: With ``"skip"``, raise once more steps than this were dropped
            in the run.

    Raises:
        ValueError: unknown ``mode`` or ``max_nonfinite_steps`` not an int >= 0.
    """

    def __init__(self, mode: str = "raise", max_nonfinite_steps: int = 100) -> None:
        if mode not in _MODES:
            raise ValueError(f"nonfinite must be 'raise' or 'skip', got {mode!r}")
        if (
            isinstance(max_nonfinite_steps, bool)
            or not isinstance(max_nonfinite_steps, int)
            or max_nonfinite_steps < 0
        ):
            raise ValueError(
                f"max_nonfinite_steps must be an int >= 0, got {max_nonfinite_steps!r}"
            )
        self.mode = mode
        self.max_nonfinite_steps = max_nonfinite_steps
        self._flags: list[torch.Tensor] = []  # "raise": per-step finite flags not yet read
        self._steps: list[int] = []

    def skip(self, finite: torch.Tensor, step: int) -> bool:
        """Whether to drop this step.

        Args:
            finite: 0-d bool tensor, this rank's loss is finite.
            step: 1-based step of the epoch (for the error message).

        Returns:
            ``"skip"``: True when the loss is non-finite on any rank (one host sync, plus a
            collective under torchrun). ``"raise"``: always False; the flag is kept for
            :meth:`check`.
        """
        if self.mode == "raise":
            self._flags.append(finite)
            self._steps.append(step)
            return False
        bad = (~finite).float().reshape(1)
        return bool(distributed.all_reduce_sum(bad).item())

    def count_skipped(self, total: int, epoch: int, step: int) -> None:
        """Raise when ``total`` dropped steps exceed the cap.

        Raises:
            NonFiniteLossError: ``total > max_nonfinite_steps``.
        """
        if total > self.max_nonfinite_steps:
            raise NonFiniteLossError(
                f"Loss is not finite at epoch {epoch}, step {step}: {total} steps skipped, "
                f"more than max_nonfinite_steps={self.max_nonfinite_steps}"
            )

    def check(
        self, epoch: int, last_good: Callable[[], object], device: torch.device | None = None
    ) -> None:
        """Under ``"raise"``, read the kept flags (one host sync) and stop on a bad one.

        Under torchrun every rank must call this at the same points; all of them raise
        when any rank saw a non-finite loss.

        Args:
            epoch: 1-based epoch (for the message).
            last_good: Returns the last good checkpoint (or None), for the message.
            device: Where the collective runs under torchrun (the training device).

        Raises:
            NonFiniteLossError: a kept flag, on this rank or another, was False.
        """
        if self.mode != "raise":
            return
        flags, steps = self._flags, self._steps
        self._flags, self._steps = [], []
        bad = (~torch.stack(flags)).nonzero() if flags else None
        if distributed.context().enabled:  # every rank takes the same decision
            count = torch.tensor([0.0 if bad is None else float(bad.numel())], device=device)
            if distributed.all_reduce_sum(count).item() and (bad is None or not bad.numel()):
                raise NonFiniteLossError(
                    f"Loss is not finite. Stopping. (epoch {epoch}, on another rank)"
                )
        if bad is not None and bad.numel():
            raise NonFiniteLossError(
                f"Loss is not finite. Stopping. (epoch {epoch}, step {steps[int(bad[0, 0])]}; "
                f"last good checkpoint: {last_good() or 'none'})"
            )
