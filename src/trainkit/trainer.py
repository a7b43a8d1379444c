"""A thin reference Trainer: the reference's proposed loop, built from trainkit's components.

``fit`` reads like the reference's ``train()``; side jobs live in their own modules (loggers, nonfinite,
stopping, progress, evaluation, training_state, distributed, interrupt, trainer_capture). See docs/trainer.md.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence, Sized
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from trainkit import distributed
from trainkit.amp import AMPStep
from trainkit.batching import set_loader_epoch
from trainkit.checkpoint import CheckpointError, CheckpointManager, load_model_state
from trainkit.evaluation import ForwardFn, default_forward
from trainkit.interrupt import InterruptHandler, TrainingInterrupted
from trainkit.loggers import Logger, describe_epoch, epoch_record, restore_log
from trainkit.metrics import RankingMetrics
from trainkit.nonfinite import NonFiniteLossError, NonFinitePolicy
from trainkit.progress import TrainingProgress
from trainkit.schedule import WarmupCosineSchedule
from trainkit.stopping import BestValue, RunningAverage, Selector, feed
from trainkit.trainer_capture import TrainerCapture, eager_optimizer
from trainkit.training_state import (
    load_best,
    load_resume_state,
    load_training_state,
    renew_last,
    training_state,
)

__all__ = ["NonFiniteLossError", "Trainer", "TrainingInterrupted", "default_forward"]

logger = logging.getLogger("trainkit.trainer")


class Trainer:
    """The reference's epoch loop from trainkit's components (docs/trainer.md has the details).

    Args:
        model, optimizer: ``model`` returns scores (log-probabilities ``[B, V]`` by default) through ``forward``.
        loss_fn: ``loss_fn(scores, targets) -> scalar``, a mean over valid targets.
        train_loader, val_loader, test_loader: Iterables of batches; ``set_epoch(e)`` is called when they have it.
        epochs: Maximum number of epochs.
        schedule, per_step_schedule: LR as a function of the epoch (or, per step, ``epoch + step/steps``).
        amp: The eager step (default ``AMPStep(optimizer, "fp32")``); its precision and clipping hold when captured.
        capture: ``"auto"``: on CUDA, capture step and evaluation (docs/captured.md) where possible, else eager with
            one log line saying why; True: capture or raise ``CaptureError``; False: eager. ``step``: reserved (None).
        selector: Model selection (``EarlyStopper``, ``RunningAverage``, default ``BestValue()``).
        checkpoints, best_name, epoch_checkpoints: Where ``best_name``/``last.pt`` go (None: nowhere);
            ``best_name`` must be pinned in the manager; also rotating ``epoch-NNNN.pt`` files.
        forward, metrics: ``forward(model, batch, device) -> (scores, targets)`` (``scores`` may be any
            object ``loss_fn`` and the metrics take); ``metrics(device=...)`` builds the evaluation metrics.
        device, ignore_index: Where the model runs; the padding target id (None: none).
        nonfinite, max_nonfinite_steps: ``"raise"`` or ``"skip"`` a non-finite loss, and the skip cap.
        log_every, loggers, progress: Steps between step records; where records go; a tqdm bar.
        config, on_epoch_end: Plain data saved in checkpoints; called with each epoch's record.
        ema: An EMA (``update()``, ``module``, ``state_dict``): its weights are evaluated and saved.

    Raises:
        ValueError: bad ``epochs``, ``log_every``, ``nonfinite``, ``max_nonfinite_steps``, a
            ``best_name`` that ``checkpoints`` would rotate away, a ``step``, or a bad ``capture``.
        CaptureError: ``capture=True`` where capture is impossible (here or at the first epoch).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: Callable[[Any, torch.Tensor], torch.Tensor],
        train_loader: Iterable[Any],
        val_loader: Iterable[Any],
        *,
        epochs: int,
        test_loader: Iterable[Any] | None = None,
        schedule: WarmupCosineSchedule | None = None,
        per_step_schedule: bool = False,
        amp: AMPStep | None = None,
        selector: Selector | None = None,
        checkpoints: CheckpointManager | None = None,
        best_name: str = "best.pt",
        epoch_checkpoints: bool = False,
        forward: ForwardFn = default_forward,
        metrics: Callable[..., Any] = RankingMetrics,
        device: str | torch.device = "cpu",
        ignore_index: int | None = 0,
        nonfinite: str = "raise",
        max_nonfinite_steps: int = 100,
        log_every: int = 50,
        loggers: Sequence[Logger] = (),
        progress: bool = True,
        config: dict[str, Any] | None = None,
        on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
        ema: Any = None,
        step: Any = None,
        capture: bool | str = "auto",
    ) -> None:
        for name, value in (("epochs", epochs), ("log_every", log_every)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if checkpoints is not None and best_name not in checkpoints.pinned:
            raise ValueError(
                f"best_name {best_name!r} would be rotated away: pin it, "
                f"CheckpointManager(..., pinned=({best_name!r},))"
            )
        if step is not None:
            raise ValueError(f"step must be None (the eager AMPStep path), got {step!r}")
        self.nonfinite, self.device = (
            NonFinitePolicy(nonfinite, max_nonfinite_steps),
            torch.device(device),
        )
        self.model, self.dist = distributed.prepare(
            model, self.device, train_loader, val_loader, test_loader
        )
        self.capture = TrainerCapture(capture, self.device, self.nonfinite.mode)
        self.optimizer, self.loss_fn, self.forward, self.metrics = (
            optimizer,
            loss_fn,
            forward,
            metrics,
        )
        self.train_loader, self.val_loader, self.test_loader = train_loader, val_loader, test_loader
        self.epochs, self.schedule, self.per_step_schedule = epochs, schedule, per_step_schedule
        self.amp = amp if amp is not None else AMPStep(optimizer, precision="fp32")
        self.selector: Selector = selector if selector is not None else BestValue()
        self.checkpoints, self.best_name, self.epoch_checkpoints = (
            checkpoints,
            best_name,
            bool(epoch_checkpoints),
        )
        self.ignore_index, self.log_every, self.ema, self.on_epoch_end = (
            ignore_index,
            log_every,
            ema,
            on_epoch_end,
        )
        main = self.dist.is_main  # only rank 0 logs and writes files
        self.loggers, self.show_progress, self.config = (
            list(loggers) if main else [],
            progress and main,
            dict(config or {}),
        )
        self.progress, self.interrupts = TrainingProgress(), InterruptHandler()

    # ------------------------------------------------------------------------ the loop
    def fit(self) -> dict[str, Any]:
        """Train until ``epochs`` or the selector's stop, then evaluate the best model.

        Returns:
            ``{"validation", "test", "best_epoch", "epochs_run", "stopped_early", "fp16_overflow_steps",
            "nonfinite_steps", "train_seconds", "history", "evaluated", "capture"}`` (what weights were
            evaluated; ``TrainerCapture.summary()``: which step ran, why, capture seconds).

        Raises:
            NonFiniteLossError: a non-finite loss (see ``nonfinite``).
            TrainingInterrupted: SIGINT/SIGTERM, once ``last.pt`` is written.
        """
        start, p = time.perf_counter(), self.progress
        with self.interrupts:  # a signal: finish the step, save last.pt, raise TrainingInterrupted
            while p.epoch < self.epochs and not p.stopped_early:
                epoch_start, lr = time.perf_counter(), float(self.optimizer.param_groups[0]["lr"])
                lr = lr if self.schedule is None else self.schedule.apply(self.optimizer, p.epoch)
                train = self.train_epoch()
                val = self.evaluate(self.val_loader)
                p.epoch += 1
                improved = distributed.broadcast_object(
                    feed(self.selector, val["loss"], val["batch_losses"])
                )  # on rank 0
                p.stopped_early = distributed.broadcast_object(bool(self.selector.should_stop))
                average = self.selector.avg if isinstance(self.selector, RunningAverage) else None
                record = epoch_record(
                    p.epoch,
                    p.global_step,
                    lr,
                    train,
                    val,
                    improved,
                    time.perf_counter() - epoch_start,
                    average,
                )
                logger.info("%s", describe_epoch(record, self.epochs))
                p.history.append(
                    record
                )  # before saving: the checkpoint's history includes this epoch
                self._log(
                    record
                )  # before saving too: a resume from this epoch's checkpoint keeps it once
                record["checkpoint_seconds"] = self._save_epoch_checkpoints(improved)
                if self.on_epoch_end is not None:
                    self.on_epoch_end(record)
                self._stop_if_interrupted(saved=True)
            return self.final_evaluation(time.perf_counter() - start)

    def train_epoch(self) -> dict[str, float]:
        """Train epoch ``progress.epoch`` (0-based), from ``progress.step_in_epoch`` after a resume.

        Returns: ``{"loss", "grad_norm", "fp16_overflow_steps", "nonfinite_steps"}`` of the whole epoch.
        """
        p = self.progress
        self.model.train()
        set_loader_epoch(self.train_loader, p.epoch)
        steps = len(self.train_loader) if isinstance(self.train_loader, Sized) else None
        # [loss, grad norm, finite steps, fp16 overflows, non-finite steps] on the device; restored mid-epoch
        sums = p.epoch_sums = (
            torch.zeros(5, device=self.device) if p.epoch_sums is None else p.epoch_sums
        )
        first, train_step = (
            p.step_in_epoch,
            self.capture.training(  # None: eager (logged once with the reason)
                self.model,
                self.optimizer,
                self.loss_fn,
                self.forward,
                self.train_loader,
                self.amp,
                p,
                self.ema,
            )
            or self._train_step,
        )
        bar = tqdm(
            total=steps,
            initial=first,
            desc=f"Epoch {p.epoch + 1}",
            disable=not self.show_progress,
            leave=False,
            mininterval=1.0,
        )
        for index, batch in enumerate(self.train_loader):
            if index < first:  # resuming mid-epoch: trained on already
                continue
            if self.schedule is not None and self.per_step_schedule and steps:
                self.schedule.apply(self.optimizer, p.epoch + index / steps)
            stepped = train_step(batch, sums, index + 1)
            p.step_in_epoch = index + 1
            if not stepped:
                continue
            bar.update(1)
            at_log_step = (index + 1) % self.log_every == 0
            if at_log_step:
                self._check_nonfinite()
                running = (sums[0] / sums[2].clamp(min=1)).item()
                bar.set_postfix(loss=f"{running:.4f}")
                self._log(
                    {
                        "step": p.global_step,
                        "epoch": p.epoch + 1,
                        "step_train_loss": running,
                        "step_lr": float(self.optimizer.param_groups[0]["lr"]),
                    }
                )
            if self.checkpoints is not None and self.dist.is_main and self.checkpoints.due():
                self.checkpoints.save(f"step-{p.global_step:08d}.pt", self.state_dict())
            if (
                at_log_step or not self.dist.enabled
            ):  # under torchrun the ranks agree on signals at log steps
                self._stop_if_interrupted(saved=False)
        bar.close()
        self._check_nonfinite()
        loss, grad_norm, count = distributed.all_reduce_sum(sums[:3].clone()).tolist()
        overflow, nonfinite = (int(v) for v in sums[3:].tolist())  # the same on every rank
        p.step_in_epoch, p.epoch_sums = 0, None
        p.fp16_overflow_steps += overflow
        return {
            "loss": loss / count if count else float("nan"),
            "grad_norm": grad_norm / count if count else float("nan"),
            "fp16_overflow_steps": overflow,
            "nonfinite_steps": nonfinite,
        }

    def _train_step(self, batch: Any, sums: torch.Tensor, step: int) -> bool:
        """One optimizer step (sums updated on the device); False when dropped for a non-finite loss."""
        p = self.progress
        with self.amp.autocast():
            scores, targets = self.forward(self.model, batch, self.device)
            loss = self.loss_fn(scores, targets)
        detached = loss.detach().float()
        finite = torch.isfinite(detached)
        if self.nonfinite.skip(finite, step):  # "skip": a host sync per step, by the user's choice
            self.optimizer.zero_grad(set_to_none=True)
            sums[4] += 1
            p.nonfinite_steps += 1
            self.nonfinite.count_skipped(p.nonfinite_steps, p.epoch + 1, step)
            return False
        info = self.amp.step(loss)
        if self.ema is not None:
            self.ema.update()
        grad_norm = torch.where(torch.isfinite(info.grad_norm), info.grad_norm.float(), 0.0)
        sums[:3] += torch.stack([torch.where(finite, detached, 0.0), grad_norm, finite.float()])
        if info.found_inf is not None:  # fp16: the GradScaler skipped this update
            sums[3] += (info.found_inf > 0).float()
        p.global_step += 1
        return True

    def evaluate(self, loader: Iterable[Any]) -> dict[str, Any]:
        """:func:`trainkit.evaluation.evaluate` of the current weights (the EMA's when ``ema`` is set), captured on CUDA."""
        return self.capture.evaluate(
            self.ema.module if self.ema is not None else self.model,
            loader,
            self.loss_fn,
            metrics=self.metrics,
            device=self.device,
            forward=self.forward,
            ignore_index=self.ignore_index,
            autocast=self.amp.autocast,
            precision=self.amp.precision,
        )

    def final_evaluation(self, train_seconds: float = 0.0) -> dict[str, Any]:
        """Load the best model (its epoch checkpoint if it is damaged) and evaluate it on validation and test."""
        distributed.barrier()  # rank 0 has finished writing the best model
        p = self.progress
        evaluated = load_best(
            self.checkpoints,
            self.best_name,
            self.selector.best_epoch,
            self._load_weights,
            p.epoch,
            self.device,
        )
        validation, test = (
            {k: v for k, v in self.evaluate(loader).items() if k != "batch_losses"}
            if loader is not None
            else None
            for loader in (self.val_loader, self.test_loader)
        )
        acc = [
            "-" if r is None or "acc@1" not in r else f"{r['acc@1']:.2f}%"
            for r in (validation, test)
        ]
        logger.info("Best model (%s) | Val Acc@1: %s | Test Acc@1: %s", evaluated, *acc)
        return {
            "validation": validation,
            "test": test,
            "best_epoch": self.selector.best_epoch,
            "epochs_run": p.epoch,
            "stopped_early": p.stopped_early,
            "fp16_overflow_steps": p.fp16_overflow_steps,
            "nonfinite_steps": p.nonfinite_steps,
            "train_seconds": train_seconds,
            "history": p.history,
            "evaluated": evaluated,
            "capture": self.capture.summary(),
        }

    def _load_weights(self, state: dict[str, Any]) -> None:
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        load_model_state(distributed.unwrap(self.model), state["model"])

    # ------------------------------------------------------------ selection and saving
    def _save_epoch_checkpoints(self, improved: bool) -> float:
        names = [f"epoch-{self.progress.epoch:04d}.pt"] * self.epoch_checkpoints + ["last.pt"]
        weights = self.ema.module if self.ema is not None else self.model
        if improved and all(bool(torch.isfinite(t).all()) for t in weights.parameters()):
            names.insert(0, self.best_name)
        elif improved:
            logger.warning(
                "epoch %d improved but the weights are not finite: %s not written",
                self.progress.epoch,
                self.best_name,
            )
        return self._save(names)

    def _save(self, names: Sequence[str]) -> float:
        """Rank 0 writes the state under ``names``; under torchrun a failure raises on every rank."""
        start, manager = time.perf_counter(), self.checkpoints
        if manager is not None:
            distributed.on_main(
                lambda: [
                    manager.save(name, state) for state in [self.state_dict()] for name in names
                ],
                CheckpointError,
            )
        return time.perf_counter() - start

    def _stop_if_interrupted(self, saved: bool) -> None:
        """After SIGINT/SIGTERM: write ``last.pt`` (unless ``saved`` just now) and raise."""
        if (requested := self.interrupts.requested_anywhere(self.device)) is None:
            return
        self._check_nonfinite()
        if not saved:
            self._save(["last.pt"])
        where = (
            f"saved {self.checkpoints.directory / 'last.pt'}"
            if self.checkpoints
            else "nothing saved (no checkpoints)"
        )
        raise TrainingInterrupted(
            f"interrupted by {requested} at epoch {self.progress.epoch + (not saved)}, "
            f"step {self.progress.global_step}: {where}; resume to continue"
        )

    def _check_nonfinite(self) -> None:  # at a sync point: log steps, epoch end, a signal
        self.nonfinite.check(self.progress.epoch + 1, self._last_good, self.device)
        self.capture.check_nonfinite(
            self.nonfinite, self.progress, self.progress.epoch_sums, self._last_good
        )

    def _last_good(self) -> Path | None:
        return None if self.checkpoints is None else self.checkpoints.latest()

    def _log(self, record: dict[str, Any]) -> None:
        for sink in self.loggers:
            sink.log(record, self.progress.global_step)

    # --------------------------------------------------------------------------- state
    def _parts(self) -> dict[str, Any]:
        parts = {
            "model": distributed.unwrap(self.model),
            "optimizer": self.optimizer,
            "amp": self.amp,
            "selector": self.selector,
            "schedule": self.schedule,
            "checkpoints": self.checkpoints,
            "ema": self.ema,
        }
        return {name: part for name, part in parts.items() if part is not None}

    def state_dict(self) -> dict[str, Any]:
        """``{name: component.state_dict()}``, the progress counters, the RNG states and ``config``."""
        self.capture.fold(self.progress.epoch_sums)  # mid-epoch: the captured step's sums too
        return training_state(self._parts(), self.progress, self.config)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (schedule excluded); :func:`~trainkit.training_state.load_training_state`
        checks every block first and raises ``ValueError`` (one line) for a missing or unfitting one."""
        load_training_state(self._parts(), self.progress, state, self.device)
        eager_optimizer(
            self.optimizer
        )  # a captured run's state on CPU: capturable off (docs/captured.md)

    def resume(self, path: str | Path | None = None) -> Path:
        """Continue from ``path``, or the newest loadable checkpoint (falling back past damaged ones).

        Returns the file resumed from; the loggers are truncated to its step. Raises
        ``FileNotFoundError`` (none loads), ``CheckpointError`` or ``ValueError`` (docs/reliability.md).
        """
        chosen, state = load_resume_state(self.checkpoints, path, self.device)
        self.load_state_dict(state)  # checks every block first: a refused resume changes nothing
        if path is None:
            renew_last(self.checkpoints, chosen, state)
        for sink in self.loggers:
            restore_log(sink, self.progress.global_step, self.progress.history)
        logger.info(
            "Resumed from %s (epoch %d, step %d)",
            chosen,
            self.progress.epoch,
            self.progress.global_step,
        )
        return chosen
