"""Data-parallel helpers for a ``torchrun`` launch: one process per device.

Everything here is a no-op in a single process, so code written against it runs unchanged
with or without ``torchrun``. The rules it enforces (docs/distributed.md): decisions that
end loops are made once (on rank 0) and broadcast, metrics are reduced as sums and counts,
only rank 0 writes files and logs. :func:`prepare` is the one setup call: join the group,
wrap the model in DDP, give each loader its shard.
"""

from __future__ import annotations

import datetime
import os
import sys
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "DistributedContext",
    "all_gather_interleaved",
    "all_gather_object",
    "all_reduce_sum",
    "barrier",
    "broadcast_object",
    "context",
    "exit_process",
    "init_from_env",
    "launched_by_torchrun",
    "on_main",
    "prepare",
    "release_at_shutdown",
    "shutdown",
    "unwrap",
]


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in a data-parallel job.

    Attributes:
        rank: Global rank (0 in a single process).
        world_size: Number of processes (1 in a single process).
        local_rank: Rank on this host; the CUDA device index to use.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that writes files and logs."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """Whether the environment variables of a multi-process ``torchrun`` launch are set."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def init_from_env(device_type: str = "cpu", timeout_s: float = 600.0) -> DistributedContext:
    """Join the process group of a ``torchrun`` launch (NCCL on CUDA, gloo on CPU).

    Args:
        device_type: ``"cuda"`` or ``"cpu"``.
        timeout_s: Collective timeout; a rank that never arrives fails the job after this.

    Returns:
        The context; a single-process one when not launched by ``torchrun``.

    Raises:
        ValueError: ``device_type`` is ``"cuda"`` but there are fewer devices than local ranks.
    """
    if dist.is_available() and dist.is_initialized():
        return context()
    if not launched_by_torchrun():
        return DistributedContext()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"LOCAL_RANK {local_rank} has no CUDA device ({torch.cuda.device_count()} visible)"
            )
        torch.cuda.set_device(local_rank)
    backend = "nccl" if device_type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return context()


def prepare(
    model: nn.Module,
    device: torch.device,
    train_loader: Iterable[Any] | None,
    *eval_loaders: Iterable[Any] | None,
) -> tuple[nn.Module, DistributedContext]:
    """Set up data parallelism for a ``torchrun`` launch; in a single process, change nothing.

    Joins the process group, wraps ``model`` in ``DistributedDataParallel`` (on CUDA built on
    a side stream, so that a step using it can be captured; docs/captured.md) and calls
    ``loader.shard(rank, world_size, even=...)`` on the loaders that have it
    (:class:`~trainkit.batching.TensorBatches`): even shards for training (every rank
    takes the same number of steps), disjoint uneven ones for evaluation (every sample
    counted once). Other loaders must already be sharded (e.g. a ``DistributedSampler``).

    Args:
        model: The model, already on ``device``.
        device: The training device (its index, or the local rank, picks the CUDA device).
        train_loader: The training batches (None: none).
        eval_loaders: Validation/test batches (None entries are skipped).

    Returns:
        ``(model, context)``: the DDP-wrapped model (``model`` itself in one process).
    """
    ctx = init_from_env(device.type)
    if not ctx.enabled:
        return model, ctx
    from torch.nn.parallel import DistributedDataParallel

    device_ids = (
        [device.index if device.index is not None else ctx.local_rank]
        if device.type == "cuda"
        else None
    )
    # DDP creates every parameter's AccumulateGrad node here, and autograd runs that node on the
    # stream it was created on: on the default (legacy) stream it would make a captured step's
    # backward depend on that stream and break the capture (docs/captured.md).
    side = torch.cuda.Stream(device_ids[0]) if device_ids else None
    if side is not None:
        side.wait_stream(torch.cuda.current_stream(side.device))
    with torch.cuda.stream(side):  # None: the current stream
        wrapped = DistributedDataParallel(model, device_ids=device_ids)
    if side is not None:
        torch.cuda.current_stream(side.device).wait_stream(side)
    for loader, even in ((train_loader, True), *((loader, False) for loader in eval_loaders)):
        if loader is not None and hasattr(loader, "shard"):
            loader.shard(ctx.rank, ctx.world_size, even=even)
    return wrapped, ctx


