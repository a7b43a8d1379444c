"""One evaluation pass: loss, metrics and each batch's loss (see docs/trainer.md, "Evaluation").

:class:`EvalStep` is the one evaluation batch body (forward, loss summed over valid
targets, the metrics' device sums), run eagerly or recorded in a CUDA graph and replayed
(:meth:`EvalStep.capture`); :func:`evaluate` runs it eagerly over a loader. Usable in a
hand-written loop as well as by the Trainer. Under ``torchrun`` each rank evaluates its own
shard and the results are exact reductions over all of them.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from trainkit import distributed
from trainkit._graph import (
    CaptureError,
    Snapshot,
    StaticInputs,
    batch_why_not,
    cuda_device,
    first_line,
    warmup_and_capture,
)
from trainkit._validate import check_int

__all__ = ["EvalStep", "default_forward", "evaluate"]

Autocast = Callable[[], contextlib.AbstractContextManager[Any]]

ForwardFn = Callable[
    [nn.Module, Any, torch.device], tuple[Any, torch.Tensor]
]  # -> (scores, targets)


def default_forward(
    model: nn.Module, batch: Any, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` -> ``(model(x), y)``; ``(x, y, x_dict)`` -> ``(model(x, x_dict), y)``.

    Tensors are moved to ``device`` (non-blocking). Write a function with this signature
    for any other batch format.
    """
    x, y = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
    if len(batch) == 2:
        return model(x), y
    return model(
        x, {key: value.to(device, non_blocking=True) for key, value in batch[2].items()}
    ), y


