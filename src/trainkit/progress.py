"""The counters of a training run, saved in every checkpoint (see docs/trainer.md)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import torch

from trainkit._state import require_keys

__all__ = ["TrainingProgress"]


@dataclass
class TrainingProgress:
    """Where a run stands; the Trainer's only mutable counters.

    Attributes:
        epoch: Completed epochs.
        global_step: Optimizer steps taken (fp16-overflow steps included, non-finite
            steps dropped under ``nonfinite="skip"`` not).
        step_in_epoch: Batches of the current epoch already consumed (0 between epochs).
        epoch_sums: The current epoch's device-side sums while it runs (None between
            epochs): ``[loss, grad norm, finite steps, fp16 overflows, non-finite steps]``.
        fp16_overflow_steps: Updates the GradScaler skipped, over the run.
        nonfinite_steps: Steps dropped for a non-finite loss, over the run.
        stopped_early: The selector's stopping rule fired.
        history: One record per completed epoch.
    """

    epoch: int = 0
    global_step: int = 0
    step_in_epoch: int = 0
    epoch_sums: torch.Tensor | None = None
    fp16_overflow_steps: int = 0
    nonfinite_steps: int = 0
    stopped_early: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)

    def state_dict(self) -> dict[str, Any]:
        """The counters as plain values and one tensor (``epoch_sums``, copied)."""
        state = {f.name: getattr(self, f.name) for f in fields(self)}
        state["epoch_sums"] = None if self.epoch_sums is None else self.epoch_sums.detach().clone()
        state["history"] = [dict(record) for record in self.history]
        return state

    @staticmethod
    def check_state(state: Any) -> None:
        """Raise unless ``state`` holds every counter (checked before anything is loaded).

        Raises:
            ValueError: a counter is missing (all missing ones are named).
        """
        require_keys(state, [f.name for f in fields(TrainingProgress)], "Trainer checkpoint")

    def load_state_dict(
        self, state: dict[str, Any], device: torch.device | str | None = None
    ) -> None:
        """Restore the counters from :meth:`state_dict` (``epoch_sums`` moved to ``device``).

        Raises:
            ValueError: a counter is missing.
        """
        self.check_state(state)
        sums = state["epoch_sums"]
        self.epoch = int(state["epoch"])
        self.global_step = int(state["global_step"])
        self.step_in_epoch = int(state["step_in_epoch"])
        self.epoch_sums = None if sums is None else sums.to(device)
        self.fp16_overflow_steps = int(state["fp16_overflow_steps"])
        self.nonfinite_steps = int(state["nonfinite_steps"])
        self.stopped_early = bool(state["stopped_early"])
        self.history = [dict(record) for record in state["history"]]
