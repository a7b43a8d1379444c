"""Linear warmup followed by cosine decay: the proposed pipeline's learning rate.

The learning rate is a pure function of an explicit position ``t`` (an epoch index, or a
fractional epoch ``epoch + step / steps_per_epoch`` for per-step scheduling). Nothing hides a
step counter, so a skipped AMP step or a resume cannot make the schedule drift.

Per step the warmup keeps the reference's ramp ``base_lr * (t + 1) / warmup`` (capped at
``base_lr``): it starts at ``base_lr / warmup``, not at 0 as HF's and timm's ramps do, so a
warmup of one epoch or less is no warmup at all. Used per step (``as_lr_scheduler`` with
``steps_per_epoch``, or ``apply`` at a fractional ``t``) such a schedule warns once
(docs/schedule.md shows both curves).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch

from trainkit._state import require_keys
from trainkit._validate import check_float, check_int

__all__ = ["WarmupCosineSchedule"]


class WarmupCosineSchedule:
    """Warmup + cosine learning-rate schedule, equal to the seed's ``_get_lr(epoch)``.

    For integer ``t`` in ``[0, total]``::

        t < warmup:  base_lr * (t + 1) / warmup
        otherwise:   min_lr + 0.5 * (base_lr - min_lr) * (1 + cos(pi * progress)),
                     progress = (t - warmup) / max(1, total - warmup)

    Fractional ``t`` follows the same formulas with the warmup ramp capped at ``base_lr``
    (so it rises during warmup and never overshoots), and ``t >= total`` holds ``min_lr``
    (the seed's formula would climb back up past ``total``). The ramp starts at
    ``base_lr / warmup`` (the seed's first epoch), never at 0; with ``0 < warmup <= 1``
    there is no ramp, and per-step use warns about it.

    Args:
        base_lr: Peak learning rate (the seed uses 6.5e-4; its range is 3e-4..6.5e-4).
        warmup: Warmup length in epochs (seed: 5). 0 means no warmup.
        total: Schedule length in epochs (seed: 50).
        min_lr: Floor reached at ``total`` (seed: 1e-6).

    Raises:
        ValueError: ``base_lr <= 0``, ``min_lr < 0``, ``min_lr > base_lr``, ``warmup < 0``,
            ``total <= 0``, ``warmup > total``, or any non-finite or non-numeric value.
    """

    def __init__(self, base_lr: float, warmup: float, total: float, min_lr: float = 0.0) -> None:
        for name, value in (
            ("base_lr", base_lr),
            ("warmup", warmup),
            ("total", total),
            ("min_lr", min_lr),
        ):
            check_float(name, value)
        if base_lr <= 0:
            raise ValueError(f"base_lr must be > 0, got {base_lr!r}")
        if min_lr < 0:
            raise ValueError(f"min_lr must be >= 0, got {min_lr!r}")
        if min_lr > base_lr:
            raise ValueError(f"min_lr must be <= base_lr ({base_lr!r}), got {min_lr!r}")
        if warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {warmup!r}")
        if total <= 0:
            raise ValueError(f"total must be > 0, got {total!r}")
        if warmup > total:
            raise ValueError(f"warmup must be <= total ({total!r}), got {warmup!r}")
        self.base_lr = float(base_lr)
        self.warmup = warmup
        self.total = total
        self.min_lr = float(min_lr)

    def __call__(self, t: float) -> float:
        """Return the learning rate at position ``t`` (epochs, may be fractional).

        Args:
            t: Position in epochs, ``t >= 0``.

        Returns:
            The learning rate as a Python float.

        Raises:
            ValueError: ``t`` is negative or not finite.
        """
        if not math.isfinite(t) or t < 0:
            raise ValueError(f"t must be a finite number >= 0, got {t!r}")
        if t >= self.total:
            return self.min_lr
        if t < self.warmup:
            # Cap the ramp through (t + 1) so integer epochs stay bit-equal to the seed.
            return self.base_lr * min(t + 1, self.warmup) / self.warmup
        progress = (t - self.warmup) / max(1, self.total - self.warmup)
        return self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1 + math.cos(math.pi * progress))

    def apply(self, optimizer: torch.optim.Optimizer, t: float) -> float:
        """Set ``lr`` on every param group of ``optimizer`` to ``self(t)``.

        A group whose ``lr`` is a tensor (a captured optimizer's, docs/captured.md) is
        written in place with ``fill_``, so a CUDA graph that reads it sees the new value.

        Args:
            optimizer: Any torch optimizer.
            t: Position in epochs.

        Returns:
            The learning rate that was set.

        Warns:
            UserWarning: ``t`` is fractional (per-step use) and ``0 < warmup <= 1``: the
                reference ramp is already at ``base_lr`` at ``t = 0``, so there is no warmup.
        """
        lr = self(t)
        if t != math.floor(t):
            self._warn_if_no_step_warmup()
        for group in optimizer.param_groups:
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr
        return lr

    def as_lr_scheduler(
        self, optimizer: torch.optim.Optimizer, steps_per_epoch: int | None = None
    ) -> torch.optim.lr_scheduler.LRScheduler:
        """Wrap the schedule as a standard ``torch.optim.lr_scheduler.LRScheduler``.

        After ``k`` calls to ``.step()`` the first param group's ``lr`` is exactly
        ``self(k)`` (epoch mode) or ``self(k / steps_per_epoch)`` (step mode), so the
        schedule plugs into any loop or framework that steps a torch scheduler. Every
        other group keeps its ratio to the first group's initial ``lr``, as with
        ``LambdaLR`` (a group at a tenth of the first stays at a tenth); groups with equal
        ``lr`` all get ``self(t)`` exactly. ``base_lrs`` is ``base_lr`` times those ratios.
        Like ``LambdaLR`` it sets the LR in closed form at every step, so in a
        ``ChainedScheduler`` it must come first and a multiplicative scheduler after it
        applies its factor once per step (docs/schedule.md).

        Args:
            optimizer: The optimizer whose param groups are driven.
            steps_per_epoch: ``None`` for one ``.step()`` per epoch, else steps per epoch.

        Returns:
            An ``LRScheduler`` whose ``state_dict()`` holds only plain values (it loads
            with ``torch.load(weights_only=True)``); ``load_state_dict`` raises
            ``ValueError`` for a state saved with a different ``steps_per_epoch``.

        Raises:
            ValueError: ``steps_per_epoch`` is given and not a positive integer, or the
                first param group's ``lr`` is not a finite number > 0 (no ratio exists).

        Warns:
            UserWarning: step mode with ``0 < warmup <= 1`` (no warmup per step, see ``apply``).
        """
        if steps_per_epoch is not None:
            check_int("steps_per_epoch", steps_per_epoch, minimum=1)
            self._warn_if_no_step_warmup()
        return _ScheduleLR(optimizer, self, steps_per_epoch)

    def _warn_if_no_step_warmup(self) -> None:
        """Warn that per step a warmup of at most one epoch does not ramp at all."""
        if 0 < self.warmup <= 1:
            warnings.warn(
                f"warmup={self.warmup!r} gives no warmup per step: the reference ramp "
                f"base_lr * (t + 1) / warmup is already base_lr at t = 0 (HF and timm ramp "
                f"up from 0 instead). Use warmup=0 to say so, or warmup >= 2 epochs for a "
                f"ramp (docs/schedule.md).",
                UserWarning,
                stacklevel=3,
            )

    def state_dict(self) -> dict[str, Any]:
        """Return the schedule's settings (it has no other state)."""
        return {
            "base_lr": self.base_lr,
            "warmup": self.warmup,
            "total": self.total,
            "min_lr": self.min_lr,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore settings saved by :meth:`state_dict` (validated like the constructor).

        Raises:
            ValueError: a key is missing or a value is invalid.
        """
        require_keys(state, ("base_lr", "warmup", "total", "min_lr"), "WarmupCosineSchedule")
        self.__init__(state["base_lr"], state["warmup"], state["total"], state["min_lr"])  # type: ignore[misc]

    def __repr__(self) -> str:
        return (
            f"WarmupCosineSchedule(base_lr={self.base_lr!r}, warmup={self.warmup!r}, "
            f"total={self.total!r}, min_lr={self.min_lr!r})"
        )


class _ScheduleLR(torch.optim.lr_scheduler.LRScheduler):
    """An ``LRScheduler`` that sets the first group's ``lr = schedule(position)`` exactly.

    The position is ``last_epoch`` (epoch mode) or ``last_epoch / steps_per_epoch`` (step
    mode). Group ``g`` gets ``schedule(position) * ratios[g]``, ``ratios[g]`` being its
    initial ``lr`` over the first group's (1.0 for the first group and for equal groups, so
    their value is the schedule's float, bit for bit). The schedule object is not part of
    ``state_dict()``; the ratios are.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        schedule: WarmupCosineSchedule,
        steps_per_epoch: int | None,
    ) -> None:
        initial = [float(group.get("initial_lr", group["lr"])) for group in optimizer.param_groups]
        if not (math.isfinite(initial[0]) and initial[0] > 0):
            raise ValueError(
                f"the first param group's lr must be a finite number > 0 (the other groups keep their "
                f"ratio to it), got {initial[0]!r}"
            )
        self.schedule = schedule
        self.steps_per_epoch = steps_per_epoch
        self.ratios = [1.0 if lr == initial[0] else lr / initial[0] for lr in initial]
        super().__init__(optimizer)
        self.base_lrs = [schedule.base_lr * ratio for ratio in self.ratios]

    def _position(self) -> float:
        k = self.last_epoch
        return k if self.steps_per_epoch is None else k / self.steps_per_epoch

    def get_lr(self) -> list[float]:  # type: ignore[override]
        lr = self.schedule(self._position())
        return [lr if ratio == 1.0 else lr * ratio for ratio in self.ratios]

    _get_closed_form_lr = get_lr  # step(epoch) (deprecated in torch) is exact too

    def state_dict(self) -> dict[str, Any]:
        """The counters torch keeps plus ``steps_per_epoch``; no optimizer, no schedule."""
        return {
            key: value
            for key, value in self.__dict__.items()
            if key not in ("optimizer", "schedule")
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the step count; the next ``.step()`` continues the saved run.

        Raises:
            ValueError: ``last_epoch`` is missing; the state was saved with a different
                ``steps_per_epoch`` (the same step count would then mean another position in
                the schedule) or for another number of param groups.
        """
        require_keys(state_dict, ("last_epoch",), "as_lr_scheduler")
        saved = state_dict.get("steps_per_epoch", self.steps_per_epoch)
        if saved != self.steps_per_epoch:
            raise ValueError(
                f"state_dict was saved with steps_per_epoch={saved!r}, this scheduler has "
                f"steps_per_epoch={self.steps_per_epoch!r}"
            )
        ratios = state_dict.get("ratios", self.ratios)
        if not isinstance(ratios, list) or len(ratios) != len(self.ratios):
            raise ValueError(
                f"state_dict holds LR ratios for {len(ratios) if isinstance(ratios, list) else ratios!r} param "
                f"groups, this optimizer has {len(self.ratios)}"
            )
        state = {
            key: value for key, value in state_dict.items() if key not in ("optimizer", "schedule")
        }
        self.__dict__.update(state)
