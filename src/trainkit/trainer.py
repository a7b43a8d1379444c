"""A thin reference Trainer: the reference's proposed loop, built from trainkit's components.

``fit`` reads like the reference's ``train()``; the step is :class:`~trainkit.train_step.TrainStep`
(eager, or captured in CUDA graphs on CUDA), evaluation :class:`~trainkit.evaluation.EvalStep`;
side jobs live in their own modules (loggers, nonfinite, stopping, progress, _training_state,
distributed, interrupt). See docs/trainer.md.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from trainkit import distributed
from trainkit._training_state import (
    load_best,
    load_resume_state,
    load_training_state,
    renew_last,
    training_state,
)
from trainkit._validate import check_choice, check_int
from trainkit.amp import AMPStep
from trainkit.batching import set_loader_epoch
from trainkit.checkpoint import CheckpointError, CheckpointManager, load_model_state
from trainkit.evaluation import EvalStep, ForwardFn, default_forward
from trainkit.interrupt import InterruptHandler, TrainingInterrupted
from trainkit.loggers import Logger, restore_log
from trainkit.metrics import RankingMetrics
from trainkit.nonfinite import NonFiniteLossError, NonFinitePolicy
from trainkit.progress import TrainingProgress
from trainkit.records import describe_epoch, epoch_record
from trainkit.schedule import WarmupCosineSchedule
from trainkit.stopping import BestValue, RunningAverage, Selector, feed
from trainkit.train_step import CaptureError, TrainStep, use_eager_optimizer

__all__ = [
    "NonFiniteLossError",
    "Trainer",
    "TrainingInterrupted",
    "capture_reason",
    "default_forward",
]

logger = logging.getLogger("trainkit.trainer")

_CAPTURE_MODES = ("auto", True, False)


def capture_reason(capture: bool | str, device: torch.device) -> str | None:
    """Why the Trainer does not try capture at all (before model and optimizer); None: it may.

    Args:
        capture: ``"auto"``, True or False.
        device: The training device.
    """
    if capture is False:
        return "capture=False"
    if device.type != "cuda":
        return f"device is {device.type}: a CUDA graph needs CUDA"
    return None


def _capture_or_reason(
    step: TrainStep | EvalStep, loader: Iterable[Any], ruled_out: str | None, empty: str
) -> str | None:
    """Capture ``step`` from ``loader``'s first batch; None when it is captured, else why not.

    Under torchrun every rank reaches the same outcome (one collective whenever capture was
    not ruled out for all ranks alike): if any rank could not capture, all drop their graphs,
    so the ranks' collectives keep matching.

    Args:
        step: The training or evaluation step.
        loader: Its loader (checked for static shapes; its first batch is the example).
        ruled_out: A reason that holds on every rank before looking (``capture_reason``).
        empty: The reason to give for an empty loader.
    """
    if ruled_out is not None:
        return ruled_out
    reason = step.why_not(loader=loader)
    example = next(iter(loader), None) if reason is None else None
    if reason is None and example is None:
        reason = empty
    if reason is None:
        try:
            step.capture(example)
        except CaptureError as exc:
            reason = str(exc)
    if not all(distributed.all_gather_object(reason is None)):
        reason = reason or "the capture failed on another rank"
        step.drop_graphs()
    return reason


def _acc1_text(result: dict[str, Any] | None) -> str:
    if result is None or "acc@1" not in result:
        return "-"
    return f"{result['acc@1']:.2f}%"


def _with_last(items: Iterable[Any]) -> Iterator[tuple[int, Any, bool]]:
    """``(index, item, is_last)`` for each item, looking one item ahead (any iterable)."""
    iterator = iter(items)
    try:
        current = next(iterator)
    except StopIteration:
        return
    index = 0
    for following in iterator:
        yield index, current, False
        current = following
        index += 1
    yield index, current, True


class Trainer:
    """The reference's epoch loop from trainkit's components (docs/trainer.md has the details).

    Args:
        model, optimizer: ``model`` returns scores (log-probabilities ``[B, V]`` by default) through ``forward``.
        loss_fn: ``loss_fn(scores, targets) -> scalar``, a mean over valid targets.
        train_loader, val_loader, test_loader: Iterables of batches; ``set_epoch(e)`` is called when they have it.
        epochs: Maximum number of epochs.
        schedule, per_step_schedule: LR as a function of the epoch (or, per step, ``epoch + step/steps``).
        amp: Precision, clipping and gradient accumulation (default ``AMPStep(optimizer, "fp32")``);
            they hold on the eager and the captured step alike.
        capture: ``"auto"``: on CUDA, capture step and evaluation in CUDA graphs (docs/captured.md)
            where possible, else eager with one log line saying why; True: capture or raise
            ``CaptureError``; False: eager.
        selector: Model selection (``EarlyStopper``, ``RunningAverage``, default ``BestValue()``).
        checkpoints, best_name, epoch_checkpoints: Where ``best_name``/``last.pt`` go (None: nowhere);
            ``best_name`` must be pinned in the manager; also rotating ``epoch-NNNN.pt`` files.
        forward, metrics: ``forward(model, batch, device) -> (scores, targets)`` (``scores`` may be any
            object ``loss_fn`` and the metrics take); ``metrics(device=...)`` builds the evaluation metrics.
        device, ignore_index: Where the model runs; a padding target id left out of the evaluation's
            loss weights and metrics (default None: every target counts).
        nonfinite, max_nonfinite_steps: ``"raise"`` or ``"skip"`` a non-finite update step, and the skip cap.
        log_every, loggers, progress: Update steps between step records (and an epoch's last);
            where records go; a tqdm bar.
        config, on_epoch_end: Plain data saved in checkpoints; called with each epoch's record.
        ema: An EMA (``update()``, ``module``, ``state_dict``): updated once per update step; its
            weights are evaluated and saved.

    Raises:
        ValueError: bad ``epochs``, ``log_every``, ``nonfinite``, ``max_nonfinite_steps``, a
            ``best_name`` that ``checkpoints`` would rotate away, or a bad ``capture``.
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
        ignore_index: int | None = None,
        nonfinite: str = "raise",
        max_nonfinite_steps: int = 100,
        log_every: int = 50,
        loggers: Sequence[Logger] = (),
        progress: bool = True,
        config: dict[str, Any] | None = None,
        on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
        ema: Any = None,
        capture: bool | str = "auto",
    ) -> None:
        self.epochs = check_int("epochs", epochs, minimum=1)
        self.log_every = check_int("log_every", log_every, minimum=1)
        if checkpoints is not None and best_name not in checkpoints.pinned:
            raise ValueError(
                f"best_name {best_name!r} would be rotated away: pin it, "
                f"CheckpointManager(..., pinned=({best_name!r},))"
            )
        self.capture = check_choice("capture", capture, _CAPTURE_MODES)
        self.nonfinite = NonFinitePolicy(nonfinite, max_nonfinite_steps)
        self.device = torch.device(device)
        self.capture_reason = capture_reason(capture, self.device)
        if capture is True and self.capture_reason is not None:
            raise CaptureError(f"capture=True, but {self.capture_reason}")
        self.model, self.dist = distributed.prepare(
            model, self.device, train_loader, val_loader, test_loader
        )
        self.optimizer = optimizer
        self.loss_fn = loss_fn
        self.forward = forward
        self.metrics = metrics
        self.train_loader = train_loader
        self.val_loader = val_loader
        self.test_loader = test_loader
        self.schedule = schedule
        self.per_step_schedule = per_step_schedule
        self.amp = amp if amp is not None else AMPStep(optimizer, precision="fp32")
        self.selector: Selector = selector if selector is not None else BestValue()
        self.checkpoints = checkpoints
        self.best_name = best_name
        self.epoch_checkpoints = bool(epoch_checkpoints)
        self.ignore_index = ignore_index
        self.on_epoch_end = on_epoch_end
        main = self.dist.is_main  # only rank 0 logs and writes files
        self.loggers = list(loggers) if main else []
        self.show_progress = progress and main
        self.config = dict(config or {})
        self.progress = TrainingProgress()
        self.interrupts = InterruptHandler()
        self.step = TrainStep(
            self.model, optimizer, loss_fn, forward, self.amp, ema=ema, nonfinite=nonfinite
        )
        self._step_decided = False
        self._eval_steps: dict[tuple[int, int], EvalStep] = {}
        self.capture_seconds = 0.0

    @property
    def ema(self) -> Any:
        """The EMA the step updates once per update step (None: none); settable."""
        return self.step.ema

    @ema.setter
    def ema(self, value: Any) -> None:
        self.step.ema = value

    # ------------------------------------------------------------------------ the loop
    def fit(self) -> dict[str, Any]:
        """Train until ``epochs`` or the selector's stop, then evaluate the best model.

        Returns:
            ``{"validation", "test", "best_epoch", "epochs_run", "stopped_early", "fp16_overflow_steps",
            "nonfinite_steps", "train_seconds", "history", "evaluated", "capture"}`` (what weights were
            evaluated; ``capture``: which step ran, why, capture seconds).

        Raises:
            NonFiniteLossError: a non-finite update step (see ``nonfinite``).
            TrainingInterrupted: SIGINT/SIGTERM, once ``last.pt`` is written.
        """
        start = time.perf_counter()
        p = self.progress
        with self.interrupts:  # a signal: finish the step, save last.pt, raise TrainingInterrupted
            while p.epoch < self.epochs and not p.stopped_early:
                epoch_start = time.perf_counter()
                lr = float(self.optimizer.param_groups[0]["lr"])
                if self.schedule is not None:
                    lr = self.schedule.apply(self.optimizer, p.epoch)
                train = self.train_epoch()
                val = self.evaluate(self.val_loader)
                p.epoch += 1
                improved = feed(self.selector, val["loss"], val["batch_losses"])
                improved = distributed.broadcast_object(improved)  # rank 0 decides
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
                # before saving: the checkpoint's history includes this epoch, and a resume
                # from this epoch's checkpoint logs it once
                p.history.append(record)
                self._log(record)
                record["checkpoint_seconds"] = self._save_epoch_checkpoints(improved)
                if self.on_epoch_end is not None:
                    self.on_epoch_end(record)
                if p.stopped_early:
                    self._log_early_stop()
                self._stop_if_interrupted(saved=True)
            return self.final_evaluation(time.perf_counter() - start)

    def _log_early_stop(self) -> None:
        selector = self.selector
        patience = getattr(selector, "patience", None)
        rule = f" (patience {patience})" if patience is not None else ""
        logger.info(
            "Stopping early after epoch %d of %d: no improvement for %s epochs%s; best epoch %s",
            self.progress.epoch,
            self.epochs,
            getattr(selector, "counter", "?"),
            rule,
            selector.best_epoch,
        )

    def train_epoch(self) -> dict[str, float]:
        """Train epoch ``progress.epoch`` (0-based), from ``progress.step_in_epoch`` after a resume.

        Returns: ``{"loss", "grad_norm", "fp16_overflow_steps", "nonfinite_steps"}`` of the whole
        epoch: the mean finite micro-batch loss, the mean finite gradient norm over update
        steps, and the update steps the GradScaler or the non-finite rule skipped.
        """
        p = self.progress
        self.model.train()
        set_loader_epoch(self.train_loader, p.epoch)
        steps = len(self.train_loader) if isinstance(self.train_loader, Sized) else None
        stats = self.step.stats
        if p.epoch_sums is None:
            stats.reset()
        else:  # resumed mid-epoch
            stats.load(p.epoch_sums)
        p.epoch_sums = stats.values  # the same tensor: a checkpoint saves the live counters
        self._decide_capture()
        first = p.step_in_epoch
        bar = tqdm(
            total=steps,
            initial=first,
            desc=f"Epoch {p.epoch + 1}/{self.epochs}",
            disable=not self.show_progress,
            leave=True,
            mininterval=1.0,
        )
        for index, batch, is_last in _with_last(self.train_loader):
            if index < first:  # resuming mid-epoch: trained on already
                continue
            if self.schedule is not None and self.per_step_schedule and steps:
                self.schedule.apply(self.optimizer, p.epoch + index / steps)
            updated = self.step(batch, ends_epoch=is_last)
            p.step_in_epoch = index + 1
            bar.update(1)
            if not updated:  # mid-accumulation: no checkpoint, no signal handling yet
                continue
            p.global_step += 1
            at_log_step = p.global_step % self.log_every == 0 or is_last
            if at_log_step:
                self._log_step(bar)
            if self.checkpoints is not None and self.dist.is_main and self.checkpoints.due():
                self.checkpoints.save(f"step-{p.global_step:08d}.pt", self.state_dict())
            # under torchrun the ranks agree on signals at log steps
            if at_log_step or not self.dist.enabled:
                self._stop_if_interrupted(saved=False)
        bar.close()
        counts = self._check_nonfinite()
        reduced = torch.tensor(
            [
                counts["loss_sum"],
                counts["finite_micro_batches"],
                counts["grad_norm_sum"],
                counts["finite_norm_updates"],
            ],
            dtype=torch.float64,
            device=self.device,
        )
        loss_sum, finite_batches, norm_sum, finite_norms = distributed.all_reduce_sum(
            reduced
        ).tolist()
        overflow = int(counts["fp16_overflows"])  # the same on every rank
        nonfinite = int(counts["nonfinite_steps"])
        p.step_in_epoch = 0
        p.epoch_sums = None
        p.fp16_overflow_steps += overflow
        p.nonfinite_steps += nonfinite
        return {
            "loss": loss_sum / finite_batches if finite_batches else float("nan"),
            "grad_norm": norm_sum / finite_norms if finite_norms else float("nan"),
            "fp16_overflow_steps": overflow,
            "nonfinite_steps": nonfinite,
        }

    def _log_step(self, bar: Any) -> None:
        """At a log step: apply the non-finite rule, show and log the running loss (one sync)."""
        p = self.progress
        counts = self._check_nonfinite()
        finite = counts["finite_micro_batches"]
        running = counts["loss_sum"] / finite if finite else float("nan")
        bar.set_postfix(loss=f"{running:.4f}")
        self._log(
            {
                "step": p.global_step,
                "epoch": p.epoch + 1,
                "step_train_loss": running,
                "step_lr": float(self.optimizer.param_groups[0]["lr"]),
            }
        )

    def _decide_capture(self) -> None:
        """Once, at the first epoch: capture the step where possible, log which step trains."""
        if self._step_decided:
            return
        self._step_decided = True
        reason = _capture_or_reason(
            self.step, self.train_loader, self.capture_reason, "the training loader is empty"
        )
        if reason is not None:
            self.capture_reason = reason
            if self.capture is True:
                raise CaptureError(f"capture=True, but {reason}")
            logger.info("training step: eager (%s)", reason)
            return
        self.capture_seconds += self.step.capture_seconds
        logger.info(
            "training step: captured in CUDA graphs (%s, accumulation %d, capture %.2f s)",
            self.amp.precision,
            self.amp.accumulation_steps,
            self.step.capture_seconds,
        )

    def evaluate(self, loader: Iterable[Any]) -> dict[str, Any]:
        """Loss, metrics and batch losses of the current weights (the EMA's when ``ema`` is set).

        Runs :class:`~trainkit.evaluation.EvalStep`, captured on CUDA where the training step
        may be (one graph per model and loader, built on first use; else eager, with the
        reason logged once unless it is the training step's).
        """
        model = self.ema.module if self.ema is not None else self.model
        step = self._eval_step(model, loader)
        step.reset()
        for batch in loader:
            step.run(batch)
        return step.result()

    def _eval_step(self, model: nn.Module, loader: Iterable[Any]) -> EvalStep:
        key = (id(model), id(loader))
        if key in self._eval_steps:
            return self._eval_steps[key]
        step = EvalStep(
            model,
            self.loss_fn,
            metrics=self.metrics(device=self.device),
            device=self.device,
            forward=self.forward,
            ignore_index=self.ignore_index,
            autocast=functools.partial(self.amp.autocast, cache_enabled=False),
        )
        if not hasattr(step.metrics, "reset"):  # a fresh metrics object each pass, eager
            return step
        self._eval_steps[key] = step
        ruled_out = capture_reason(self.capture, self.device)
        reason = _capture_or_reason(step, loader, ruled_out, "the loader is empty")
        if step.captured:
            self.capture_seconds += step.capture_seconds
        elif reason != self.capture_reason:  # the training step's reason is logged already
            logger.info("evaluation: eager (%s)", reason)
        return step

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
        validation = self._final_metrics(self.val_loader)
        test = self._final_metrics(self.test_loader)
        logger.info(
            "Best model (%s) | Val Acc@1: %s | Test Acc@1: %s",
            evaluated,
            _acc1_text(validation),
            _acc1_text(test),
        )
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
            "capture": {
                "step": "captured" if self.step.captured else "eager",
                "reason": self.capture_reason,
                "seconds": self.capture_seconds,
            },
        }

    def _final_metrics(self, loader: Iterable[Any] | None) -> dict[str, Any] | None:
        if loader is None:
            return None
        result = self.evaluate(loader)
        del result["batch_losses"]
        return result

    def _load_weights(self, state: dict[str, Any]) -> None:
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        load_model_state(distributed.unwrap(self.model), state["model"])

    # ------------------------------------------------------------ selection and saving
    def _save_epoch_checkpoints(self, improved: bool) -> float:
        names = ["last.pt"]
        if self.epoch_checkpoints:
            names.insert(0, f"epoch-{self.progress.epoch:04d}.pt")
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

            def save_all() -> None:
                state = self.state_dict()
                for name in names:
                    manager.save(name, state)

            distributed.on_main(save_all, CheckpointError)
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

    def _check_nonfinite(self) -> dict[str, float]:
        """At a sync point (log steps, epoch end, a signal): read the step's counters once and
        apply the non-finite rule. Under torchrun every rank reaches the same decision.

        Returns:
            The counters (:meth:`~trainkit.train_step.StepStats.read`).
        """
        p = self.progress
        counts = self.step.stats.read()
        epoch_count = int(counts["nonfinite_steps"])
        first = int(counts["first_nonfinite"])
        first_step = first + 1 if first >= 0 else None
        if self.dist.enabled:
            bad = torch.tensor([float(epoch_count)], device=self.device)
            epoch_count = max(epoch_count, int(distributed.all_reduce_sum(bad).item() > 0))
        self.nonfinite.check(
            epoch_count,
            first_step,
            epoch=p.epoch + 1,
            run_total=p.nonfinite_steps + epoch_count,
            last_good=self._last_good,
        )
        return counts

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
        """``{name: component.state_dict()}``, the progress counters, the RNG states and ``config``.

        No side effects: taken between update steps, it holds everything an exact resume needs
        (no gradient is pending there).
        """
        return training_state(self._parts(), self.progress, self.config)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (schedule excluded); :func:`~trainkit._training_state.load_training_state`
        checks every block first and raises ``ValueError`` (one line) for a missing or unfitting one."""
        load_training_state(self._parts(), self.progress, state, self.device)
        use_eager_optimizer(self.optimizer)  # a captured run's state on CPU (docs/captured.md)

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
