"""Seed sweeps for any training function: rows × seeds, exact resume, paired reports.

    from trainkit.sweep import Execution, Sweep, run_sweep

    sweep = Sweep(
        train="mytrain:train",                  # train(config, seed, run_dir) -> {metric: number}
        rows={"small": {"width": 16}, "wide": {"width": 64}},
        seeds=[1, 2, 3, 4, 5],
    )
    report = run_sweep("runs/width", sweep, Execution(jobs=4))   # -> runs/width/report.md

Every row trains with every seed, so results pair up by seed. ``sweep.json`` is written
first and checked on every resume; a run is finished once ``<row>/seed<S>/sweep_result.json``
exists, and a killed sweep continues with :func:`resume_sweep`. Runs execute in this process
(``jobs=1``), on a local pool of worker processes spread over every visible GPU (the
default), or as Ray tasks (``backend="ray"``). The report gives paired differences with
t- and bootstrap intervals, Holm-adjusted verdicts and the smallest detectable difference
(docs/sweep.md). The command line is ``trainkit sweep`` / ``trainkit report``.
"""

from __future__ import annotations

from pathlib import Path

from trainkit.sweep._pool import RunFailed
from trainkit.sweep._report import read_epochs, write_report
from trainkit.sweep._run import Execution, Sweep, default_jobs, resume_sweep, run_sweep
from trainkit.sweep._spec import SWEEP_FILE, Metric, ablation_rows, parse_seeds
from trainkit.sweep._worker import RESULT_FILE, TrainFn, load_train
from trainkit.sweep.rundir import SweepError, differing_fields, locked, read_json, write_json

__all__ = [
    "RESULT_FILE",
    "SWEEP_FILE",
    "Execution",
    "Metric",
    "RunFailed",
    "Sweep",
    "SweepError",
    "TrainFn",
    "ablation_rows",
    "default_jobs",
    "differing_fields",
    "is_sweep_dir",
    "load_train",
    "locked",
    "parse_seeds",
    "read_epochs",
    "read_json",
    "resume_sweep",
    "run_sweep",
    "write_json",
    "write_report",
]


def is_sweep_dir(path: Path) -> bool:
    """True when ``path`` holds a ``sweep.json``."""
    return (Path(path) / SWEEP_FILE).is_file()
