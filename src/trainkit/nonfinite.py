"""The non-finite step policy: stop the run, or skip the step up to a cap (see docs/trainer.md).

Which update steps are non-finite is decided on the device by
:class:`~trainkit.train_step.TrainStep` (its loss or, in fp32/bf16, its gradient norm), the
same way eagerly and captured; under ``"skip"`` such a step never changes the weights.
:meth:`NonFinitePolicy.check` reads the epoch's count at the loop's sync points (every
``log_every`` update steps, the end of an epoch, a signal): ``"raise"`` is the original
pipeline's rule ("Loss is not finite. Stopping."), ``"skip"`` raises once more steps than
``max_nonfinite_steps`` were skipped in the run. No host sync per step.
"""

from __future__ import annotations

from collections.abc import Callable

from trainkit._validate import check_choice, check_int

__all__ = ["NonFiniteLossError", "NonFinitePolicy"]

_MODES = ("raise", "skip")


class NonFiniteLossError(RuntimeError):
    """Training produced a non-finite loss (the original pipeline's "Loss is not finite")."""


class NonFinitePolicy:
    """What a training loop does with a NaN or infinite loss.

    Args:
        mode: ``"raise"`` (stop at the next :meth:`check`) or ``"skip"`` (the step is
            skipped on the device and counted).
        max_nonfinite_steps: With ``"skip"``, raise once more steps than this were skipped
            in the run.

    Raises:
        ValueError: unknown ``mode`` or ``max_nonfinite_steps`` not an int >= 0.
    """

    def __init__(self, mode: str = "raise", max_nonfinite_steps: int = 100) -> None:
        self.mode = check_choice("nonfinite", mode, _MODES)
        self.max_nonfinite_steps = check_int("max_nonfinite_steps", max_nonfinite_steps, minimum=0)

    def check(
        self,
        epoch_count: int,
        first_step: int | None,
        *,
        epoch: int,
        run_total: int,
        last_good: Callable[[], object],
    ) -> None:
        """Apply the policy to what the device counted so far (the caller synced once).

        Args:
            epoch_count: Non-finite update steps so far in this epoch (on any rank).
            first_step: 1-based update step of the epoch of the first one (None: unknown,
                e.g. it was on another rank).
            epoch: 1-based epoch, for the message.
            run_total: Non-finite update steps in the whole run, this epoch's included.
            last_good: Returns the last good checkpoint (or None), for the message.

        Raises:
            NonFiniteLossError: ``"raise"`` and ``epoch_count > 0``; ``"skip"`` and
                ``run_total > max_nonfinite_steps``.
        """
        if not epoch_count:
            return
        where = (
            f"epoch {epoch}, step {first_step}" if first_step else f"epoch {epoch}, on another rank"
        )
        if self.mode == "raise":
            raise NonFiniteLossError(
                f"Loss is not finite. Stopping. ({where}; last good checkpoint: {last_good() or 'none'})"
            )
        if run_total > self.max_nonfinite_steps:
            raise NonFiniteLossError(
                f"Loss is not finite: {run_total} steps skipped, more than "
                f"max_nonfinite_steps={self.max_nonfinite_steps} (the first of {where})"
            )
