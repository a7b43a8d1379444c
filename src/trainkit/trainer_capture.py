"""The Trainer's captured path: whether to capture, and the captured step's bookkeeping.

On CUDA the Trainer trains with a :class:`~trainkit.captured.CapturedStep` and evaluates with
a :class:`~trainkit.captured_eval.CapturedEval` (one CUDA graph per step / batch); anywhere else,
or when capture cannot be used, it keeps the eager ``AMPStep`` path and logs one line with the
reason. Both are built lazily, at first use, so a resume's ``load_state_dict`` comes first
(docs/captured.md, "In the Trainer").
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainkit import distributed as trainkit_distributed
from trainkit.captured import CapturedStep, CaptureError
from trainkit.captured_eval import CapturedEval
from trainkit.evaluation import evaluate
from trainkit.nonfinite import NonFiniteLossError, NonFinitePolicy
from trainkit.progress import TrainingProgress

__all__ = ["TrainerCapture", "capture_reason", "eager_optimizer"]

log = logging.getLogger("trainkit.trainer")

_MODES = ("auto", True, False)


def capture_reason(capture: bool | str, device: torch.device) -> str | None:
    """Why the Trainer does not try capture at all (before looking at model and optimizer); None: it may.

    Under torchrun the captured step all-reduces the gradients inside its graph
    (:class:`CapturedStep`, docs/captured.md); captured evaluation reduces its sums after
    the pass, as the eager one does.

    Args:
        capture: ``"auto"``, True or False.
        device: The training device.
    """
    if capture is False:
        return "capture=False"
    if device.type != "cuda":
        return f"device is {device.type}: a CUDA graph needs CUDA"
    return None


def eager_optimizer(optimizer: torch.optim.Optimizer) -> None:
    """Make a loaded captured run's optimizer state usable on the eager path, in place.

    A checkpoint of a captured run holds ``capturable=True`` param groups with the LR as a
    tensor. On CPU, where torch's Adam has no capturable mode, such a group is turned back
    into a plain one (``capturable=False``, LR a float); on CUDA it stays as it is (the eager
    step runs a capturable optimizer as well).
    """
    for group in optimizer.param_groups:
        if group.get("capturable") and any(p.device.type == "cpu" for p in group["params"]):
            group["capturable"] = False
            if isinstance(group["lr"], torch.Tensor):
                group["lr"] = float(group["lr"])


class _CapturedTrainStep:
    """``step(batch, sums, index) -> True``: the Trainer's step signature over a :class:`CapturedStep`."""

    def __init__(self, step: CapturedStep, progress: TrainingProgress, ema: Any) -> None:
        self.step, self.progress, self.ema = step, progress, ema

    def __call__(self, batch: Any, sums: torch.Tensor, index: int) -> bool:
        self.step.run(batch)  # copy into the static buffers + replay: no host sync
        if self.ema is not None:
            self.ema.update()
        self.progress.global_step += 1  # non-finite steps included (docs/captured.md)
        return True


