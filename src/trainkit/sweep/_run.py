"""Running a sweep: ``sweep.json`` first, every unfinished run, then the report.

Runs go seed by seed (every row of the first seed, then of the second, ...), so a sweep
stopped half-way already has complete pairs. A run whose ``sweep_result.json`` exists is
finished and never run again; any other run is (re)started in its directory, where the
training function finds whatever an earlier attempt left (its checkpoints) and resumes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from trainkit._validate import check_choice, check_float, check_int
from trainkit.sweep import _spec
from trainkit.sweep._pool import Task, cores, run_in_pool, visible_gpus
from trainkit.sweep._worker import RESULT_FILE, check_result, run_one
from trainkit.sweep.rundir import SweepError, differing_fields, locked, read_json, write_json

__all__ = ["LOG_FILE", "Execution", "Sweep", "default_jobs", "resume_sweep", "run_sweep"]

LOG_FILE = "sweep.log"
RUNS_PER_GPU = 8  # small models leave most of a GPU idle: several runs share one
log = logging.getLogger("trainkit.sweep")


@dataclass(frozen=True)
class Sweep:
    """What to run: rows × seeds of one training function (stored as ``sweep.json``).

    Attributes:
        train: ``"module:function"``; the function is ``train(config, seed, run_dir)`` and
            returns ``{metric: number}`` (strings are shown as information).
        rows: Row name -> the row's configuration (plain JSON data).
        seeds: RNG seeds; every row runs every seed, and runs pair up by seed.
        kind: ``"compare"`` (exactly two rows: the second minus the first), ``"ablation"``
            (each row against ``reference``, with ``design`` and ``changed``) or ``"grid"``
            (each row against ``reference``).
        reference: The row the others are compared with (default: the first).
        shared: Configuration common to every row; ``train`` gets ``{**shared, **row}``.
        title: The report's title.
        metrics: What the report shows (default: every number the runs return, each tested).
        curves: ``(key, label)`` pairs drawn per epoch from each run's ``metrics.jsonl``
            (default: none).
        not_settings: Row fields that describe rather than set (left out of the settings table).
        design: ``"revert"`` or ``"add-one"`` (ablation).
        changed: Row -> the fields it changed from ``reference`` (ablation).
    """

    train: str
    rows: Mapping[str, Mapping[str, Any]]
    seeds: Sequence[int]
    kind: Literal["compare", "ablation", "grid"] = "grid"
    reference: str | None = None
    shared: Mapping[str, Any] = field(default_factory=dict)
    title: str = "sweep"
    metrics: Sequence[_spec.Metric] | None = None
    curves: Sequence[tuple[str, str]] | None = None
    not_settings: Sequence[str] = ()
    design: str | None = None
    changed: Mapping[str, Sequence[str]] | None = None

    def to_spec(self, path: Path) -> dict[str, Any]:
        """The ``sweep.json`` content, checked as a resume will check it.

        Raises:
            SweepError: any field that a resume would refuse, naming it.
        """
        spec = {
            "format": _spec.FORMAT,
            "kind": self.kind,
            "title": self.title,
            "train": self.train,
            "seeds": list(self.seeds) if isinstance(self.seeds, (list, tuple)) else self.seeds,
            "rows": _spec.as_json(dict(self.rows), "rows"),
            "reference": self.reference
            if self.reference is not None
            else next(iter(self.rows), ""),
            "shared": _spec.as_json(dict(self.shared), "shared"),
            "metrics": None if self.metrics is None else [m.to_dict() for m in self.metrics],
            "curves": None if self.curves is None else [list(pair) for pair in self.curves],
            "not_settings": list(self.not_settings),
            "design": self.design,
            "changed": None
            if self.changed is None
            else {row: list(fields) for row, fields in self.changed.items()},
        }
        return _spec.check_spec(spec, path)


@dataclass(frozen=True)
class Execution:
    """How to run a sweep; never part of its results.

    Attributes:
        jobs: Runs at once (None: :func:`default_jobs`). Results do not depend on it.
        backend: ``"local"`` (this machine: ``jobs`` worker processes; 1: in this process)
            or ``"ray"`` (one Ray task per run).
        threads_per_run: torch threads of each run (None: 1 on CPU, the cores shared out
            on GPU). CPU results may depend on it (summation order), so it is fixed
            rather than derived from ``jobs``.
        gpus_per_run: Ray's GPU share per run (None: 1/8 where the cluster has GPUs).
        ray_address: The Ray cluster (None: ``RAY_ADDRESS``, else a local instance).
    """

    jobs: int | None = None
    backend: Literal["local", "ray"] = "local"
    threads_per_run: int | None = None
    gpus_per_run: float | None = None
    ray_address: str | None = None

    def __post_init__(self) -> None:
        if self.jobs is not None:
            check_int("jobs", self.jobs, minimum=1, maximum=4096)
        check_choice("backend", self.backend, ("local", "ray"))
        if self.threads_per_run is not None:
            check_int("threads_per_run", self.threads_per_run, minimum=1, maximum=1024)
        if self.gpus_per_run is not None:
            check_float("gpus_per_run", self.gpus_per_run, minimum=0.0, maximum=8.0)


def default_jobs(threads_per_run: int | None = None) -> int:
    """Runs at once that use this machine: 8 per visible GPU (at most the cores), else
    the cores divided by ``threads_per_run`` (default 1)."""
    gpus = visible_gpus()
    if gpus:
        return max(1, min(RUNS_PER_GPU * len(gpus), cores()))
    return max(1, cores() // (threads_per_run or 1))


def _threads(execution: Execution, jobs: int, gpus: list[str]) -> int:
    if execution.threads_per_run is not None:
        return execution.threads_per_run
    return max(1, cores() // jobs) if gpus else 1


def run_sweep(out_dir: Path, sweep: Sweep, execution: Execution | None = None) -> Path:
    """Run ``sweep`` in ``out_dir`` and write its report.

    ``sweep.json`` is checked completely, then written before the first run; an
    ``out_dir`` holding the same sweep continues it.

    Args:
        out_dir: The sweep directory (created).
        sweep: What to run.
        execution: How (default: every GPU or core of this machine).

    Returns:
        The path of ``report.md``.

    Raises:
        SweepError: a bad sweep (nothing is written), ``out_dir`` holding another sweep or
            in use, a malformed finished run, or a run that failed.
    """
    out_dir = Path(out_dir).absolute()
    path = out_dir / _spec.SWEEP_FILE
    spec = sweep.to_spec(path)
    out_dir.mkdir(parents=True, exist_ok=True)
    with locked(out_dir):
        if path.is_file():
            if _spec.read_spec(out_dir) != spec:
                raise SweepError(
                    f"{path} holds a different sweep: resume it, or choose another directory"
                )
        else:
            write_json(path, spec)
        _execute(out_dir, spec, execution or Execution())
    return _report(out_dir)


def resume_sweep(out_dir: Path, execution: Execution | None = None) -> Path:
    """Finish a sweep that was stopped (or rewrite the report of a finished one).

    ``sweep.json`` is checked exactly as at creation, and every finished run against it,
    before anything runs.

    Args:
        out_dir: A sweep directory.
        execution: How to run what is left.

    Returns:
        The path of ``report.md``.

    Raises:
        SweepError: ``sweep.json`` missing or malformed, a finished run that does not match
            its row, the directory in use, or a run that failed.
    """
    out_dir = Path(out_dir).absolute()
    spec = _spec.read_spec(out_dir)
    with locked(out_dir):
        _execute(out_dir, spec, execution or Execution())
    return _report(out_dir)


def _report(out_dir: Path) -> Path:
    from trainkit.sweep._report import write_report

    report = write_report(out_dir)
    _progress(out_dir, f"report: {report}")
    return report


def run_dir_of(out_dir: Path, row: str, seed: int) -> Path:
    """Where one run of a sweep lives: ``out_dir/<row>/seed<seed>``."""
    return Path(out_dir) / row / f"seed{seed}"


def row_config(spec: Mapping[str, Any], row: str) -> dict[str, Any]:
    """What ``train`` gets for ``row``: the shared values, then the row's own."""
    return {**spec["shared"], **spec["rows"][row]}


