"""CUDA-graph plumbing shared by the training step and the evaluation step (private).

What every graphed call needs, after PyTorch's "CUDA Graphs" notes: static input buffers a
batch is copied into, a warm-up on a side stream, one capture, and a way back when the
capture fails. :class:`~trainkit.train_step.TrainStep` and
:class:`~trainkit.evaluation.EvalStep` record their one body with :func:`warmup_and_capture`;
nothing here knows about training.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils import _pytree as pytree

__all__ = [
    "ADAM_CLASSES",
    "CaptureError",
    "Snapshot",
    "StaticInputs",
    "all_reduce_mean",
    "batch_why_not",
    "cuda_device",
    "ddp_why_not",
    "first_line",
    "is_fused",
    "make_capturable",
    "warmup_and_capture",
]


# AdamW subclasses Adam only from torch 2.7 on: name both (torch 2.6 is the declared floor)
ADAM_CLASSES = (torch.optim.Adam, torch.optim.AdamW)


class CaptureError(RuntimeError):
    """Capturing failed; the message is one line and the model/optimizer are restored."""


# ------------------------------------------------------------------------------ helpers
def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def cuda_device(model: nn.Module) -> tuple[torch.device | None, str | None]:
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


def is_fused(optimizer: torch.optim.Optimizer) -> bool:
    return all(bool(group.get("fused")) for group in optimizer.param_groups)


def batch_why_not(example_batch: Any, loader: Any) -> str | None:
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


def ddp_why_not(model: nn.parallel.DistributedDataParallel) -> str | None:
    """Why a DDP model's step cannot be captured with the gradient all-reduce in the graph."""
    if model.find_unused_parameters:
        return "DistributedDataParallel(find_unused_parameters=True): which gradients exist may differ per step"
    backend = torch.distributed.get_backend(model.process_group)
    if backend != "nccl":
        return f"DistributedDataParallel over {backend}: the gradient all-reduce in the graph needs NCCL"
    return None


def all_reduce_mean(tensors: list[torch.Tensor], group: Any) -> None:
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
    if not adagrad and not isinstance(optimizer, ADAM_CLASSES):
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


class Snapshot:
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
        self.opt_state_dict = None if optimizer is None else clone_tree(optimizer.state_dict())
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


def clone_tree(tree: Any) -> Any:
    return pytree.tree_map(lambda v: v.detach().clone() if isinstance(v, torch.Tensor) else v, tree)


class StaticInputs:
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


def warmup_and_capture(
    fn: Callable[[], Any],
    warmup_steps: int,
    capture_error_mode: str = "global",
    pool: Any = None,
) -> torch.cuda.CUDAGraph:
    """Run ``fn`` ``warmup_steps`` times on a side stream, then capture one call of it.

    Args:
        fn: What to record (reads and writes only tensors that outlive the graph).
        warmup_steps: Eager calls before capture (lazy state such as optimizer moments).
        capture_error_mode: torch's ``capture_error_mode`` (default ``"global"``).
        pool: A memory pool to share with graphs captured before (replayed in order).

    Returns:
        The captured graph.
    """
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup_steps):
            fn()
    outer = torch.cuda.current_stream()
    outer.wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    pool = torch.cuda.graph_pool_handle() if pool is None else pool
    try:
        with torch.cuda.graph(graph, pool=pool, capture_error_mode=capture_error_mode):  # type: ignore[arg-type]
            fn()
    except BaseException:
        undo_failed_capture(graph, pool, outer)
        raise
    return graph


def undo_failed_capture(graph: torch.cuda.CUDAGraph, pool: Any, stream: torch.cuda.Stream) -> None:
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