class TrainerCapture:
    """The Trainer's choice between the captured and the eager step, made once and logged once.

    Args:
        capture: ``"auto"`` (capture when possible, else eager with a one-line reason in the
            log), True (capture or raise ``CaptureError`` with the reason) or False (eager).
        device: The training device.
        nonfinite: The Trainer's non-finite policy, ``"raise"`` or ``"skip"``.

    Attributes:
        reason: Why the step is eager (None while capture is possible or in use).
        step: The built :class:`CapturedStep`, or None.
        seconds: Wall time spent capturing (training step and evaluation graphs).

    Raises:
        ValueError: ``capture`` is not ``"auto"``, True or False.
        CaptureError: ``capture=True`` and the device or torchrun rules it out.
    """

    def __init__(self, capture: bool | str, device: torch.device, nonfinite: str = "raise") -> None:
        if not any(
            capture is mode or (isinstance(capture, str) and capture == mode) for mode in _MODES
        ):
            raise ValueError(f"capture must be 'auto', True or False, got {capture!r}")
        self.capture, self.nonfinite = capture, nonfinite
        self.reason = self._ruled_out = capture_reason(capture, device)
        self._fail_if_required()
        self.step: CapturedStep | None = None
        self.train_step: _CapturedTrainStep | None = None
        self.seconds = 0.0
        self._evals: dict[tuple[int, int], CapturedEval | None] = {}
        self._decided = False

    def _fail_if_required(self) -> None:
        if self.capture is True and self.reason is not None:
            raise CaptureError(f"capture=True, but {self.reason}")

    def training(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: Callable[..., torch.Tensor],
        forward: Callable[..., Any],
        loader: Iterable[Any],
        amp: Any,
        progress: TrainingProgress,
        ema: Any,
    ) -> _CapturedTrainStep | None:
        """The captured step (built on the first call, from the loader's first batch), or None: eager.

        Logs one line, on the first call: which step trains and why.

        Raises:
            CaptureError: ``capture=True`` and capture is impossible or failed.
        """
        if self._decided:
            return self.train_step
        self._decided = True
        if self.reason is None:
            self.reason = CapturedStep.why_not(
                model, optimizer, precision=amp.precision, nonfinite=self.nonfinite, loader=loader
            )
        first = next(iter(loader), None) if self.reason is None else None
        if self.reason is None and first is None:
            self.reason = "the training loader is empty"
        if self.reason is None:
            step, self.reason = CapturedStep.try_create(
                model,
                optimizer,
                loss_fn,
                forward,
                first,
                loader=loader,
                precision=amp.precision,
                max_grad_norm=amp.max_grad_norm,
                nonfinite=self.nonfinite,
            )
            if not all(trainkit_distributed.all_gather_object(step is not None)):
                # under torchrun every rank runs the same step, or their collectives would not match
                step, self.reason = None, self.reason or "the capture failed on another rank"
            if step is not None:
                self._adopt(step, amp, progress, ema)
                log.info(
                    "training step: captured in one CUDA graph (%s, capture %.2f s)",
                    step.precision,
                    step.capture_seconds,
                )
                return self.train_step
        self._fail_if_required()
        log.info("training step: eager (%s)", self.reason)
        return None

    def _adopt(self, step: CapturedStep, amp: Any, progress: TrainingProgress, ema: Any) -> None:
        if step.scaler is not None and getattr(amp, "scaler", None) is not None:
            step.scaler.load_state_dict(
                amp.scaler.state_dict()
            )  # in place: a resumed scale carries on
            amp.scaler = step.scaler  # the Trainer saves and loads the scaler the graph reads
        self.step, self.seconds = step, self.seconds + step.capture_seconds
        self.train_step = _CapturedTrainStep(step, progress, ema)

    def fold(self, sums: torch.Tensor | None) -> None:
        """Move the captured step's sums into the Trainer's ``[loss, grad norm, finite, overflow, non-finite]``."""
        if self.step is None or sums is None:
            return
        sums[:4] += self.step.sums[[0, 1, 3, 2]]  # device-side, no sync
        self.step.reset_sums()

    def check_nonfinite(
        self,
        policy: NonFinitePolicy,
        progress: TrainingProgress,
        sums: torch.Tensor | None,
        last_good: Callable[[], Path | None],
    ) -> None:
        """Read the captured step's non-finite record (one host sync) and apply ``policy``.

        ``"raise"`` names the epoch and the first bad step; ``"skip"`` counts the dropped
        steps and raises past ``max_nonfinite_steps`` (up to ``log_every`` steps late).

        Raises:
            NonFiniteLossError: as above.
        """
        if self.step is None:
            return
        self.fold(sums)
        count, first, steps = self.step.pop_nonfinite()
        if not count:
            return
        epoch, where = progress.epoch + 1, progress.step_in_epoch - steps + (first or 0) + 1
        if policy.mode == "raise":
            raise NonFiniteLossError(
                f"Loss is not finite. Stopping. (epoch {epoch}, step {where}; "
                f"last good checkpoint: {last_good() or 'none'})"
            )
        if sums is not None:
            sums[4] += count
        progress.nonfinite_steps += count
        policy.count_skipped(progress.nonfinite_steps, epoch, progress.step_in_epoch)

    def evaluate(
        self,
        model: nn.Module,
        loader: Iterable[Any],
        loss_fn: Callable[..., torch.Tensor],
        *,
        metrics: Callable[..., Any],
        device: torch.device,
        forward: Callable[..., Any],
        ignore_index: int | None,
        autocast: Callable[[], Any],
        precision: str,
    ) -> dict[str, Any]:
        """What :func:`trainkit.evaluation.evaluate` returns, from a :class:`CapturedEval` where one can be built.

        One graph per (model, loader), built from the loader's first batch on first use;
        where none can be built the eager pass runs and the reason is logged once (unless
        it is the training step's). ``capture=True`` does not raise here.
        """
        key = (id(model), id(loader))
        if key not in self._evals:
            self._evals[key] = None
            reason = self._ruled_out or CapturedEval.why_not(model, loader=loader)
            first = next(iter(loader), None) if reason is None else None
            if reason is None and first is None:
                reason = "the loader is empty"
            if reason is None:  # under torchrun the wrapped module: evaluation needs no collective
                module = (
                    model.module
                    if isinstance(model, nn.parallel.DistributedDataParallel)
                    else model
                )
                self._evals[key], reason = CapturedEval.try_create(
                    module,
                    forward,
                    loss_fn,
                    first,
                    metrics=metrics(device=device),
                    precision=precision,
                    ignore_index=ignore_index,
                )
            if self._ruled_out is None and not all(
                trainkit_distributed.all_gather_object(self._evals[key] is not None)
            ):
                # under torchrun every rank takes the same path, or their collectives below would not match
                self._evals[key], reason = None, reason or "the capture failed on another rank"
            captured = self._evals[key]
            if captured is not None:
                self.seconds += captured.capture_seconds
            elif reason != self.reason:  # the training step's reason is logged already
                log.info("evaluation: eager (%s)", reason)
        captured = self._evals[key]
        if captured is None:
            return evaluate(
                model,
                loader,
                loss_fn,
                metrics=metrics,
                device=device,
                forward=forward,
                ignore_index=ignore_index,
                autocast=autocast,
            )
        captured.reset()
        for batch in loader:
            captured.run(batch)
        sums, losses = captured.sums(), captured.batch_losses()
        # under torchrun, as trainkit.evaluation.evaluate: exact sums over the disjoint shards
        trainkit_distributed.all_reduce_sum(sums)
        losses = trainkit_distributed.all_gather_interleaved(losses)
        return {**captured.compute_from_sums(sums), "batch_losses": losses}

    def summary(self) -> dict[str, Any]:
        """``{"step": "captured" | "eager", "reason", "seconds"}`` for results and logs."""
        return {
            "step": "captured" if self.step is not None else "eager",
            "reason": self.reason,
            "seconds": self.seconds,
        }