def read_record(out_dir: Path, spec: Mapping[str, Any], row: str, seed: int) -> dict[str, Any]:
    """A finished run's ``sweep_result.json``, checked against ``sweep.json``.

    Raises:
        SweepError: not JSON, another row or seed, a configuration that differs from its
            row's (naming the fields), or a malformed result.
    """
    path = run_dir_of(out_dir, row, seed) / RESULT_FILE
    record = read_json(path, " (delete it to train that run again)")
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise SweepError(
            f"{path}: field 'config' is missing (delete the file to train that run again)"
        )
    if record.get("row") != row or record.get("seed") != seed:
        raise SweepError(
            f"{path}: field 'row'/'seed' says {record.get('row')!r} seed {record.get('seed')!r}, not {row!r} seed {seed}"
        )
    differ = differing_fields(record["config"], row_config(spec, row))
    if differ:
        raise SweepError(
            f"{path}: field 'config' differs from row {row!r} of sweep.json in {', '.join(differ)} "
            "(the row was edited after this run finished)"
        )
    record["result"] = check_result(record.get("result"), f"{path}: field 'result'")
    try:
        check_float(f"{path}: field 'seconds'", record.get("seconds"))
    except ValueError as error:
        raise SweepError(str(error)) from None
    return record


def _execute(out_dir: Path, spec: Mapping[str, Any], execution: Execution) -> None:
    """Run every unfinished run (every finished one is checked first)."""
    plan = [(row, seed) for seed in spec["seeds"] for row in spec["rows"]]
    finished = set()
    for row, seed in plan:
        if (run_dir_of(out_dir, row, seed) / RESULT_FILE).is_file():
            read_record(out_dir, spec, row, seed)
            finished.add((row, seed))
    tasks = []
    for number, (row, seed) in enumerate(plan, start=1):
        run_dir = run_dir_of(out_dir, row, seed)
        if (row, seed) in finished:
            _progress(
                out_dir,
                f"run {number}/{len(plan)}: {row} seed {seed} finished already ({run_dir / RESULT_FILE})",
            )
        else:
            tasks.append(Task(number, row, seed, row_config(spec, row), run_dir))
    if not tasks:
        return
    progress = _Progress(out_dir, len(plan), len(tasks), _primary(spec))
    gpus = visible_gpus() if execution.backend == "local" else []
    jobs = execution.jobs or default_jobs(execution.threads_per_run)
    threads = _threads(execution, jobs, gpus)
    train = spec["train"]
    if execution.backend == "ray":
        from trainkit.sweep._ray import run_on_ray

        run_on_ray(
            tasks,
            train,
            threads,
            execution.gpus_per_run,
            execution.ray_address,
            progress.start,
            progress.finish,
        )
    elif jobs == 1:
        for task in tasks:
            progress.start(task)
            progress.finish(task, run_one(*task.arguments(train, threads)))
    else:
        _progress(
            out_dir,
            f"{len(tasks)} runs on {min(jobs, len(tasks))} processes ({'GPUs ' + ','.join(gpus) if gpus else 'CPU'}, {threads} thread{'s' if threads > 1 else ''} each); their output: {out_dir / 'workers'}/",
        )
        run_in_pool(
            tasks, train, jobs, threads, gpus, out_dir / "workers", progress.start, progress.finish
        )


