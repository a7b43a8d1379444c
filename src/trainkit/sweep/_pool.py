"""The local process pool: ``jobs`` worker processes, each bound to one GPU (or none).

Each worker is a fresh ``spawn`` process that keeps running runs until the sweep ends, so
torch is imported once per worker, not once per run. Worker ``k`` sees only GPU
``gpus[k % len(gpus)]`` (``CUDA_VISIBLE_DEVICES``), so several runs share a GPU where the
model is small; its output goes to ``<sweep>/workers/worker<k>.log``. On Linux a worker gets
SIGTERM when the sweep's process dies, even by SIGKILL (``PR_SET_PDEATHSIG``), so a killed
sweep leaves no run behind holding its lock.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import traceback
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainkit.sweep._worker import run_one
from trainkit.sweep.rundir import SweepError

__all__ = ["RunFailed", "Task", "cores", "run_in_pool", "visible_gpus"]

_PR_SET_PDEATHSIG = 1


class RunFailed(SweepError):
    """A run raised: the message names the run and the error (one line)."""


@dataclass(frozen=True)
class Task:
    """One run to execute: its place in the plan and the arguments of :func:`run_one`."""

    number: int
    row: str
    seed: int
    config: dict[str, Any]
    run_dir: Path

    def arguments(self, train: str, threads: int) -> tuple[Any, ...]:
        """The positional arguments of :func:`run_one` for this run."""
        return (train, self.row, self.seed, self.config, str(self.run_dir), threads)


def cores() -> int:
    """CPU cores this process may use (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def visible_gpus() -> list[str]:
    """The CUDA devices this process sees, as ``CUDA_VISIBLE_DEVICES`` entries (empty: none)."""
    import torch

    if not torch.cuda.is_available():
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed:
        return [entry.strip() for entry in listed.split(",") if entry.strip()]
    return [str(index) for index in range(torch.cuda.device_count())]


def _die_with_parent() -> None:
    """Ask Linux to send this process SIGTERM when its parent dies (no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _worker_main(
    connection: multiprocessing.connection.Connection, gpu: str | None, log_path: str
) -> None:
    """A worker's life: set up its device and output, then run what it is sent until ``None``."""
    _die_with_parent()
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    # Kept open for the life of the process: its stdout and stderr from here on.
    log_file = open(log_path, "a", buffering=1, encoding="utf-8")
    os.dup2(log_file.fileno(), 1)
    os.dup2(log_file.fileno(), 2)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    while True:
        try:
            arguments = connection.recv()
        except EOFError:  # the sweep is gone
            return
        if arguments is None:
            return
        try:
            connection.send(("done", run_one(*arguments)))
        except BaseException as exc:
            traceback.print_exc()
            message = str(exc).splitlines()[0] if str(exc) else ""
            connection.send(("failed", f"{type(exc).__name__}: {message}".rstrip(": ")))
            if not isinstance(exc, Exception):
                return


class _Worker:
    """One worker process and the pipe to it."""

    def __init__(self, context: Any, index: int, gpu: str | None, log_dir: Path) -> None:
        self.index = index
        self.connection, child = context.Pipe()
        log_path = str(log_dir / f"worker{index}.log")
        self.process = context.Process(
            target=_worker_main, args=(child, gpu, log_path), name=f"trainkit-sweep-{index}"
        )
        self.process.start()
        child.close()
        self.task: Task | None = None

    def stop(self, wait: float) -> None:
        """Ask the worker to exit; terminate it if it is still running after ``wait`` seconds."""
        with contextlib.suppress(OSError):
            self.connection.send(None)
        self.process.join(wait)
        if self.process.is_alive():
            self.process.terminate()  # SIGTERM: a Trainer checkpoints and stops
            self.process.join(30)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.connection.close()


def run_in_pool(
    tasks: Iterable[Task],
    train: str,
    jobs: int,
    threads: int,
    gpus: list[str],
    log_dir: Path,
    on_start: Callable[[Task], None],
    on_finish: Callable[[Task, dict[str, Any]], None],
) -> None:
    """Run ``tasks`` on ``jobs`` worker processes, in order, each as soon as a worker is free.

    Args:
        tasks: The runs, in the order they should start.
        train: The ``module:function`` reference.
        jobs: Worker processes (>= 1).
        threads: torch threads per run.
        gpus: ``CUDA_VISIBLE_DEVICES`` entries to spread the workers over (empty: CPU).
        log_dir: Where ``worker<k>.log`` go.
        on_start, on_finish: Called in this process when a run starts and when it finished.

    Raises:
        RunFailed: a run raised (the others running are stopped: SIGTERM, so a Trainer
            writes its checkpoint; a resume continues them).
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    context = multiprocessing.get_context("spawn")
    pending = deque(tasks)
    workers = [
        _Worker(context, k, gpus[k % len(gpus)] if gpus else None, log_dir)
        for k in range(min(jobs, len(pending)))
    ]
    failed = True
    try:
        while True:
            for worker in workers:
                if worker.task is None and pending:
                    worker.task = pending.popleft()
                    on_start(worker.task)
                    worker.connection.send(worker.task.arguments(train, threads))
            busy = [worker for worker in workers if worker.task is not None]
            if not busy:
                break
            _collect(busy, on_finish)
        failed = False
    finally:
        for worker in workers:
            worker.stop(wait=30.0 if not failed and worker.task is None else 0.0)


def _collect(busy: list[_Worker], on_finish: Callable[[Task, dict[str, Any]], None]) -> None:
    """Wait for at least one busy worker to answer (or die) and hand its result on."""
    waitables: list[Any] = [worker.connection for worker in busy]
    waitables += [worker.process.sentinel for worker in busy]
    ready = multiprocessing.connection.wait(waitables)
    for worker in busy:
        task = worker.task
        assert task is not None
        if worker.connection in ready or worker.connection.poll():
            try:
                status, value = worker.connection.recv()
            except EOFError:
                status, value = "failed", f"its worker exited with status {worker.process.exitcode}"
            worker.task = None
            if status == "failed":
                raise RunFailed(
                    f"run {task.row} seed {task.seed} failed: {value} (see {task.run_dir})"
                )
            on_finish(task, value)
        elif worker.process.sentinel in ready:
            worker.process.join()
            worker.task = None
            raise RunFailed(
                f"run {task.row} seed {task.seed}: its worker process died "
                f"(exit status {worker.process.exitcode}); resume the sweep to continue it"
            )
