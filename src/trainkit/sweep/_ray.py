"""The Ray backend: one Ray task per run, with its share of a CPU and a GPU.

Ray connects to the cluster named by ``address`` or ``RAY_ADDRESS`` (``ray.init``'s own
rule), else starts a local instance; a session already initialised by the caller is used as
it is. The run directories must be on storage every node sees (the sweep directory is
given as an absolute path). Ray is an optional extra: ``pip install 'trainkit-pt[ray]'``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from typing import Any

from trainkit.sweep._pool import RunFailed, Task
from trainkit.sweep._worker import run_one
from trainkit.sweep.rundir import SweepError

__all__ = ["run_on_ray"]


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise SweepError("the ray backend needs ray: pip install 'trainkit-pt[ray]'") from None
    return ray


def run_on_ray(
    tasks: Iterable[Task],
    train: str,
    threads: int,
    gpus_per_run: float | None,
    address: str | None,
    on_start: Callable[[Task], None],
    on_finish: Callable[[Task, dict[str, Any]], None],
) -> None:
    """Submit every task to Ray and hand on results as they finish.

    Args:
        tasks: The runs.
        train: The ``module:function`` reference (importable on every node: the driver's
            ``sys.path`` is passed on as ``PYTHONPATH``).
        threads: CPUs (and torch threads) per run.
        gpus_per_run: GPU share per run; None: ``1/8`` of a GPU where the cluster has GPUs,
            else 0.
        address: The cluster (None: ``RAY_ADDRESS``, else a local instance).
        on_start, on_finish: Called when a run is submitted and when it finished.

    Raises:
        SweepError: ray is not installed.
        RunFailed: a run raised (the others are cancelled).
    """
    ray = _import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    paths = [os.path.abspath(p) for p in sys.path if p and os.path.isdir(p)]
    runtime_env = {"env_vars": {"PYTHONPATH": os.pathsep.join(paths)}}
    try:
        if gpus_per_run is None:
            gpus_per_run = 0.125 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
        remote = ray.remote(run_one).options(
            num_cpus=threads, num_gpus=gpus_per_run, runtime_env=runtime_env
        )
        waiting: dict[Any, Task] = {}
        for task in tasks:
            waiting[remote.remote(*task.arguments(train, threads))] = task
            on_start(task)
        while waiting:
            done, _ = ray.wait(list(waiting), num_returns=1)
            task = waiting.pop(done[0])
            try:
                record = ray.get(done[0])
            except Exception as exc:
                for reference in waiting:
                    ray.cancel(reference)
                cause = getattr(exc, "cause", None) or exc
                message = str(cause).strip().splitlines()
                raise RunFailed(
                    f"run {task.row} seed {task.seed} failed: {type(cause).__name__}: "
                    f"{message[-1] if message else ''} (see {task.run_dir})"
                ) from None
            on_finish(task, record)
    finally:
        if started_here:
            ray.shutdown()
