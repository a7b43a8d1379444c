"""Evaluation batches (forward, loss sum, metric sums) replayed from one CUDA graph.

The evaluation twin of :class:`trainkit.captured.CapturedStep`, with its static input
buffers, side-stream warm-up and capture helpers: under ``torch.inference_mode`` the model's
forward, the loss summed over valid targets and the metrics' device-side sums are captured
once for the loader's static batch shape and replayed per batch, one host sync per pass.
See docs/captured.md, "Evaluation".
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from trainkit.amp import _resolve_precision
from trainkit.captured import (
    _DTYPES,
    _PRECISIONS,
    CaptureError,
    ForwardFn,
    LossFn,
    _batch_why_not,
    _cuda_device,
    _first_line,
    _graph_warmup_and_capture,
    _Snapshot,
    _StaticInputs,
)

__all__ = ["CapturedEval"]


class CapturedEval:
    """Evaluation batches (forward + loss sum + metric sums) replayed from one CUDA graph.

    Usage::

        ev = CapturedEval(model, forward, loss_fn, next(iter(val)), metrics=RankingMetrics(V, device="cuda"))
        result = ev.evaluate(val)            # {"loss", "acc@1", ...} as Trainer.evaluate

    Args:
        model: The module (put in eval mode for capture and eager runs).
        forward: ``forward(model, batch, device) -> (log_probs, targets)``.
        loss_fn: ``loss_fn(log_probs, targets) -> scalar``, a mean over valid targets.
        example_batch: A batch of the loader's static shape.
        metrics: An object with ``update(log_probs, targets, valid=...)``, ``reset()``,
            ``sums()`` and a static ``compute_from_sums(sums)`` (e.g. ``RankingMetrics``
            with ``num_classes`` and ``device`` given).
        precision: As for :class:`CapturedStep`.
        ignore_index: Target id of padding rows (excluded from loss and metrics); None: none.
        warmup_steps: Eager runs on a side stream before capture.
        capture: False evaluates eagerly with the same code.

    Raises:
        ValueError: bad ``precision`` or ``warmup_steps``.
        CaptureError: capture impossible or failed (metrics and model are untouched).
    """

    def __init__(
        self,
        model: nn.Module,
        forward: ForwardFn,
        loss_fn: LossFn,
        example_batch: Any,
        *,
        metrics: Any,
        precision: str = "auto",
        ignore_index: int | None = 0,
        warmup_steps: int = 2,
        capture: bool = True,
    ) -> None:
        if precision not in _PRECISIONS:
            raise ValueError(f"precision must be one of {_PRECISIONS}, got {precision!r}")
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 1:
            raise ValueError(f"warmup_steps must be an int >= 1, got {warmup_steps!r}")
        params = list(model.parameters())
        self.device = params[0].device if params else torch.device("cpu")
        self.model, self.forward, self.loss_fn, self.metrics = model, forward, loss_fn, metrics
        self.precision = _resolve_precision(precision, self.device.type)
        self.ignore_index = ignore_index
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self.count = torch.zeros((), dtype=torch.float64, device=self.device)
        self.eager_batches = 0
        self.capture_seconds = 0.0
        self._losses: list[torch.Tensor] = []
        self._graph: torch.cuda.CUDAGraph | None = None
        self._inputs: _StaticInputs | None = None
        self._loss_out: torch.Tensor | None = None
        if capture:
            reason = self.why_not(model, example_batch=example_batch)
            if reason is not None:
                raise CaptureError(reason)
            self._capture(example_batch, warmup_steps)

    @staticmethod
    def why_not(model: nn.Module, *, example_batch: Any = None, loader: Any = None) -> str | None:
        """Why evaluation cannot be captured, in one line; None when it can."""
        _, reason = _cuda_device(model)
        return reason if reason is not None else _batch_why_not(example_batch, loader)

    @classmethod
    def try_create(cls, *args: Any, **kwargs: Any) -> tuple[CapturedEval | None, str | None]:
        """Build a captured evaluation, or return ``(None, one-line reason)``."""
        try:
            return cls(*args, **kwargs), None
        except CaptureError as exc:
            return None, str(exc)

    def _capture(self, example_batch: Any, warmup_steps: int) -> None:
        start = time.perf_counter()
        snapshot = _Snapshot(self.model, None)
        was_training = self.model.training
        try:
            self._inputs = _StaticInputs(example_batch, self.device)
            batch = self._inputs.batch
            self.model.eval()

            def once() -> None:
                self._loss_out = self._batch(batch)

            self._graph = _graph_warmup_and_capture(once, warmup_steps)
        except Exception as exc:
            self._graph = None
            raise CaptureError(f"capture failed: {_first_line(exc)}") from exc
        finally:
            snapshot.restore()  # eval changes no weights; BatchNorm buffers and RNG are kept as they were
            self.model.train(was_training)
            self.reset()
        torch.cuda.synchronize(self.device)
        self.capture_seconds = time.perf_counter() - start

    @torch.no_grad()
    def _batch(self, batch: Any) -> torch.Tensor:
        with torch.autocast(
            self.device.type,
            dtype=_DTYPES[self.precision],
            enabled=self.precision != "fp32",
            cache_enabled=False,
        ):
            log_probs, targets = self.forward(self.model, batch, self.device)
        log_probs = log_probs.float()
        loss = self.loss_fn(log_probs, targets).double()
        if self.ignore_index is None:
            valid = torch.ones_like(targets, dtype=torch.bool)
        else:
            valid = targets != self.ignore_index
        n = valid.sum().double()
        self.loss_sum += torch.where(n > 0, loss * n, torch.zeros_like(loss))
        self.count += n
        self.metrics.update(log_probs, targets, valid=valid)
        return loss

    def reset(self) -> None:
        """Zero the loss sum, count, per-batch losses and the metrics."""
        self.loss_sum.zero_()
        self.count.zero_()
        self.metrics.reset()
        self._losses = []

    def run(self, batch: Any) -> None:
        """Accumulate one batch (replay, or eager for a batch of another shape); no host sync."""
        if self._graph is not None and self._inputs is not None and self._inputs.load(batch):
            self._graph.replay()
            assert self._loss_out is not None
            self._losses.append(self._loss_out.clone())
        else:
            if self._graph is not None:
                self.eager_batches += 1
            was_training = self.model.training
            self.model.eval()
            self._losses.append(self._batch(batch))
            self.model.train(was_training)

    def sums(self) -> torch.Tensor:
        """``[loss sum, count, *metrics.sums()]`` as float64 (all-reduce with SUM across ranks)."""
        return torch.cat(
            [torch.stack([self.loss_sum, self.count]), self.metrics.sums().to(torch.float64)]
        )

    def compute_from_sums(self, sums: torch.Tensor) -> dict[str, float]:
        """Metrics and ``"loss"`` (weighted by valid targets) from :meth:`sums` (one host sync)."""
        values = sums.detach().double().cpu()
        result = type(self.metrics).compute_from_sums(values[2:])
        total = float(values[1])
        result["loss"] = float(values[0]) / total if total else float("nan")
        return result

    def result(self) -> dict[str, float]:
        """Metrics of everything accumulated since :meth:`reset`, as ``Trainer.evaluate`` returns."""
        return self.compute_from_sums(self.sums())

    def batch_losses(self) -> list[float]:
        """Each run batch's mean loss, in order (one host sync; for a ``RunningAverage``)."""
        return torch.stack(self._losses).tolist() if self._losses else []

    def evaluate(self, loader: Iterable[Any]) -> dict[str, float]:
        """Reset, run every batch of ``loader``, return :meth:`result`."""
        self.reset()
        for batch in loader:
            self.run(batch)
        return self.result()
