"""The whole training step in one CUDA graph, replayed per batch (evaluation: ``captured_eval``).

``CapturedStep`` runs ``zero_grad(set_to_none=True)`` -> forward under autocast -> loss ->
backward -> (fp16: unscale) -> ``clip_grad_norm_`` -> optimizer step -> device-side sums on
static input buffers, warmed up on a side stream and captured once with ``torch.cuda.graph``
(the recipe of PyTorch's "CUDA Graphs" notes: static inputs, capturable optimizer, warmup on
a side stream). Each :meth:`CapturedStep.run` copies the batch into the static buffers and
replays the graph: one launch instead of hundreds, no host sync.
:class:`trainkit.captured_eval.CapturedEval` does the same for forward + loss sum + metric
sums, with the helpers defined here. See docs/captured.md.

What capture requires, and what happens otherwise (:meth:`CapturedStep.why_not` says why,
in one line, and the caller keeps its eager step):

- CUDA parameters, a ``torch.optim.Adam``/``AdamW`` (converted in place to
  ``capturable=True`` with the LR as a 0-d device tensor, so schedules change it with
  ``fill_`` and no recapture) or a ``torch.optim.Adagrad`` (LR made a device tensor the same
  way; its update runs as :func:`trainkit.capturable_adagrad.adagrad_step` unless fused),
  no sparse gradients;
- a ``DistributedDataParallel`` model only over NCCL and without
  ``find_unused_parameters``: the step then runs the wrapped module and averages the
  gradients with one ``all_reduce`` inside the graph (DDP's own reducer cannot be captured:
  it touches the legacy stream in backward), and broadcasts the buffers from rank 0 first
  when the wrapper's ``broadcast_buffers`` is set, as DDP's forward does;
- fp16 only with a fused optimizer (its step takes the GradScaler's ``found_inf`` on the
  device; the foreach path reads it on the host); ``nonfinite="skip"`` only with a fused
  optimizer (the skip is the same device-side ``found_inf``);
- static batch shapes: a batch whose structure or shapes differ from the example batch runs
  eagerly through the same step function (counted in ``eager_steps``), so pad the last batch
  (``TensorBatches(pad_to_full_batch=True, pad_values={"y": ignore_index})``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils import _pytree as pytree

from trainkit import distributed
from trainkit.amp import _resolve_precision
from trainkit.capturable_adagrad import adagrad_step

__all__ = ["CaptureError", "CapturedStep", "make_capturable"]

ForwardFn = Callable[[nn.Module, Any, torch.device], tuple[torch.Tensor, torch.Tensor]]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
_PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class CaptureError(RuntimeError):
    """Capturing failed; the message is one line and the model/optimizer are restored."""


# ------------------------------------------------------------------------------ helpers
def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def _cuda_device(model: nn.Module) -> tuple[torch.device | None, str | None]:
    """The one CUDA device of the model's parameters, or a reason why there is none."""
    if not torch.cuda.is_available():
        return None, "CUDA is not available"
    devices = {p.device for p in model.parameters()}
    if not devices:
        return None, "the model has no parameters"
    if len(devices) > 1:
        return None, f"parameters span several devices {sorted(map(str, devices))}"
    device = next(iter(devices))
    if device.type != "cuda":
        return None, f"parameters are on {device.type}, capture needs CUDA"
    return device, None


def _is_fused(optimizer: torch.optim.Optimizer) -> bool:
    return all(bool(group.get("fused")) for group in optimizer.param_groups)


def _batch_why_not(example_batch: Any, loader: Any) -> str | None:
    """Static-shape problems of the example batch or of a ``TensorBatches``-like loader."""
    if example_batch is not None and not any(
        isinstance(v, torch.Tensor) for v in pytree.tree_leaves(example_batch)
    ):
        return "the example batch holds no tensors"
    if (
        loader is not None
        and hasattr(loader, "pad_to_full_batch")
        and hasattr(loader, "num_samples")
    ):
        short = loader.num_samples % loader.batch_size
        if short and not (loader.pad_to_full_batch or getattr(loader, "drop_last", False)):
            return (
                f"the loader's last batch is short ({short} of {loader.batch_size}); pass "
                "pad_to_full_batch=True with pad_values for the targets"
            )
    return None


