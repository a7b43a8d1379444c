"""One training micro-batch, written once: run eagerly, or recorded in CUDA graphs and replayed.

:class:`TrainStep` owns the whole step: autocast, forward, loss, backward on ``loss / k``,
and on every k-th micro-batch (or the last of an epoch) unscale, clip, optimizer step,
scaler update and the EMA update, with the step's counters kept on the device in one
:class:`StepStats`. :meth:`TrainStep.capture` records that same body in CUDA graphs (one
per kind of micro-batch: first of an update, in between, last) and later calls replay them:
the graph is a wrapper around the body, never a second implementation of it (torchtitan's
``wrap_with_cuda_graph`` is the model). See docs/trainer.md ("One step, eager or captured")
and docs/captured.md.

The rules, equal on both paths:

- an *update step* is every ``accumulation_steps`` micro-batches, and the last micro-batch
  of an epoch (a partial accumulation is flushed as a smaller update, so no gradient is
  carried into the next epoch or lost from a checkpoint);
- a micro-batch is non-finite when its loss is; an update step is non-finite when one of its
  micro-batches is, or (fp32/bf16) its gradient norm is; under fp16 the GradScaler owns
  non-finite gradients (an *overflow*). With ``nonfinite="skip"`` a non-finite update step
  never changes the weights; with ``"raise"`` the caller stops at its next check;
- the EMA is updated once per update step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from trainkit import distributed
from trainkit._graph import (
    ADAM_CLASSES,
    CaptureError,
    Snapshot,
    StaticInputs,
    all_reduce_mean,
    batch_why_not,
    cuda_device,
    ddp_why_not,
    first_line,
    is_fused,
    make_capturable,
    warmup_and_capture,
)
from trainkit._validate import check_choice, check_int
from trainkit.amp import AMPStep
from trainkit.evaluation import ForwardFn, default_forward

__all__ = ["CaptureError", "StepStats", "TrainStep", "make_capturable", "use_eager_optimizer"]

LossFn = Callable[[Any, torch.Tensor], torch.Tensor]
NONFINITE_MODES = ("raise", "skip")


class StepStats:
    """The step's counters, on the device, since :meth:`reset` (one epoch in the Trainer).

    All live in one float64 tensor, :attr:`values`, so that a CUDA graph updates them in
    place and a checkpoint saves them as one tensor; :meth:`read` names them.

    Counters:
        loss_sum: Sum of the finite micro-batch losses.
        finite_micro_batches: Micro-batches whose loss was finite.
        micro_batches: Micro-batches run.
        grad_norm_sum: Sum of the finite pre-clip gradient norms, one per update step.
        finite_norm_updates: Update steps whose gradient norm was finite.
        update_steps: Update steps run (applied, skipped or overflowed).
        updates: Update steps that changed the weights.
        fp16_overflows: Update steps the GradScaler skipped for an overflow (finite loss).
        nonfinite_steps: Non-finite update steps (see the module's rules).
        first_nonfinite: 0-based index among the update steps of the first non-finite one,
            -1 when there is none.
    """

    NAMES = (
        "loss_sum",
        "finite_micro_batches",
        "micro_batches",
        "grad_norm_sum",
        "finite_norm_updates",
        "update_steps",
        "updates",
        "fp16_overflows",
        "nonfinite_steps",
        "first_nonfinite",
    )

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.values = torch.zeros(len(self.NAMES), dtype=torch.float64, device=device)
        self.reset()

    def reset(self) -> None:
        """Zero every counter in place (``first_nonfinite`` to -1)."""
        self.values.zero_()
        self.values[-1] = -1

    def load(self, values: torch.Tensor) -> None:
        """Copy saved :attr:`values` in place (a captured graph keeps reading the same tensor).

        Raises:
            ValueError: ``values`` does not hold one number per counter.
        """
        if not isinstance(values, torch.Tensor) or values.shape != self.values.shape:
            shape = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values)
            raise ValueError(
                f"saved step counters must be a tensor of {len(self.NAMES)} values "
                f"({', '.join(self.NAMES)}), got {shape} (a mid-epoch checkpoint of an older "
                "trainkit: resume from an epoch checkpoint instead)"
            )
        self.values.copy_(values)

    def add_micro_batch(self, loss: torch.Tensor, finite: torch.Tensor) -> None:
        """Count one micro-batch (device-side, no host sync)."""
        zero = torch.zeros((), dtype=torch.float64, device=self.values.device)
        self.values[0:3] += torch.stack(
            [torch.where(finite, loss.double(), zero), finite.double(), torch.ones_like(zero)]
        )

    def add_update(
        self,
        grad_norm: torch.Tensor,
        applied: torch.Tensor,
        overflow: torch.Tensor,
        nonfinite: torch.Tensor,
    ) -> None:
        """Count one update step (device-side, no host sync); the arguments are 0-d tensors."""
        values = self.values
        zero = torch.zeros((), dtype=torch.float64, device=values.device)
        norm = grad_norm.double()
        norm_finite = torch.isfinite(norm)
        first = values[9]
        first.copy_(torch.where(nonfinite & (first < 0), values[5], first))
        values[3:9] += torch.stack(
            [
                torch.where(norm_finite, norm, zero),
                norm_finite.double(),
                torch.ones_like(zero),
                applied.double(),
                overflow.double(),
                nonfinite.double(),
            ]
        )

    def read(self) -> dict[str, float]:
        """Every counter by name (one host sync)."""
        return dict(zip(self.NAMES, self.values.tolist()))


def use_eager_optimizer(optimizer: torch.optim.Optimizer) -> None:
    """Make a loaded captured run's optimizer state usable on the eager CPU path, in place.

    A checkpoint of a captured run holds ``capturable=True`` param groups with the LR as a
    tensor. On CPU, where torch's Adam has no capturable mode, such a group is turned back
    into a plain one (``capturable=False``, LR a float); on CUDA it stays as it is.
    """
    for group in optimizer.param_groups:
        if group.get("capturable") and any(p.device.type == "cpu" for p in group["params"]):
            group["capturable"] = False
            if isinstance(group["lr"], torch.Tensor):
                group["lr"] = float(group["lr"])


class TrainStep:
    """One training micro-batch; every k-th (and an epoch's last) also updates the weights.

    Usage::

        step = TrainStep(model, optimizer, loss_fn, amp=AMPStep(optimizer, "bf16", 0.8))
        if step.why_not(example_batch=first_batch) is None:   # CUDA, static shapes
            step.capture(first_batch)                          # optional
        for i, batch in enumerate(loader):
            updated = step(batch, ends_epoch=i == len(loader) - 1)
        counters = step.stats.read()                           # one host sync

    Args:
        model: The module (a ``DistributedDataParallel`` wrapper too).
        optimizer: Its optimizer (the one ``amp`` steps).
        loss_fn: ``loss_fn(scores, targets) -> scalar``, a mean over the micro-batch.
        forward: ``forward(model, batch, device) -> (scores, targets)``.
        amp: The precision, clipping and accumulation (default ``AMPStep(optimizer, "fp32")``).
        ema: An EMA (``update()``) updated once per update step, or None.
        nonfinite: ``"raise"`` (a non-finite update step is counted; the caller stops) or
            ``"skip"`` (it is counted and never changes the weights).

    Attributes:
        stats: The :class:`StepStats` (device counters).
        captured: Whether calls replay CUDA graphs.
        capture_seconds: Warm-up and capture wall time.
        eager_steps: Micro-batches run eagerly while captured (another batch shape).

    Raises:
        ValueError: ``amp`` steps another optimizer, or a bad ``nonfinite``.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: LossFn,
        forward: ForwardFn = default_forward,
        amp: AMPStep | None = None,
        *,
        ema: Any = None,
        nonfinite: str = "raise",
    ) -> None:
        self.amp = amp if amp is not None else AMPStep(optimizer, precision="fp32")
        if self.amp.optimizer is not optimizer:
            raise ValueError("amp must step the same optimizer as the TrainStep")
        self.nonfinite = check_choice("nonfinite", nonfinite, NONFINITE_MODES)
        self.model, self.optimizer, self.loss_fn, self.forward = model, optimizer, loss_fn, forward
        self.ema = ema
        self.params = self.amp.params
        self.device = self.params[0].device
        self.stats = StepStats(self.device)
        self._window_finite = torch.ones((), dtype=torch.bool, device=self.device)
        # Eagerly a DDP model runs through its wrapper (its reducer averages the gradients);
        # captured, the step runs the wrapped module and averages them itself (see capture).
        self._ddp = model if isinstance(model, nn.parallel.DistributedDataParallel) else None
        self._module: nn.Module = model
        self._manual_ddp = False
        self._graphs: dict[tuple[bool, bool], torch.cuda.CUDAGraph] = {}
        self._inputs: StaticInputs | None = None
        self.capture_seconds = 0.0
        self.eager_steps = 0

    @property
    def captured(self) -> bool:
        return bool(self._graphs)

    # ------------------------------------------------------------------ the step
    def __call__(self, batch: Any, *, ends_epoch: bool = False) -> bool:
        """Train on one micro-batch; no host sync (except eager ``"skip"`` without a fused optimizer).

        Args:
            batch: What ``forward`` takes.
            ends_epoch: The epoch's last micro-batch: update even mid-accumulation.

        Returns:
            Whether this micro-batch ended an update step.
        """
        amp = self.amp
        first = amp.micro_step == 0
        update = ends_epoch or amp.micro_step + 1 >= amp.accumulation_steps
        graph = self._graphs.get((first, update))
        if graph is not None and self._rebound():
            self._rebind()
        if graph is not None and self._inputs is not None and self._inputs.load(batch):
            graph.replay()
        else:
            if self._graphs:
                self.eager_steps += 1
            self._body(batch, first, update)
        if not update:
            amp.micro_step += 1
            return False
        amp.micro_step = 0
        if self.ema is not None:  # reads a host counter: outside the graph, on both paths
            self.ema.update()
        return True

    def _body(self, batch: Any, first: bool, update: bool) -> None:
        """The device work of one micro-batch: run eagerly, and recorded by :meth:`capture`."""
        amp, optimizer = self.amp, self.optimizer
        if first:
            # k = 1: no grads before backward, so autograd hands its buffers over instead of
            # adding into zeroed ones (47 fewer kernels a step for pointer_v45). k > 1: the
            # gradient buffers persist (zeroed in place) so that micro-batches add into them.
            optimizer.zero_grad(set_to_none=amp.accumulation_steps == 1)
        if self._manual_ddp:
            self._broadcast_buffers()
        with amp.autocast(cache_enabled=False):  # the autocast cache is unsafe under capture
            scores, targets = self.forward(self._module, batch, self.device)
            loss = self.loss_fn(scores, targets)
        detached = loss.detach().float()
        finite = torch.isfinite(detached)
        if first:
            self._window_finite.copy_(finite)
        else:
            self._window_finite &= finite
        amp.scaled_backward(loss)
        self.stats.add_micro_batch(detached, finite)
        if update:
            self._update()

    def _update(self) -> None:
        """Unscale, clip, step, scaler update and the counters of one update step."""
        amp = self.amp
        if self._manual_ddp:  # what DDP's reducer does during backward, as one collective
            grads = [p.grad for p in self.params if p.grad is not None]
            all_reduce_mean(grads, self._ddp.process_group)  # type: ignore[union-attr]
        window_bad = ~self._window_finite
        skip = window_bad if self.nonfinite == "skip" else None
        info = amp.update(skip)
        norm = info.grad_norm.float()
        if info.found_inf is not None:  # fp16: the GradScaler skips every non-finite gradient
            scaler_skipped = info.found_inf > 0
            overflow = scaler_skipped & ~window_bad
            nonfinite = window_bad
            applied = ~scaler_skipped
        else:
            overflow = torch.zeros((), dtype=torch.bool, device=self.device)
            nonfinite = window_bad | ~torch.isfinite(norm)
            # "skip": amp.update did not apply it; "raise": applied, and the caller stops
            applied = ~nonfinite if skip is not None else torch.ones_like(nonfinite)
        self.stats.add_update(norm, applied, overflow, nonfinite)

    def _broadcast_buffers(self) -> None:
        """As DDP's forward does: the wrapped module's buffers from the group's first rank."""
        ddp = self._ddp
        if ddp is None or not ddp.broadcast_buffers:
            return
        group = ddp.process_group
        source = torch.distributed.get_global_rank(group, 0)
        for buffer in self._module.buffers():
            torch.distributed.broadcast(buffer, src=source, group=group)

    # ----------------------------------------------------------------- capture
    def why_not(self, *, example_batch: Any = None, loader: Any = None) -> str | None:
        """Why this step cannot be captured, in one line; None when it can.

        Capture needs: CUDA parameters on one device; a ``torch.optim.Adam``/``AdamW``
        or ``Adagrad`` (made capturable in place); fp16 only with a fused optimizer;
        ``nonfinite="skip"`` only with a fused optimizer or an Adagrad; no sparse
        gradients; a DDP model only over NCCL without ``find_unused_parameters``; a batch
        holding tensors; a ``TensorBatches`` loader without a short last batch.

        Args:
            example_batch: Checked to hold tensors, if given.
            loader: Checked for static batch shapes if it is a ``TensorBatches``.
        """
        model, optimizer = self.model, self.optimizer
        if self._ddp is not None:
            reason = ddp_why_not(self._ddp)
            if reason is not None:
                return reason
        adagrad = isinstance(optimizer, torch.optim.Adagrad)
        if not adagrad and not isinstance(optimizer, ADAM_CLASSES):
            return (
                f"{type(optimizer).__name__} is not captured: only Adam, AdamW and Adagrad have "
                "a capturable form here"
            )
        if any(group.get("differentiable") for group in optimizer.param_groups):
            return "optimizer has differentiable=True"
        if any(
            isinstance(m, (nn.Embedding, nn.EmbeddingBag)) and m.sparse for m in model.modules()
        ):
            return "sparse embedding gradients cannot be captured"
        fused = is_fused(optimizer)
        if self.amp.precision == "fp16" and not fused:
            return "fp16 needs fused=True: the foreach optimizer's GradScaler step reads found_inf on the host"
        if self.nonfinite == "skip" and not (fused or adagrad):
            return "nonfinite='skip' needs fused=True (the skip is the optimizer's device-side found_inf)"
        _, reason = cuda_device(distributed.unwrap(model))
        if reason is not None:
            return reason
        return batch_why_not(example_batch, loader)

    def capture(self, example_batch: Any, warmup_steps: int = 3) -> None:
        """Record the body in CUDA graphs for ``example_batch``'s shapes; later calls replay.

        The warm-up steps leave no trace: weights, buffers, optimizer state, GradScaler,
        counters and the CUDA RNG are restored afterwards.

        Args:
            example_batch: A batch of the loader's static shape.
            warmup_steps: Eager runs of each body on a side stream before its capture.

        Raises:
            CaptureError: :meth:`why_not` gives a reason, or the capture failed (model and
                optimizer are then as they were, and eager calls work).
            ValueError: bad ``warmup_steps``.
        """
        check_int("warmup_steps", warmup_steps, minimum=1)
        reason = self.why_not(example_batch=example_batch)
        if reason is not None:
            raise CaptureError(reason)
        start = time.perf_counter()
        module = distributed.unwrap(self.model)
        original = Snapshot(module, self.optimizer)  # before conversion: the exact original
        stats_before = self.stats.values.clone()
        was_training = module.training
        try:
            make_capturable(self.optimizer, self.device)
            converted = Snapshot(module, self.optimizer, self.amp.scaler)
            self._manual_ddp = self._ddp is not None
            # DDP's own forward is bypassed (its reducer cannot be captured); any other
            # wrapper stays: a torch.compile-d model runs inductor's kernels inside the graph
            self._module = self.model if self._ddp is None else self._ddp.module
            self.optimizer.zero_grad(set_to_none=True)
            if self.amp.accumulation_steps > 1:  # persistent buffers the micro-batches add into
                for p in self.params:
                    if p.requires_grad:
                        p.grad = torch.zeros_like(p)
            self._inputs = StaticInputs(example_batch, self.device)
            batch = self._inputs.batch
            self.model.train()
            pool = None
            for first, update in self._variants():

                def body(first: bool = first, update: bool = update) -> None:
                    self._body(batch, first, update)

                graph = warmup_and_capture(body, warmup_steps, pool=pool)
                pool = graph.pool()
                self._graphs[(first, update)] = graph
            converted.restore(self.amp.scaler)
            # zeroed in place: p.grad keeps referring to the buffers the graphs write
            self.optimizer.zero_grad(set_to_none=False)
        except Exception as exc:
            self.drop_graphs()
            original.restore(keep_optimizer_objects=False)
            self.optimizer.zero_grad(set_to_none=True)
            raise CaptureError(f"capture failed: {first_line(exc)}") from exc
        finally:
            self.stats.values.copy_(stats_before)
            module.train(was_training)
        torch.cuda.synchronize(self.device)
        self.capture_seconds += time.perf_counter() - start
        if self._ddp is not None:  # NCCL cannot be shut down while a graph holds its collective
            for graph in self._graphs.values():
                distributed.release_at_shutdown(graph)
        # the tensors the graphs read; optimizer.load_state_dict replaces them (see _rebind)
        self._captured_lr = [group["lr"] for group in self.optimizer.param_groups]
        self._captured_state = {
            (id(p), key): value
            for p, state in self.optimizer.state.items()
            for key, value in state.items()
            if isinstance(value, torch.Tensor)
        }
        self._bound_state = self.optimizer.state
        self._bound_groups = list(self.optimizer.param_groups)

    def _variants(self) -> list[tuple[bool, bool]]:
        """The (first micro-batch, update) kinds a run meets, in the order they usually run.

        With k > 1 the last, ``(True, True)``, is an epoch's flush of a one-micro-batch window.
        """
        k = self.amp.accumulation_steps
        if k == 1:
            return [(True, True)]
        if k == 2:
            return [(True, False), (False, True), (True, True)]
        return [(True, False), (False, False), (False, True), (True, True)]

    def drop_graphs(self) -> None:
        """Go back to the eager step (e.g. when another rank could not capture)."""
        self._graphs = {}
        self._inputs = None
        self._manual_ddp = False
        self._module = self.model

    def _rebound(self) -> bool:
        """Whether ``optimizer.load_state_dict`` replaced the objects the graphs read."""
        groups = self.optimizer.param_groups
        return (
            self.optimizer.state is not self._bound_state
            or len(groups) != len(self._bound_groups)
            or any(a is not b for a, b in zip(groups, self._bound_groups))
        )

    def _rebind(self) -> None:
        """After ``optimizer.load_state_dict``: copy the loaded values into the captured tensors."""
        make_capturable(self.optimizer, self.device)
        with torch.no_grad():
            for group, lr in zip(self.optimizer.param_groups, self._captured_lr):
                lr.copy_(group["lr"])
                group["lr"] = lr
            for p, state in self.optimizer.state.items():
                for key, value in list(state.items()):
                    old = self._captured_state.get((id(p), key))
                    if old is not None and isinstance(value, torch.Tensor) and value is not old:
                        old.copy_(value)
                        state[key] = old
        self._bound_state = self.optimizer.state
        self._bound_groups = list(self.optimizer.param_groups)

    def __repr__(self) -> str:
        return f"TrainStep({self.amp!r}, nonfinite={self.nonfinite!r}, captured={self.captured})"