def _primary(spec: Mapping[str, Any]) -> tuple[str, str] | None:
    """The first metric's name and label (None: the report takes every number returned)."""
    metrics = spec.get("metrics")
    return (metrics[0]["name"], metrics[0]["label"]) if metrics else None


class _Progress:
    """One line per run started and finished, with the sweep's ETA, in the log and sweep.log."""

    def __init__(
        self, out_dir: Path, total: int, todo: int, primary: tuple[str, str] | None
    ) -> None:
        self.out_dir, self.total, self.todo, self.primary = out_dir, total, todo, primary
        self.done = 0
        self.began = time.perf_counter()

    def start(self, task: Task) -> None:
        resumed = task.run_dir.is_dir() and any(task.run_dir.iterdir())
        _progress(
            self.out_dir,
            f"run {task.number}/{self.total}: {task.row} seed {task.seed} {'resumed' if resumed else 'started'}",
        )

    def finish(self, task: Task, record: Mapping[str, Any]) -> None:
        self.done += 1
        result = record["result"]
        if self.primary is not None:
            name, label = self.primary
        else:  # every number is reported: show the first
            name = next((k for k, v in result.items() if isinstance(v, float)), "")
            label = name
        shown = f"{label} {result[name]:.4g}, " if isinstance(result.get(name), float) else ""
        left = self.todo - self.done
        elapsed = time.perf_counter() - self.began
        eta = f"ETA {_duration(elapsed * left / self.done)}" if left else "all done"
        _progress(
            self.out_dir,
            f"run {task.number}/{self.total}: {task.row} seed {task.seed} finished: {shown}"
            f"{record['seconds']:.1f} s; {self.done}/{self.todo} this session, {eta}",
        )


def _duration(seconds: float) -> str:
    """``"42 s"``, ``"3 min 05 s"``, ``"2 h 04 min"``."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def _progress(out_dir: Path, line: str) -> None:
    """Log one progress line and append it to ``out_dir/sweep.log``."""
    log.info("%s", line)
    with open(out_dir / LOG_FILE, "a", encoding="utf-8") as handle:
        handle.write(line + "\n")