def _ddp_why_not(model: nn.parallel.DistributedDataParallel) -> str | None:
    """Why a DDP model's step cannot be captured with the gradient all-reduce in the graph."""
    if model.find_unused_parameters:
        return "DistributedDataParallel(find_unused_parameters=True): which gradients exist may differ per step"
    backend = torch.distributed.get_backend(model.process_group)
    if backend != "nccl":
        return f"DistributedDataParallel over {backend}: the gradient all-reduce in the graph needs NCCL"
    return None


def _all_reduce_mean(tensors: list[torch.Tensor], group: Any) -> None:
    """Average ``tensors`` over the ranks of ``group`` in place: one flat ``all_reduce``."""
    if not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    torch.distributed.all_reduce(flat, group=group)
    flat.div_(torch.distributed.get_world_size(group))
    torch._foreach_copy_(
        tensors,
        [part.view_as(t) for part, t in zip(flat.split([t.numel() for t in tensors]), tensors)],
    )


def make_capturable(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Turn an Adam/AdamW or an Adagrad into its capturable form, in place.

    Adam/AdamW: sets ``capturable=True`` on every param group. Both: replaces each group's
    ``lr`` by a 0-d float32 tensor on ``device`` (an existing tensor is kept, moved if needed)
    and moves existing ``step`` counters onto the device as float32. For AdamW that is
    ``build_optimizer(model, "adamw", capturable=True, lr=torch.tensor(lr, device="cuda"))``.
    An Adagrad has no capturable flag: ``CapturedStep`` runs its update with
    :func:`trainkit.capturable_adagrad.adagrad_step` (its fused kernel, where torch has one
    for CUDA, reads the same device counters and tensor LR).

    Args:
        optimizer: A ``torch.optim.Adam``, ``AdamW`` or ``Adagrad``.
        device: The parameters' CUDA device.

    Raises:
        ValueError: another optimizer class.
    """
    adagrad = isinstance(optimizer, torch.optim.Adagrad)
    if not adagrad and not isinstance(optimizer, torch.optim.Adam):  # AdamW subclasses Adam
        raise ValueError(
            f"optimizer must be torch.optim.Adam, AdamW or Adagrad, got {type(optimizer).__name__}"
        )
    for group in optimizer.param_groups:
        if not adagrad:
            group["capturable"] = True
        lr = group["lr"]
        if not isinstance(lr, torch.Tensor):
            group["lr"] = torch.tensor(float(lr), dtype=torch.float32, device=device)
        elif lr.device != device:
            group["lr"] = lr.detach().to(device=device, dtype=torch.float32)
        for param in group["params"]:
            state = optimizer.state.get(param)
            if (
                state
                and isinstance(state.get("step"), torch.Tensor)
                and state["step"].device != param.device
            ):
                state["step"] = state["step"].to(device=param.device, dtype=torch.float32)


class _Snapshot:
    """Copies of the model's and optimizer's tensors, restored in place (addresses kept)."""

    def __init__(
        self, model: nn.Module, optimizer: torch.optim.Optimizer | None, scaler: Any = None
    ) -> None:
        self.model = [
            (t, t.detach().clone()) for t in list(model.parameters()) + list(model.buffers())
        ]
        self.optimizer = optimizer
        self.opt_state = (
            {}
            if optimizer is None
            else {
                (id(p), key): value.detach().clone()
                for p, state in optimizer.state.items()
                for key, value in state.items()
                if isinstance(value, torch.Tensor)
            }
        )
        self.opt_state_dict = None if optimizer is None else _clone_tree(optimizer.state_dict())
        self.scaler = None if scaler is None else scaler.state_dict()
        self.rng = torch.cuda.get_rng_state() if torch.cuda.is_available() else None

    @torch.no_grad()
    def restore(self, scaler: Any = None, keep_optimizer_objects: bool = True) -> None:
        """Undo the warm-up steps: weights, buffers, optimizer state, scaler and CUDA RNG."""
        for tensor, saved in self.model:
            tensor.copy_(saved)
        if self.optimizer is not None:
            if keep_optimizer_objects:
                for p, state in self.optimizer.state.items():
                    for key, value in state.items():
                        if isinstance(value, torch.Tensor):
                            saved = self.opt_state.get((id(p), key))
                            # state created by the warm-up: Adam's fresh state is all zeros
                            value.copy_(saved) if saved is not None else value.zero_()
            else:
                self.optimizer.load_state_dict(self.opt_state_dict)
        if scaler is not None and self.scaler is not None:
            scaler.load_state_dict(self.scaler)
        if self.rng is not None:
            torch.cuda.set_rng_state(self.rng)


def _clone_tree(tree: Any) -> Any:
    return pytree.tree_map(lambda v: v.detach().clone() if isinstance(v, torch.Tensor) else v, tree)


class _StaticInputs:
    """Device buffers shaped like the example batch; ``load(batch)`` copies a batch into them."""

    def __init__(self, example_batch: Any, device: torch.device) -> None:
        leaves, self.spec = pytree.tree_flatten(example_batch)
        self.leaves = [
            leaf.detach().to(device).clone() if isinstance(leaf, torch.Tensor) else leaf
            for leaf in leaves
        ]
        self.batch = pytree.tree_unflatten(self.leaves, self.spec)

    def load(self, batch: Any) -> bool:
        """Copy ``batch`` into the buffers; False (nothing copied) if it does not fit them."""
        leaves, spec = pytree.tree_flatten(batch)
        if spec != self.spec:
            return False
        for leaf, static in zip(leaves, self.leaves):
            if isinstance(static, torch.Tensor):
                if (
                    not isinstance(leaf, torch.Tensor)
                    or leaf.shape != static.shape
                    or leaf.dtype != static.dtype
                ):
                    return False
            elif leaf != static:
                return False
        for leaf, static in zip(leaves, self.leaves):
            if isinstance(static, torch.Tensor):
                static.copy_(leaf, non_blocking=True)
        return True


def _graph_warmup_and_capture(
    fn: Callable[[], Any], warmup_steps: int, capture_error_mode: str = "global"
) -> torch.cuda.CUDAGraph:
    """Run ``fn`` ``warmup_steps`` times on a side stream, then capture one call (torch's default error mode)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup_steps):
            fn()
    outer = torch.cuda.current_stream()
    outer.wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    pool = torch.cuda.graph_pool_handle()
    try:
        with torch.cuda.graph(graph, pool=pool, capture_error_mode=capture_error_mode):  # type: ignore[arg-type]
            fn()
    except BaseException:
        _undo_failed_capture(graph, pool, outer)
        raise
    return graph


def _undo_failed_capture(graph: torch.cuda.CUDAGraph, pool: Any, stream: torch.cuda.Stream) -> None:
    """Put back what a capture that failed inside CUDA leaves behind, so eager steps still run.

    When ``cudaStreamEndCapture`` fails (a host sync inside the step invalidated the capture,
    say), ``torch.cuda.graph`` raises before it restores the current stream, before the
    allocator stops routing to the graph's pool and before the CUDA generator leaves capture
    mode; the next eager dropout then fails with "Offset increment outside graph capture".
    Each repair is best effort: the capture's own error is the one the caller sees.
    """
    device = stream.device.index

    def end_pool_routing() -> None:
        torch._C._cuda_endAllocateToPool(device, pool)  # type: ignore[attr-defined]

    def release_pool() -> None:
        try:
            graph.pool()  # the capture ended: the graph's destructor releases the pool
        except RuntimeError:
            torch._C._cuda_releasePool(device, pool)  # type: ignore[attr-defined]

    def leave_generator_capture_mode() -> None:
        # a capture that ends normally ends the default generator's capture mode too
        side = torch.cuda.Stream(device=stream.device)
        side.wait_stream(stream)
        with torch.cuda.graph(torch.cuda.CUDAGraph(), stream=side):
            torch.zeros(1, device=stream.device).add_(1)
        stream.wait_stream(side)

    for repair in (
        lambda: torch.cuda.set_stream(stream),
        end_pool_routing,
        release_pool,
        leave_generator_capture_mode,
    ):
        try:
            repair()
        except Exception:
            pass


# --------------------------------------------------------------------------- the step
class CapturedStep:
    """One whole training step captured in a CUDA graph; :meth:`run` replays it per batch.

    Usage (see docs/captured.md)::

        reason = CapturedStep.why_not(model, optimizer, precision="bf16", loader=train)
        if reason is None:
            step = CapturedStep(model, optimizer, loss_fn, forward, next(iter(train)),
                                precision="bf16", max_grad_norm=0.8)
            for batch in train:
                step.run(batch)                 # no host sync
            loss_sum, norm_sum, overflow, finite = step.sums.tolist()

    Args:
        model: The module to train (may be ``torch.compile``-d; kernels then run inside
            the graph). Its parameters must sit on one CUDA device.
        optimizer: ``torch.optim.Adam``/``AdamW``; converted in place by
            :func:`make_capturable` (``capturable=True``, LR as a 0-d device tensor).
        loss_fn: ``loss_fn(log_probs, targets) -> scalar``.
        forward: ``forward(model, batch, device) -> (log_probs, targets)``.
        example_batch: A batch of the loader's static shape (its values are used for
            warm-up only; the weights, optimizer state, GradScaler and CUDA RNG are
            restored after capture, so warm-up leaves no trace).
        precision: ``"auto"`` (bf16 where supported), ``"fp32"``, ``"bf16"`` or ``"fp16"``.
        max_grad_norm: Clip the global gradient norm; None only measures it.
        nonfinite: ``"raise"`` or ``"skip"``; with a fused optimizer a step whose loss or
            gradient norm is non-finite never updates the weights under either rule (the
            caller raises or counts from :meth:`pop_nonfinite`).
        warmup_steps: Eager steps on a side stream before capture (3, as PyTorch's notes).
        capture: False runs the same step eagerly (CPU, or to measure the graph's gain).

    Attributes:
        sums: float32 device tensor ``[loss sum over finite steps, grad-norm sum, fp16
            overflow steps, finite steps]`` since :meth:`reset_sums` (``copy_`` into it to
            restore it; never rebind it).
        eager_steps: Batches that did not fit the static buffers and ran eagerly.
        capture_seconds: Wall time of warm-up + capture (0 when ``capture=False``).
        scaler: The ``torch.amp.GradScaler`` for fp16, else None (save its state_dict).

    Raises:
        ValueError: bad ``precision``, ``max_grad_norm``, ``nonfinite`` or ``warmup_steps``.
        CaptureError: capture was asked for and is impossible (the reason of
            :meth:`why_not`) or failed; model and optimizer are left as they were.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: LossFn,
        forward: ForwardFn,
        example_batch: Any,
        *,
        precision: str = "auto",
        max_grad_norm: float | None = None,
        nonfinite: str = "raise",
        warmup_steps: int = 3,
        capture: bool = True,
    ) -> None:
        if precision not in _PRECISIONS:
            raise ValueError(f"precision must be one of {_PRECISIONS}, got {precision!r}")
        if max_grad_norm is not None and not (0 < float(max_grad_norm) < float("inf")):
            raise ValueError(
                f"max_grad_norm must be a finite number > 0 or None, got {max_grad_norm!r}"
            )
        if nonfinite not in ("raise", "skip"):
            raise ValueError(f"nonfinite must be 'raise' or 'skip', got {nonfinite!r}")
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 1:
            raise ValueError(f"warmup_steps must be an int >= 1, got {warmup_steps!r}")
        self.model, self.optimizer, self.loss_fn, self.forward = model, optimizer, loss_fn, forward
        # a DDP model: run the wrapped module (DDP's reducer is bypassed) and all-reduce in the step
        self._ddp = model if isinstance(model, nn.parallel.DistributedDataParallel) else None
        self._module = model.module if self._ddp is not None else model
        # the buffers DDP's forward would broadcast from the group's rank 0 before every step
        self._broadcast = (
            list(self._module.buffers())
            if self._ddp is not None and self._ddp.broadcast_buffers
            else []
        )
        self._broadcast_source = (
            torch.distributed.get_global_rank(self._ddp.process_group, 0)
            if self._broadcast and self._ddp is not None
            else 0
        )
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        self.device = self.params[0].device if self.params else torch.device("cpu")
        self.precision = _resolve_precision(precision, self.device.type)
        self.max_grad_norm = None if max_grad_norm is None else float(max_grad_norm)
        self.nonfinite = nonfinite
        self.captured = bool(capture)
        self.eager_steps = 0
        self.capture_seconds = 0.0
        if capture:
            reason = self.why_not(
                model,
                optimizer,
                precision=precision,
                nonfinite=nonfinite,
                example_batch=example_batch,
            )
            if reason is not None:
                raise CaptureError(reason)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None
        self._fused = _is_fused(optimizer)
        self._adagrad_by_hand = isinstance(optimizer, torch.optim.Adagrad) and not self._fused
        self._foreach = (
            True if self.device.type == "cuda" else None
        )  # foreach kernels exist on CUDA only
        device = self.device
        self.sums = torch.zeros(4, device=device)
        self._counter = torch.zeros((), dtype=torch.int64, device=device)
        self._first_bad = torch.full((), -1, dtype=torch.int64, device=device)
        self._nonfinite = torch.zeros((), dtype=torch.int64, device=device)
        self._found_inf = torch.zeros((), dtype=torch.float32, device=device)
        self._zero = torch.zeros((), device=device)
        self._graph: torch.cuda.CUDAGraph | None = None
        self._inputs: _StaticInputs | None = None
        if capture:
            self._capture(example_batch, warmup_steps)

    # ------------------------------------------------------------------ checks
    @staticmethod
    def why_not(
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        precision: str = "auto",
        nonfinite: str = "raise",
        example_batch: Any = None,
        loader: Any = None,
    ) -> str | None:
        """Why this step cannot be captured, in one line; None when it can.

        Args:
            model, optimizer, precision, nonfinite: As for the constructor.
            example_batch: Checked to hold tensors, if given.
            loader: Checked for static batch shapes if it is a ``TensorBatches``.

        Returns:
            The reason, or None.
        """
        if isinstance(model, nn.parallel.DistributedDataParallel):
            reason = _ddp_why_not(model)
            if reason is not None:
                return reason
        if not isinstance(optimizer, (torch.optim.Adam, torch.optim.Adagrad)):
            return (
                f"{type(optimizer).__name__} is not captured: only Adam, AdamW and Adagrad have a "
                "capturable form here"
            )
        if any(g.get("differentiable") for g in optimizer.param_groups):
            return "optimizer has differentiable=True"
        if any(
            isinstance(m, (nn.Embedding, nn.EmbeddingBag)) and m.sparse for m in model.modules()
        ):
            return "sparse embedding gradients cannot be captured"
        if precision not in _PRECISIONS:
            return f"unknown precision {precision!r}"
        fused = _is_fused(optimizer)
        if precision == "fp16" and not fused:
            return "fp16 needs fused=True: the foreach optimizer's GradScaler step reads found_inf on the host"
        if nonfinite == "skip" and not fused:
            return "nonfinite='skip' needs fused=True (the skip is the optimizer's device-side found_inf)"
        _, reason = _cuda_device(model)
        if reason is not None:
            return reason
        return _batch_why_not(example_batch, loader)

    @classmethod
    def try_create(
        cls,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: LossFn,
        forward: ForwardFn,
        example_batch: Any,
        *,
        loader: Any = None,
        **kwargs: Any,
    ) -> tuple[CapturedStep | None, str | None]:
        """Build a captured step, or return ``(None, one-line reason)`` instead of raising.

        Takes the constructor's arguments, plus ``loader`` (checked by :meth:`why_not`).
        Invalid arguments still raise ``ValueError``.
        """
        reason = None
        if kwargs.get("capture", True):
            reason = cls.why_not(
                model,
                optimizer,
                precision=kwargs.get("precision", "auto"),
                nonfinite=kwargs.get("nonfinite", "raise"),
                example_batch=example_batch,
                loader=loader,
            )
        if reason is not None:
            return None, reason
        try:
            return cls(model, optimizer, loss_fn, forward, example_batch, **kwargs), None
        except CaptureError as exc:
            return None, str(exc)

    # ---------------------------------------------------------------- capture
    def _capture(self, example_batch: Any, warmup_steps: int) -> None:
        start = time.perf_counter()
        snapshot = _Snapshot(self._module, self.optimizer)  # before conversion: the exact original
        try:
            make_capturable(self.optimizer, self.device)
            inner = _Snapshot(
                self._module, self.optimizer, self.scaler
            )  # after conversion, same devices
            self.optimizer.zero_grad(set_to_none=True)
            self._inputs = _StaticInputs(example_batch, self.device)
            self.model.train()
            batch = self._inputs.batch
            self._graph = _graph_warmup_and_capture(lambda: self._step(batch), warmup_steps)
            inner.restore(self.scaler)
            self.optimizer.zero_grad(set_to_none=False)
            self.reset_sums()
            self._clear_nonfinite()
        except Exception as exc:
            self._graph = None
            snapshot.restore(keep_optimizer_objects=False)
            self.optimizer.zero_grad(set_to_none=True)
            raise CaptureError(f"capture failed: {_first_line(exc)}") from exc
        torch.cuda.synchronize(self.device)
        self.capture_seconds = time.perf_counter() - start
        if self._ddp is not None:  # NCCL cannot be shut down while the graph lives
            distributed.release_at_shutdown(self._graph)
        # the tensors the graph reads; optimizer.load_state_dict replaces them (see _rebind)
        self._captured_lr = [g["lr"] for g in self.optimizer.param_groups]
        self._captured_state = {
            (id(p), k): v
            for p, st in self.optimizer.state.items()
            for k, v in st.items()
            if isinstance(v, torch.Tensor)
        }
        self._bound_state, self._bound_groups = (
            self.optimizer.state,
            list(self.optimizer.param_groups),
        )

    def _rebound(self) -> bool:
        """Whether ``optimizer.load_state_dict`` replaced the objects the graph reads."""
        groups = self.optimizer.param_groups
        return (
            self.optimizer.state is not self._bound_state
            or len(groups) != len(self._bound_groups)
            or any(a is not b for a, b in zip(groups, self._bound_groups))
        )

    # ------------------------------------------------------------------- step
    def _step(self, batch: Any) -> None:
        """The step itself: run eagerly for warm-up, under capture, and for odd batches."""
        optimizer, scaler = self.optimizer, self.scaler
        # No grads before backward, so autograd hands its gradient buffers over instead of adding
        # them into zeroed ones: under capture the buffers come from the graph's pool, and a
        # replay writes each step's gradients there (no memset, no add: 47 fewer kernels a step
        # for pointer_v45).
        optimizer.zero_grad(set_to_none=True)
        for buffer in self._broadcast:  # as DDP's forward does
            torch.distributed.broadcast(
                buffer, src=self._broadcast_source, group=self._ddp.process_group
            )  # type: ignore[union-attr]
        with torch.autocast(
            self.device.type,
            dtype=_DTYPES[self.precision],
            enabled=self.precision != "fp32",
            cache_enabled=False,
        ):  # the autocast cache is unsafe under capture
            log_probs, targets = self.forward(self._module, batch, self.device)
            loss = self.loss_fn(log_probs, targets)
        detached = loss.detach().float()
        finite = torch.isfinite(detached)
        if scaler is None:
            loss.backward()
        else:
            scaler.scale(loss).backward()
        if self._ddp is not None:  # what DDP's reducer does during backward, as one collective
            _all_reduce_mean(
                [p.grad for p in self.params if p.grad is not None], self._ddp.process_group
            )
        if scaler is not None:
            scaler.unscale_(optimizer)
        norm = self._clip_or_measure().float()
        norm_finite = torch.isfinite(norm)
        if scaler is not None:
            found = scaler._found_inf_per_device(optimizer)  # recorded by unscale_, on the device
            overflow = (
                (sum(v.to(self.device) for v in found.values()) > 0).float()
                if found
                else self._zero
            )
            bad = ~finite
            scaler.step(optimizer)  # fused: found_inf handed to the kernel, no host sync
            scaler.update()
        else:
            overflow = self._zero
            bad = ~(finite & norm_finite)
            if self._adagrad_by_hand:  # torch's foreach Adagrad reads its step counter on the host
                adagrad_step(optimizer)  # type: ignore[arg-type]
            elif self._fused:  # the fused kernel skips the update when found_inf is 1
                self._found_inf.copy_(bad.float())
                optimizer.found_inf = self._found_inf  # type: ignore[attr-defined]
                try:
                    optimizer.step()
                finally:
                    del optimizer.found_inf  # type: ignore[attr-defined]
            else:
                optimizer.step()
        with torch.no_grad():
            self.sums += torch.stack(
                [
                    torch.where(finite, detached, self._zero),
                    torch.where(norm_finite, norm, self._zero),
                    overflow,
                    finite.float(),
                ]
            )
            self._first_bad.copy_(
                torch.where(bad & (self._first_bad < 0), self._counter, self._first_bad)
            )
            self._nonfinite += bad.long()
            self._counter += 1

    def _clip_or_measure(self) -> torch.Tensor:
        grads = [p.grad for p in self.params if p.grad is not None]
        if not grads:
            return self._zero
        if self.max_grad_norm is not None:
            return torch.nn.utils.clip_grad_norm_(
                self.params, self.max_grad_norm, foreach=self._foreach
            )
        return torch.nn.utils.get_total_norm(grads, foreach=self._foreach)

    def run(self, batch: Any) -> None:
        """Train on one batch: copy it into the static buffers and replay (no host sync).

        A batch that does not fit the buffers (other structure, shape or dtype) runs the
        same step eagerly and counts in ``eager_steps``. If ``optimizer.load_state_dict``
        was called since capture, the loaded values are first copied into the tensors the
        graph reads.
        """
        if self._graph is None or self._inputs is None:
            self._step(batch)
            return
        if self._rebound():
            self._rebind()
        if self._inputs.load(batch):
            self._graph.replay()
        else:
            self.eager_steps += 1
            self._step(batch)

    def _rebind(self) -> None:
        """After ``optimizer.load_state_dict``: copy loaded values into the captured tensors."""
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
        self._bound_state, self._bound_groups = (
            self.optimizer.state,
            list(self.optimizer.param_groups),
        )

    # ------------------------------------------------------------- read-outs
    def set_lr(self, lr: float) -> None:
        """Set every param group's LR (``fill_`` on the captured tensor; no recapture)."""
        for group in self.optimizer.param_groups:
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(float(lr))
            else:
                group["lr"] = float(lr)

    def reset_sums(self) -> None:
        """Zero :attr:`sums` in place (e.g. at the start of an epoch)."""
        self.sums.zero_()

    def pop_nonfinite(self) -> tuple[int, int | None, int]:
        """Read and clear the non-finite record (one host sync; call every ``log_every`` steps).

        Returns:
            ``(non-finite steps, index of the first one or None, steps run)``, all counted
            since the previous call; the index is 0-based among those steps. A step is
            non-finite when its loss is (fp16), or its loss or gradient norm is (bf16/fp32).
        """
        count, first, steps = torch.stack(
            [self._nonfinite, self._first_bad, self._counter]
        ).tolist()
        self._clear_nonfinite()
        return int(count), (None if first < 0 else int(first)), int(steps)

    def _clear_nonfinite(self) -> None:
        self._nonfinite.zero_()
        self._first_bad.fill_(-1)
        self._counter.zero_()

    def __repr__(self) -> str:
        return (
            f"CapturedStep(precision={self.precision!r}, max_grad_norm={self.max_grad_norm!r}, "
            f"captured={self._graph is not None}, fused={self._fused})"
        )


def __getattr__(name: str) -> Any:
    """``trainkit.captured.CapturedEval`` still works: the class lives in ``trainkit.captured_eval``."""
    if name == "CapturedEval":
        from trainkit.captured_eval import CapturedEval

        return CapturedEval
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