def unwrap(model: nn.Module) -> nn.Module:
    """The module whose ``state_dict`` to save: undoes DDP and ``torch.compile`` wrappers."""
    while isinstance(
        inner := getattr(model, "_orig_mod", None) or getattr(model, "module", None), nn.Module
    ):
        model = inner
    return model


T = TypeVar("T")


def on_main(
    action: Callable[[], T], errors: type[Exception] = Exception, what: str = "save"
) -> T | None:
    """Run ``action`` on rank 0 only; an ``errors`` exception there raises on every rank.

    Every rank must call this at the same point (it is also a barrier). In a single process
    it is ``action()``. Rank 0 re-raises its own exception; the others raise one of the same
    type whose message starts with "rank 0 could not {what}: ". So no rank is left waiting at
    a collective when rank 0 failed (a full disk while saving, say).

    Returns:
        ``action()``'s value on rank 0, None on the other ranks.
    """
    ctx = context()
    if not ctx.enabled:
        return action()
    result, error, caught = None, None, None
    if ctx.is_main:
        try:
            result = action()
        except errors as exc:
            error, caught = str(exc), exc
    error = broadcast_object(error)
    if caught is not None:
        raise caught
    if error is not None:
        raise errors(f"rank 0 could not {what}: {error}")
    return result


def context() -> DistributedContext:
    """The current process's context (single-process when no group is initialised)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistributedContext()
    return DistributedContext(
        dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))
    )


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all processes in place (identity in a single process); returns it."""
    if context().enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(value: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``value`` on every process (``value`` itself in a single process)."""
    if not context().enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(value: Any) -> list[Any]:
    """Every rank's ``value``, in rank order (``[value]`` in a single process)."""
    ctx = context()
    if not ctx.enabled:
        return [value]
    gathered: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def all_gather_interleaved(values: list[float]) -> list[float]:
    """Every rank's per-batch ``values``, interleaved batch by batch (``values`` in one process).

    Rank 0's first batch, rank 1's first batch, ..., then the second batches; a rank with
    fewer batches (uneven evaluation shards) drops out when its list ends.
    """
    per_rank = all_gather_object(values)
    return [
        part[i]
        for i in range(max(map(len, per_rank), default=0))
        for part in per_rank
        if i < len(part)
    ]


def barrier() -> None:
    """Wait for every process (no-op in a single process)."""
    if context().enabled:
        dist.barrier()


_GRAPHS_WITH_COLLECTIVES: weakref.WeakSet[Any] = weakref.WeakSet()


def release_at_shutdown(graph: torch.cuda.CUDAGraph) -> None:
    """Have :func:`shutdown` reset ``graph``, a CUDA graph with captured collectives, first.

    NCCL's communicator waits, when it is destroyed, until every CUDA graph that holds one
    of its collectives is gone: with such a graph alive, ``destroy_process_group`` never
    returns. :class:`~trainkit.train_step.TrainStep` registers its graphs for a DDP model.
    """
    _GRAPHS_WITH_COLLECTIVES.add(graph)


def shutdown() -> None:
    """Wait for every process, then leave the process group (no-op without one).

    CUDA graphs registered with :func:`release_at_shutdown` are reset (made unusable) before
    the group is destroyed.
    """
    if dist.is_available() and dist.is_initialized():
        if context().enabled:
            dist.barrier()
        graphs = list(_GRAPHS_WITH_COLLECTIVES)
        for graph in graphs:
            graph.reset()
        _GRAPHS_WITH_COLLECTIVES.clear()
        if graphs:
            torch.cuda.synchronize()
        dist.destroy_process_group()


def exit_process(status: int) -> None:
    """End a process of a torchrun job with ``status``, skipping interpreter finalisation.

    gloo's worker threads can abort the interpreter's teardown (``terminate called without
    an active exception``, SIGABRT) even after ``destroy_process_group``; output is flushed
    first. In a single process this is ``sys.exit(status)``.
    """
    if not launched_by_torchrun():
        sys.exit(status)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
