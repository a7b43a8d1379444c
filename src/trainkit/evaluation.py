"""One evaluation pass: loss, metrics and each batch's loss (see docs/trainer.md, "Evaluation").

Usable in a hand-written loop as well as by the Trainer. Under ``torchrun`` each rank
evaluates its own shard and the results are exact reductions over all of them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from trainkit import distributed

__all__ = ["default_forward", "evaluate"]

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


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader: Iterable[Any],
    loss_fn: Callable[[Any, torch.Tensor], torch.Tensor],
    *,
    metrics: Callable[..., Any],
    device: torch.device,
    forward: ForwardFn = default_forward,
    ignore_index: int | None = 0,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
) -> dict[str, Any]:
    """Evaluate ``model`` (in eval mode) over ``loader``.

    Args:
        model: The model to evaluate.
        loader: Batches that ``forward`` understands.
        loss_fn: ``loss_fn(scores, targets) -> scalar`` (a mean over valid targets). ``scores``
            is what ``forward`` returned: a tensor (cast to float32 here) or any other object
            that ``loss_fn`` and ``metrics`` understand, such as a NamedTuple of tensors.
        metrics: Factory ``metrics(device=...)`` of an object with ``update(scores, targets,
            valid=...)``, ``compute()``, ``sums()`` and ``compute_from_sums(sums)``, such as
            :class:`~trainkit.metrics.RankingMetrics`.
        device: Where the model runs.
        forward: ``forward(model, batch, device) -> (scores, targets)``; ``targets`` is a tensor.
        ignore_index: Target id that is padding (excluded from the loss weights and metrics).
        autocast: Context manager factory for the forward pass (e.g. ``AMPStep.autocast``).

    Returns:
        The metrics' ``compute()`` plus ``"loss"`` (batch losses weighted by valid targets)
        and ``"batch_losses"``: each batch's loss in order, read from the device once
        (under torchrun: every rank's, interleaved batch by batch).
    """
    model.eval()
    tracker = metrics(device=device)
    totals = torch.zeros(2, device=device, dtype=torch.float64)  # [loss sum, valid targets]
    batch_losses = []
    for batch in loader:
        with autocast():
            scores, targets = forward(model, batch, device)
        scores = (
            scores.float() if isinstance(scores, torch.Tensor) else scores
        )  # structured outputs: as they are
        loss = loss_fn(scores, targets)
        valid = (
            targets != ignore_index
            if ignore_index is not None
            else torch.ones_like(targets, dtype=torch.bool)
        )
        totals += torch.stack([loss.double() * valid.sum(), valid.sum().double()])
        batch_losses.append(loss.detach().float())
        tracker.update(scores, targets, valid=valid)
    losses = torch.stack(batch_losses).tolist() if batch_losses else []
    if distributed.context().enabled:  # exact: sums and counts over every rank's disjoint shard
        distributed.all_reduce_sum(totals)
        result = type(tracker).compute_from_sums(distributed.all_reduce_sum(tracker.sums()))
        losses = distributed.all_gather_interleaved(losses)
    else:
        result = tracker.compute()
    loss_sum, count = totals.tolist()
    return {**result, "loss": loss_sum / count if count else float("nan"), "batch_losses": losses}