class EvalStep:
    """One evaluation batch body, run eagerly or replayed from a CUDA graph.

    Usage::

        step = EvalStep(model, loss_fn, metrics=RankingMetrics(device="cuda"), device="cuda")
        step.capture(next(iter(val)))      # optional: CUDA and static shapes
        for batch in val:
            step.run(batch)                # no host sync
        result = step.result()             # {"loss", "acc@1", ..., "batch_losses"}

    Args:
        model: The module (evaluated in eval mode; a DDP wrapper is unwrapped).
        loss_fn: ``loss_fn(scores, targets) -> scalar``, a mean over valid targets.
        metrics: An object with ``update(scores, targets, valid=...)``, ``reset()``,
            ``sums()`` and a static ``compute_from_sums(sums)``, such as ``RankingMetrics``.
        device: Where the model runs.
        forward: ``forward(model, batch, device) -> (scores, targets)``.
        ignore_index: Target id of padding (excluded from loss weights and metrics); None:
            every target counts.
        autocast: Context manager factory for the forward pass (``AMPStep.autocast``);
            under capture it must not use autocast's weight cache.

    Attributes:
        captured: Whether :meth:`run` replays a graph.
        capture_seconds: Warm-up and capture wall time.
        eager_batches: Batches run eagerly while captured (another batch shape).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[Any, torch.Tensor], torch.Tensor],
        *,
        metrics: Any,
        device: torch.device | str,
        forward: ForwardFn = default_forward,
        ignore_index: int | None = None,
        autocast: Autocast = contextlib.nullcontext,
    ) -> None:
        self.model = distributed.unwrap(model)
        self.loss_fn, self.metrics, self.forward = loss_fn, metrics, forward
        self.device = torch.device(device)
        self.ignore_index = ignore_index
        self.autocast = autocast
        self.totals = torch.zeros(2, device=self.device, dtype=torch.float64)  # [loss sum, valid]
        self._losses: list[torch.Tensor] = []
        self._graph: torch.cuda.CUDAGraph | None = None
        self._inputs: StaticInputs | None = None
        self._graph_loss: torch.Tensor | None = None
        self.capture_seconds = 0.0
        self.eager_batches = 0

    @property
    def captured(self) -> bool:
        return self._graph is not None

    @torch.no_grad()
    def _body(self, batch: Any) -> torch.Tensor:
        """Forward, loss and metric sums of one batch; returns its loss (device, no sync)."""
        with self.autocast():
            scores, targets = self.forward(self.model, batch, self.device)
        if isinstance(scores, torch.Tensor):  # structured outputs stay as they are
            scores = scores.float()
        loss = self.loss_fn(scores, targets).detach().float()
        if self.ignore_index is None:
            valid = torch.ones_like(targets, dtype=torch.bool)
        else:
            valid = targets != self.ignore_index
        count = valid.sum().double()
        weighted = torch.where(count > 0, loss.double() * count, torch.zeros_like(count))
        self.totals += torch.stack([weighted, count])
        self.metrics.update(scores, targets, valid=valid)
        return loss

    def run(self, batch: Any) -> None:
        """Accumulate one batch (a replay, or eagerly for a batch of another shape)."""
        was_training = self.model.training
        self.model.eval()
        if self._graph is not None and self._inputs is not None and self._inputs.load(batch):
            self._graph.replay()
            assert self._graph_loss is not None
            self._losses.append(self._graph_loss.clone())
        else:
            if self._graph is not None:
                self.eager_batches += 1
            self._losses.append(self._body(batch))
        self.model.train(was_training)

    def reset(self) -> None:
        """Zero the loss sums, the per-batch losses and the metrics (in place; metrics
        without a ``reset()`` keep their sums: build a new ``EvalStep`` for them)."""
        self.totals.zero_()
        if hasattr(self.metrics, "reset"):
            self.metrics.reset()
        self._losses = []

    def result(self) -> dict[str, Any]:
        """The metrics, ``"loss"`` (weighted by valid targets) and ``"batch_losses"``.

        One host sync; under torchrun the sums are all-reduced over the ranks' disjoint
        shards and the batch losses gathered, interleaved batch by batch.
        """
        losses = torch.stack(self._losses).tolist() if self._losses else []
        totals = self.totals.clone()
        sums = self.metrics.sums()
        if distributed.context().enabled:
            distributed.all_reduce_sum(totals)
            sums = distributed.all_reduce_sum(sums)
            losses = distributed.all_gather_interleaved(losses)
        result = type(self.metrics).compute_from_sums(sums)
        loss_sum, count = totals.tolist()
        return {
            **result,
            "loss": loss_sum / count if count else float("nan"),
            "batch_losses": losses,
        }

    def drop_graphs(self) -> None:
        """Go back to eager batches (e.g. when another rank could not capture)."""
        self._graph = None
        self._inputs = None
        self._graph_loss = None

    def why_not(self, *, example_batch: Any = None, loader: Any = None) -> str | None:
        """Why this evaluation cannot be captured, in one line; None when it can."""
        _, reason = cuda_device(self.model)
        if reason is not None:
            return reason
        return batch_why_not(example_batch, loader)

    def capture(self, example_batch: Any, warmup_steps: int = 2) -> None:
        """Record :meth:`run`'s body for ``example_batch``'s shapes in one CUDA graph.

        Raises:
            CaptureError: :meth:`why_not` gives a reason, or the capture failed (the model
                and metrics are as they were; eager batches work).
            ValueError: bad ``warmup_steps``.
        """
        check_int("warmup_steps", warmup_steps, minimum=1)
        reason = self.why_not(example_batch=example_batch)
        if reason is not None:
            raise CaptureError(reason)
        start = time.perf_counter()
        snapshot = Snapshot(self.model, None)
        was_training = self.model.training
        try:
            self._inputs = StaticInputs(example_batch, self.device)
            batch = self._inputs.batch
            self.model.eval()

            def body() -> None:
                self._graph_loss = self._body(batch)

            self._graph = warmup_and_capture(body, warmup_steps)
        except Exception as exc:
            self._graph = None
            self._inputs = None
            raise CaptureError(f"capture failed: {first_line(exc)}") from exc
        finally:
            snapshot.restore()  # BatchNorm buffers and the RNG as they were
            self.model.train(was_training)
            self.reset()
        torch.cuda.synchronize(self.device)
        self.capture_seconds += time.perf_counter() - start


def evaluate(
    model: nn.Module,
    loader: Iterable[Any],
    loss_fn: Callable[[Any, torch.Tensor], torch.Tensor],
    *,
    metrics: Callable[..., Any],
    device: torch.device,
    forward: ForwardFn = default_forward,
    ignore_index: int | None = None,
    autocast: Autocast = contextlib.nullcontext,
) -> dict[str, Any]:
    """Evaluate ``model`` (in eval mode) over ``loader``: :class:`EvalStep` run eagerly.

    Args:
        model: The model to evaluate.
        loader: Batches that ``forward`` understands.
        loss_fn: ``loss_fn(scores, targets) -> scalar`` (a mean over valid targets). ``scores``
            is what ``forward`` returned: a tensor (cast to float32 here) or any other object
            that ``loss_fn`` and ``metrics`` understand, such as a NamedTuple of tensors.
        metrics: Factory ``metrics(device=...)`` of an object with ``update(scores, targets,
            valid=...)``, ``reset()``, ``sums()`` and ``compute_from_sums(sums)``, such as
            :class:`~trainkit.metrics.RankingMetrics`.
        device: Where the model runs.
        forward: ``forward(model, batch, device) -> (scores, targets)``; ``targets`` is a tensor.
        ignore_index: Target id that is padding (excluded from the loss weights and
            metrics); None (the default): every target counts.
        autocast: Context manager factory for the forward pass (e.g. ``AMPStep.autocast``).

    Returns:
        The metrics' result plus ``"loss"`` (batch losses weighted by valid targets) and
        ``"batch_losses"``: each batch's loss in order, read from the device once (under
        torchrun: every rank's, interleaved batch by batch).
    """
    step = EvalStep(
        model,
        loss_fn,
        metrics=metrics(device=device),
        device=device,
        forward=forward,
        ignore_index=ignore_index,
        autocast=autocast,
    )
    for batch in loader:
        step.run(batch)
    return step.result()
