"""A thin reference Trainer: the seed's proposed loop, built from trainkit's components.

Read :meth:`Trainer.fit` next to the seed's ``train()``: set the LR from the schedule,
train one epoch, validate, let the stopper (or the running average) pick the best model,
save ``best.pt`` and ``last.pt``, stop on patience; at the end evaluate ``best.pt`` on
validation and test. Differences from the seed, each deliberate:

- no host sync per step: the running loss lives on the device and is read every
  ``log_every`` steps (the seed calls ``loss.item()`` twice a step);
- a non-finite loss stops the run (``nonfinite="raise"``, the original pipeline's rule)
  or skips the step (``"skip"``, with a cap) instead of silently training on NaN;
- ``last.pt`` holds every piece of state (RNG included), so ``resume()`` continues exactly;
  rotating ``epoch-NNNN.pt`` copies (``epoch_checkpoints=True``) give it a predecessor to
  fall back on if it is damaged;
- the final evaluation always uses ``best.pt``, whether or not the run stopped early.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Sized
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from trainkit.amp import AMPStep
from trainkit import distributed
from trainkit.checkpoint import CheckpointError, CheckpointManager, load_checkpoint, load_model_state
from trainkit.metrics import RankingMetrics
from trainkit.rng import get_rng_state, set_rng_state
from trainkit.schedule import WarmupCosineSchedule
from trainkit.stopping import EarlyStopper, RunningAverage

__all__ = ["Trainer", "NonFiniteLossError", "seed_forward"]

logger = logging.getLogger("trainkit.trainer")

ForwardFn = Callable[[nn.Module, Any, torch.device], tuple[torch.Tensor, torch.Tensor]]


class NonFiniteLossError(RuntimeError):
    """Training produced a non-finite loss (the original pipeline's "Loss is not finite")."""


def seed_forward(model: nn.Module, batch: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The seed's batch format: ``(x, y, x_dict)`` -> ``(model(x, x_dict), y)``.

    Tensors are moved to ``device`` with ``non_blocking=True`` (a no-op when already there).
    Write your own function with this signature for any other batch format.
    """
    x, y, x_dict = batch
    x = x.to(device, non_blocking=True)
    y = y.to(device, non_blocking=True)
    x_dict = {key: value.to(device, non_blocking=True) for key, value in x_dict.items()}
    return model(x, x_dict), y


def _unwrap(model: nn.Module) -> nn.Module:
    """The module whose ``state_dict`` to save (undoes ``torch.compile`` and DDP wrappers)."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


class Trainer:
    """The seed's epoch loop with warmup+cosine LR, AMP, early stopping and checkpoints.

    Args:
        model: Returns log-probabilities ``[B, V]`` through ``forward``.
        optimizer: E.g. ``build_optimizer(model, "adamw", lr=6.5e-4)``.
        loss_fn: ``loss_fn(log_probs, targets) -> scalar``, a mean over valid targets.
        train_loader, val_loader: Iterables of batches (a ``DataLoader``, a
            :class:`~trainkit.batching.TensorBatches`, ...). ``set_epoch(e)`` is called on
            them (or on their sampler) when they have it.
        epochs: Maximum number of epochs.
        test_loader: Evaluated with ``best.pt`` at the end, if given.
        schedule: Learning rate as a function of the epoch; None keeps the optimizer's LR.
        per_step_schedule: Evaluate the schedule at ``epoch + step/steps_per_epoch`` each
            step instead of once per epoch (the seed's way).
        amp: The step; default ``AMPStep(optimizer, "fp32")`` without clipping.
        stopper: Early stopping on validation loss (the proposed rule).
        running_average: Best-model rule of the original pipeline (used when no stopper).
        checkpoints: Where ``best.pt``/``last.pt`` go; None saves nothing. If its
            ``every_seconds`` is set, time-based step checkpoints are written too.
        best_name: File name of the best model (``"bestmodel.pt"`` in the original recipe).
        epoch_checkpoints: Also save a rotating ``epoch-NNNN.pt`` (subject to ``keep_last``)
            at the end of each epoch, so that a damaged ``last.pt`` has a predecessor to fall
            back on (time-based step checkpoints, when configured, are such history too).
        forward: ``forward(model, batch, device) -> (log_probs, targets)``; the default
            handles the seed's ``(x, y, x_dict)`` batches.
        device: Where the model runs.
        ignore_index: Target id that is padding (excluded from metrics and loss weights).
        nonfinite: ``"raise"`` (stop, naming epoch/step and the last good checkpoint) or
            ``"skip"`` (drop the step; costs a host sync per step).
        max_skipped: With ``"skip"``, raise after this many skipped steps in a run.
        log_every: Steps between progress-bar updates (each one is a host sync).
        metrics_log: A JSON-lines file receiving one record per epoch.
        step_log: A JSON-lines file receiving ``{"step", "epoch", "step_train_loss",
            "step_lr"}`` every ``log_every`` steps.
        tensorboard_dir: Also write every scalar to TensorBoard there (same names as the
            JSON-lines keys, x-axis the global step) when ``tensorboard`` is installed; a
            resume hides the events logged after its checkpoint.
        progress: Show a tqdm progress bar.
        config: Plain data saved in every checkpoint (e.g. the resolved run config).
        on_epoch_end: Called with each epoch's record after it is logged.

    Raises:
        ValueError: bad ``epochs``, ``log_every``, ``nonfinite`` or ``max_skipped``.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        train_loader: Iterable[Any],
        val_loader: Iterable[Any],
        *,
        epochs: int,
        test_loader: Iterable[Any] | None = None,
        schedule: WarmupCosineSchedule | None = None,
        per_step_schedule: bool = False,
        amp: AMPStep | None = None,
        stopper: EarlyStopper | None = None,
        running_average: RunningAverage | None = None,
        checkpoints: CheckpointManager | None = None,
        best_name: str = "best.pt",
        epoch_checkpoints: bool = False,
        forward: ForwardFn = seed_forward,
        device: str | torch.device = "cpu",
        ignore_index: int | None = 0,
        nonfinite: str = "raise",
        max_skipped: int = 100,
        log_every: int = 50,
        metrics_log: str | Path | None = None,
        step_log: str | Path | None = None,
        tensorboard_dir: str | Path | None = None,
        progress: bool = True,
        config: dict[str, Any] | None = None,
        on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
        if isinstance(log_every, bool) or not isinstance(log_every, int) or log_every < 1:
            raise ValueError(f"log_every must be an int >= 1, got {log_every!r}")
        if nonfinite not in ("raise", "skip"):
            raise ValueError(f"nonfinite must be 'raise' or 'skip', got {nonfinite!r}")
        if isinstance(max_skipped, bool) or not isinstance(max_skipped, int) or max_skipped < 0:
            raise ValueError(f"max_skipped must be an int >= 0, got {max_skipped!r}")
        self.device = torch.device(device)
        # torchrun: join the process group, wrap the model in DDP, give each rank its shard
        self.dist = distributed.init_from_env(self.device.type)
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [self.device.index if self.device.index is not None else self.dist.local_rank]
            model = DistributedDataParallel(model, device_ids=device_ids if self.device.type == "cuda" else None)
            for loader, even in ((train_loader, True), (val_loader, False), (test_loader, False)):
                if loader is not None and hasattr(loader, "shard"):
                    loader.shard(self.dist.rank, self.dist.world_size, even=even)
        self.model = model
        self.optimizer = optimizer
        self.loss_fn = loss_fn
        self.train_loader = train_loader
        self.val_loader = val_loader
        self.test_loader = test_loader
        self.epochs = epochs
        self.schedule = schedule
        self.per_step_schedule = per_step_schedule
        self.amp = amp if amp is not None else AMPStep(optimizer, precision="fp32")
        self.stopper = stopper
        self.running_average = running_average
        self.checkpoints = checkpoints
        self.best_name = best_name
        if checkpoints is not None and best_name not in checkpoints.pinned:
            checkpoints.pinned = checkpoints.pinned | {best_name}  # never rotate the best model away
        self.epoch_checkpoints = bool(epoch_checkpoints)
        self.forward = forward
        self.ignore_index = ignore_index
        self.nonfinite = nonfinite
        self.max_skipped = max_skipped
        self.log_every = log_every
        main = self.dist.is_main  # only rank 0 logs and writes files
        self.metrics_log = None if metrics_log is None or not main else Path(metrics_log)
        self.step_log = None if step_log is None or not main else Path(step_log)
        self.tensorboard_dir = None if tensorboard_dir is None or not main else Path(tensorboard_dir)
        self.tensorboard = _tensorboard_writer(self.tensorboard_dir)
        self.progress = progress and main
        self.config = dict(config or {})
        self.on_epoch_end = on_epoch_end
        # progress through the run (all saved in checkpoints)
        self.epoch = 0  # completed epochs
        self.global_step = 0
        self.best_value = math.inf
        self.best_epoch = 0
        self.skipped_steps = 0
        self.nonfinite_steps = 0  # steps dropped under nonfinite="skip"
        self.history: list[dict[str, Any]] = []
        self.stopped_early = False
        # mid-epoch position (non-zero only while an epoch runs, or right after a resume)
        self._step_in_epoch = 0
        self._epoch_sums: torch.Tensor | None = None
        self._resume_step = 0
        self._resume_sums: torch.Tensor | None = None

    # ----------------------------------------------------------------- the loop
    def fit(self) -> dict[str, Any]:
        """Train until ``epochs`` or early stopping, then evaluate ``best.pt``.

        Returns:
            ``{"validation": {...}, "test": {...} | None, "best_epoch", "epochs_run",
            "stopped_early", "skipped_steps", "train_seconds", "history"}``.

        Raises:
            NonFiniteLossError: a non-finite loss under ``nonfinite="raise"``, or more than
                ``max_skipped`` skipped steps.
        """
        start = time.perf_counter()
        logger.info("Training for up to %d epochs (starting after epoch %d)", self.epochs, self.epoch)
        while self.epoch < self.epochs and not self.stopped_early:
            lr = self._set_epoch_lr()
            epoch_start = time.perf_counter()
            train = self.train_epoch()
            val = self.evaluate(self.val_loader)
            self.epoch += 1
            improved = distributed.broadcast_object(self._select(val["loss"]))  # decided once, on rank 0
            record = {
                "epoch": self.epoch,
                "lr": lr,
                "train_loss": train["loss"],
                "grad_norm": train["grad_norm"],
                "skipped_steps": train["skipped_steps"],
                "nonfinite_steps": train["nonfinite_steps"],
                "val_loss": val["loss"],
                **{f"val_{key}": value for key, value in val.items() if key != "loss"},
                "improved": improved,
                "epoch_seconds": time.perf_counter() - epoch_start,
            }
            skipped = "".join(
                f" | skipped: {train[key]} ({why})"
                for key, why in (("skipped_steps", "fp16 overflow"), ("nonfinite_steps", "non-finite loss"))
                if train[key]
            )
            logger.info(
                "Epoch %d/%d | LR: %.2e | Train: %.4f | Val: %.4f | Acc@1: %.2f%%%s%s",
                self.epoch, self.epochs, lr, train["loss"], val["loss"], val.get("acc@1", float("nan")), skipped,
                "  * new best" if improved else "",
            )
            self.stopped_early = distributed.broadcast_object(bool(self.stopper is not None and self.stopper.should_stop))
            self.history.append(record)  # before saving, so the checkpoint's history includes this epoch
            record["checkpoint_seconds"] = self._save_epoch_checkpoints(improved)
            self._write_metrics(record)
            if self.on_epoch_end is not None:
                self.on_epoch_end(record)
            if self.stopped_early:
                logger.info("Early stopping at epoch %d (best epoch %d)", self.epoch, self.best_epoch)
        train_seconds = time.perf_counter() - start
        return self.final_evaluation(train_seconds)

    def _set_epoch_lr(self) -> float:
        if self.schedule is None:
            return float(self.optimizer.param_groups[0]["lr"])
        return self.schedule.apply(self.optimizer, self.epoch)

    def train_epoch(self) -> dict[str, float]:
        """Train for one epoch (the epoch index is ``self.epoch``, 0-based).

        Returns:
            ``{"loss": mean train loss over finite steps, "grad_norm": mean pre-clip norm,
            "skipped_steps": updates the GradScaler skipped (fp16 overflow),
            "nonfinite_steps": steps dropped for a non-finite loss (nonfinite="skip")}``,
            all for this epoch.

        Raises:
            NonFiniteLossError: see :meth:`fit`.
        """
        self.model.train()
        _set_loader_epoch(self.train_loader, self.epoch)
        steps = len(self.train_loader) if isinstance(self.train_loader, Sized) else None
        zero = torch.zeros((), device=self.device)
        # [loss sum, grad-norm sum, scaler-skipped steps, finite steps], kept on the device
        sums = self._resume_sums if self._resume_sums is not None else torch.zeros(4, device=self.device)
        resume_step, self._resume_sums, self._resume_step = self._resume_step, None, 0
        self._epoch_sums = sums
        nonfinite_before = self.nonfinite_steps
        pending: list[torch.Tensor] = []  # per-step "loss was finite" flags since the last check
        bar = tqdm(total=steps, initial=resume_step, desc=f"Epoch {self.epoch + 1}", disable=not self.progress,
                   leave=False, mininterval=1.0)
        step = resume_step - 1
        for step, batch in enumerate(self.train_loader):
            if step < resume_step:  # resuming mid-epoch: these batches were trained on already
                continue
            self._step_in_epoch = step
            if self.schedule is not None and self.per_step_schedule and steps:
                self.schedule.apply(self.optimizer, self.epoch + step / steps)
            with self.amp.autocast():
                log_probs, targets = self.forward(self.model, batch, self.device)
                loss = self.loss_fn(log_probs, targets)
            detached = loss.detach().float()
            finite = torch.isfinite(detached)
            if self.nonfinite == "skip" and not self._all_ranks_finite(finite):  # host sync, by the user's choice
                self.nonfinite_steps += 1
                self._step_in_epoch = step + 1
                self.optimizer.zero_grad(set_to_none=True)
                if self.nonfinite_steps > self.max_skipped:
                    raise NonFiniteLossError(
                        f"Loss is not finite at epoch {self.epoch + 1}, step {step + 1}: "
                        f"{self.nonfinite_steps} steps skipped, more than max_skipped={self.max_skipped}"
                    )
                continue
            info = self.amp.step(loss)
            found_inf = zero if info.found_inf is None else (info.found_inf > 0).float()
            grad_norm = torch.where(torch.isfinite(info.grad_norm), info.grad_norm.float(), zero)
            sums += torch.stack([torch.where(finite, detached, zero), grad_norm, found_inf, finite.float()])
            pending.append(finite)
            self.global_step += 1
            self._step_in_epoch = step + 1
            bar.update(1)
            if (step + 1) % self.log_every == 0:
                self._check_finite(pending, step + 1 - len(pending))
                pending = []
                running = (sums[0] / sums[3].clamp(min=1)).item()
                bar.set_postfix(loss=f"{running:.4f}")
                self._write_step(running)
            if self.checkpoints is not None and self.dist.is_main and self.checkpoints.due():
                self.checkpoints.save(f"step-{self.global_step:08d}.pt", self.state_dict())
        bar.close()
        self._check_finite(pending, step + 1 - len(pending))
        self._step_in_epoch = 0
        self._epoch_sums = None
        loss_sum, grad_norm_sum, skipped, count = distributed.all_reduce_sum(sums.clone()).tolist()
        self.skipped_steps += int(skipped)
        return {
            "loss": loss_sum / count if count else float("nan"),
            "grad_norm": grad_norm_sum / count if count else float("nan"),
            "skipped_steps": int(skipped),
            "nonfinite_steps": self.nonfinite_steps - nonfinite_before,
        }

    def _all_ranks_finite(self, finite: torch.Tensor) -> bool:
        """Whether the step's loss is finite on every rank (one host sync, plus a collective)."""
        bad = (~finite).float().reshape(1)
        return not bool(distributed.all_reduce_sum(bad).item())

    def _check_finite(self, pending: list[torch.Tensor], first_step: int) -> None:
        """Raise if any pending step had a non-finite loss (one host sync for all of them)."""
        flags = torch.stack(pending) if pending else torch.ones(0, dtype=torch.bool, device=self.device)
        if self.dist.enabled:  # every rank must take the same decision
            bad_here = (~flags).sum().reshape(1).float()
            if distributed.all_reduce_sum(bad_here).item() and not (~flags).any():
                raise NonFiniteLossError(f"Loss is not finite. Stopping. (epoch {self.epoch + 1}, on another rank)")
        if not pending:
            return
        bad = (~flags).nonzero()
        if bad.numel():
            step = first_step + int(bad[0, 0]) + 1
            last_good = None if self.checkpoints is None else self.checkpoints.latest()
            raise NonFiniteLossError(
                f"Loss is not finite. Stopping. (epoch {self.epoch + 1}, step {step}; "
                f"last good checkpoint: {last_good or 'none'})"
            )

    @torch.inference_mode()
    def evaluate(self, loader: Iterable[Any]) -> dict[str, float]:
        """Loss and ranking metrics of the current weights over ``loader``.

        Returns:
            ``{"loss", "acc@1", "acc@5", "acc@10", "mrr", "ndcg", "f1", "acc@1_seen",
            "count"}``; the loss is weighted by valid targets, metrics are in percent.
        """
        self.model.eval()
        metrics = RankingMetrics(device=self.device)
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        count = torch.zeros((), device=self.device, dtype=torch.float64)
        for batch in loader:
            with self.amp.autocast():
                log_probs, targets = self.forward(self.model, batch, self.device)
            log_probs = log_probs.float()
            loss = self.loss_fn(log_probs, targets)
            valid = targets != self.ignore_index if self.ignore_index is not None else torch.ones_like(targets, dtype=torch.bool)
            n = valid.sum()
            loss_sum += loss.double() * n
            count += n
            metrics.update(log_probs, targets, valid=valid)
        if self.dist.enabled:  # exact: sums and counts over every rank's disjoint shard
            totals = distributed.all_reduce_sum(torch.stack([loss_sum, count]))
            loss_sum, count = totals[0], totals[1]
            result = RankingMetrics.compute_from_sums(distributed.all_reduce_sum(metrics.sums()))
        else:
            result = metrics.compute()
        total = count.item()
        result["loss"] = (loss_sum / total).item() if total else float("nan")
        return result

    def final_evaluation(self, train_seconds: float = 0.0) -> dict[str, Any]:
        """Load ``best.pt`` (when saved) and evaluate it on validation and test."""
        distributed.barrier()  # rank 0 has finished writing best.pt
        best_path = None if self.checkpoints is None else self.checkpoints.directory / self.best_name
        if best_path is not None and best_path.is_file():
            state = self.checkpoints.load(self.best_name, map_location=self.device)  # type: ignore[union-attr]
            load_model_state(_unwrap(self.model), state["model"])
            logger.info("Loaded %s (epoch %d) for the final evaluation", best_path, state.get("epoch", -1))
        else:
            logger.warning("no %s was saved; evaluating the final weights", self.best_name)
        validation = self.evaluate(self.val_loader)
        test = self.evaluate(self.test_loader) if self.test_loader is not None else None
        logger.info("Best model | Val Acc@1: %.2f%% | Test Acc@1: %s", validation["acc@1"],
                    "-" if test is None else f"{test['acc@1']:.2f}%")
        return {
            "validation": validation,
            "test": test,
            "best_epoch": self.best_epoch,
            "epochs_run": self.epoch,
            "stopped_early": self.stopped_early,
            "skipped_steps": self.skipped_steps,
            "train_seconds": train_seconds,
            "history": self.history,
        }

    # -------------------------------------------------------------- selection
    def _select(self, val_loss: float) -> bool:
        """Record the epoch's validation loss; return True when it is the new best model."""
        if self.stopper is not None:
            improved = self.stopper.step(val_loss)
            value = self.stopper.best
        elif self.running_average is not None:
            self.running_average.update(val_loss)
            improved = self.running_average.is_best
            value = self.running_average.best
        else:
            improved = math.isfinite(val_loss) and val_loss < self.best_value
            value = val_loss if improved else self.best_value
        if improved:
            self.best_value = float(value)
            self.best_epoch = self.epoch
        return improved

    def _save_epoch_checkpoints(self, improved: bool) -> float:
        """Rank 0 writes best/epoch/last checkpoints; every rank learns whether that worked.

        Under torchrun a failed save (disk full, ...) raises on every rank, not only on rank
        0, so no rank is left waiting at a barrier.
        """
        if self.checkpoints is None:
            return 0.0
        error, seconds = None, 0.0
        if self.dist.is_main:
            start = time.perf_counter()
            try:
                state = self.state_dict()
                if improved and _weights_finite(self.model):
                    self.checkpoints.save(self.best_name, state)
                elif improved:
                    logger.warning("epoch %d improved but the weights are not finite: %s not written",
                                   self.epoch, self.best_name)
                if self.epoch_checkpoints:
                    self.checkpoints.save(f"epoch-{self.epoch:04d}.pt", state)
                self.checkpoints.save("last.pt", state)
            except CheckpointError as exc:
                if not self.dist.enabled:
                    raise
                error = str(exc)
            seconds = time.perf_counter() - start
        error = distributed.broadcast_object(error)  # also the barrier: rank 0 has written
        if error is not None:
            raise CheckpointError(error if self.dist.is_main else f"rank 0 could not save: {error}")
        return seconds

    def _write_metrics(self, record: dict[str, Any]) -> None:
        _append_json(self.metrics_log, record)
        if self.tensorboard is not None:
            for key, value in record.items():
                if key != "epoch" and isinstance(value, (int, float)):  # x-axis: the global step
                    self.tensorboard.add_scalar(key, float(value), self.global_step)
            self.tensorboard.flush()

    def _write_step(self, running_loss: float) -> None:
        lr = float(self.optimizer.param_groups[0]["lr"])
        record = {"step": self.global_step, "epoch": self.epoch + 1, "step_train_loss": running_loss, "step_lr": lr}
        _append_json(self.step_log, record)
        if self.tensorboard is not None:
            self.tensorboard.add_scalar("step_train_loss", running_loss, self.global_step)
            self.tensorboard.add_scalar("step_lr", lr, self.global_step)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs, as tensors and plain values."""
        return {
            "model": _unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "amp": self.amp.state_dict(),
            "schedule": None if self.schedule is None else self.schedule.state_dict(),
            "stopper": None if self.stopper is None else self.stopper.state_dict(),
            "running_average": None if self.running_average is None else self.running_average.state_dict(),
            "checkpoints": None if self.checkpoints is None else self.checkpoints.state_dict(),
            "epoch": self.epoch,
            "global_step": self.global_step,
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "skipped_steps": self.skipped_steps,
            "nonfinite_steps": self.nonfinite_steps,
            "stopped_early": self.stopped_early,
            "step_in_epoch": self._step_in_epoch,
            "epoch_sums": None if self._epoch_sums is None else self._epoch_sums.detach().clone(),
            "history": self.history,
            "rng": get_rng_state(),
            "config": self.config,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state saved by :meth:`state_dict` (RNG included).

        Raises:
            ValueError: ``state`` lacks entries of :meth:`state_dict`, or its model weights
                do not fit this model (the message lists missing/unexpected/mis-shaped keys).
        """
        missing = [key for key in _REQUIRED_STATE if key not in state]
        if missing:
            raise ValueError(f"not a Trainer checkpoint: it lacks {', '.join(missing)}")
        load_model_state(_unwrap(self.model), state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.amp.load_state_dict(state["amp"])
        # The schedule is not restored: it is a pure function of the epoch, built from the
        # (possibly extended) run's settings; state["schedule"] records what the run used.
        if self.stopper is not None and state.get("stopper"):
            self.stopper.load_state_dict(state["stopper"])
        if self.running_average is not None and state.get("running_average"):
            self.running_average.load_state_dict(state["running_average"])
        if self.checkpoints is not None and state.get("checkpoints"):
            self.checkpoints.load_state_dict(state["checkpoints"])
        self.epoch = int(state["epoch"])
        self.global_step = int(state["global_step"])
        self.best_value = float(state["best_value"])
        self.best_epoch = int(state["best_epoch"])
        self.skipped_steps = int(state["skipped_steps"])
        self.nonfinite_steps = int(state["nonfinite_steps"])
        self.stopped_early = bool(state["stopped_early"])
        self._resume_step = int(state["step_in_epoch"])
        sums = state.get("epoch_sums")
        self._resume_sums = None if sums is None else sums.to(self.device)
        self.history = list(state["history"])
        set_rng_state(state["rng"])

    def resume(self, path: str | Path | None = None) -> Path:
        """Continue from a checkpoint: ``path``, or the newest loadable one.

        A truncated or corrupt newest checkpoint is reported (one warning naming it) and
        the previous one is used. When that is not ``last.pt`` (damaged, or older than a
        rotating checkpoint), ``last.pt`` is rewritten from it, so it always names the
        newest state.

        Returns:
            The checkpoint file resumed from.

        Raises:
            FileNotFoundError: no loadable checkpoint.
            CheckpointError: ``path`` cannot be loaded safely.
            ValueError: the checkpoint does not fit this model or Trainer.
        """
        if path is None:  # rank 0 picks the file, every rank loads that same file
            found = None
            if self.dist.is_main and self.checkpoints is not None:
                found = self.checkpoints.load_latest(map_location=self.device)
            path = distributed.broadcast_object(None if found is None else str(found[0]))
            if path is None:
                where = "" if self.checkpoints is None else f" in {self.checkpoints.directory}"
                raise FileNotFoundError(f"no loadable checkpoint to resume from{where}")
            state = found[1] if found is not None else load_checkpoint(path, map_location=self.device)
            if found is not None and found[0].name != "last.pt":  # last.pt is damaged or older: renew it
                self.checkpoints.save("last.pt", state)  # type: ignore[union-attr]
        else:
            state = load_checkpoint(path, map_location=self.device)
        chosen = Path(path)
        self.load_state_dict(state)
        self._trim_logs()
        logger.info("Resumed from %s (epoch %d, step %d)", chosen, self.epoch, self.global_step)
        return chosen

    def _trim_logs(self) -> None:
        """After a resume, make the JSON-lines logs end where the checkpoint does: a crash
        can leave a partial line, or records of steps/epochs the resumed run does again."""
        if self.metrics_log is not None and (self.history or self.metrics_log.is_file()):
            _rewrite_json_lines(self.metrics_log, self.history)  # the checkpoint's history is the record
        if self.step_log is not None and self.step_log.is_file():
            kept = []
            for line in self.step_log.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and int(record.get("step", 0)) <= self.global_step:
                    kept.append(record)
            _rewrite_json_lines(self.step_log, kept)
        if self.tensorboard is not None:  # hide events logged after the checkpoint
            self.tensorboard.close()
            self.tensorboard = _tensorboard_writer(self.tensorboard_dir, purge_step=self.global_step + 1)


def _rewrite_json_lines(path: Path, records: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text("".join(json.dumps(record, allow_nan=True) + "\n" for record in records), encoding="utf-8")
    os.replace(tmp, path)


_REQUIRED_STATE = ("model", "optimizer", "amp", "epoch", "global_step", "best_value", "best_epoch", "skipped_steps",
                   "nonfinite_steps", "stopped_early", "step_in_epoch", "history", "rng")


def _append_json(path: Path | None, record: dict[str, Any]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, allow_nan=True) + "\n")


def _tensorboard_writer(directory: str | Path | None, purge_step: int | None = None) -> Any:
    """A SummaryWriter when a directory is given and tensorboard is installed, else None.

    ``purge_step``: events at this global step and later, written before a crash, are
    hidden (TensorBoard's own mechanism for resumed runs)."""
    if directory is None:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        logger.info("tensorboard is not installed: scalars go to the JSON-lines logs only")
        return None
    return SummaryWriter(log_dir=str(directory), purge_step=purge_step)


def _set_loader_epoch(loader: Any, epoch: int) -> None:
    for target in (loader, getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)):
        if target is not None and hasattr(target, "set_epoch"):
            target.set_epoch(epoch)
            return


def _weights_finite(model: nn.Module) -> bool:
    flags = [torch.isfinite(p).all() for p in model.parameters()]
    return bool(torch.stack(flags).all()) if flags else True
