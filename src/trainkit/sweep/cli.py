"""The ``trainkit`` command: ``trainkit sweep ...`` and ``trainkit report ...``.

Installed as a console script (``[project.scripts]``) and as ``python -m trainkit``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trainkit.sweep._report import write_report
from trainkit.sweep._run import Execution, Sweep, resume_sweep, run_sweep
from trainkit.sweep._spec import Metric, check_row_name, parse_seeds
from trainkit.sweep.rundir import SweepError, read_json

__all__ = ["main"]

EXAMPLE = """\
example: a file mytrain.py in the current directory,

    import torch

    def train(config, seed, run_dir):
        torch.manual_seed(seed)
        x = torch.randn(512, 8)
        y = x @ torch.arange(8.0) + 0.3 * torch.randn(512)
        model = torch.nn.Linear(8, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=config["lr"])
        for _ in range(config["steps"]):
            loss = torch.nn.functional.mse_loss(model(x).squeeze(1), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return {"loss": loss.item()}

compared over 5 seeds, 2 runs at a time:

    trainkit sweep --train mytrain:train --shared '{"steps": 50}' \\
        --row slow='{"lr": 0.01}' --row fast='{"lr": 0.05}' --seeds 5 --out runs/lr --jobs 2
    trainkit sweep --resume runs/lr          # after a kill: finished runs are kept
    trainkit report runs/lr                  # rewrite runs/lr/report.md

The function gets {**shared, **row}, the seed and its own run directory (resume from
checkpoints you write there), and returns numbers (the metrics) and strings (shown as
information). docs/sweep.md has the details.
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trainkit",
        description="Seed sweeps of any training function, with paired reports.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{sweep,report}")
    sweep = commands.add_parser(
        "sweep",
        help="run (or --resume) rows x seeds of a training function",
        description="Run rows x seeds of a training function, then write report.md.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sweep.add_argument(
        "--train", metavar="MODULE:FUNCTION", help="train(config, seed, run_dir) -> dict"
    )
    sweep.add_argument(
        "--row",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="one row: its name and its configuration as a JSON object (repeat for each row)",
    )
    sweep.add_argument(
        "--rows", type=Path, metavar="FILE", help="rows as a JSON object {name: config}"
    )
    sweep.add_argument(
        "--shared", default="{}", metavar="JSON", help="configuration every row gets"
    )
    sweep.add_argument(
        "--seeds", help="a count N (seeds FIRST..FIRST+N-1) or a list 1,2,3 (default 5)"
    )
    sweep.add_argument("--first-seed", type=int, default=0, metavar="FIRST", help="default 0")
    sweep.add_argument(
        "--metric",
        action="append",
        default=[],
        metavar="NAME",
        help="report these (default: every number returned)",
    )
    sweep.add_argument("--title", default="sweep", help="the report's title")
    sweep.add_argument("--out", type=Path, help="the sweep directory (created)")
    sweep.add_argument("--resume", type=Path, metavar="DIR", help="finish the sweep in DIR")
    _execution_flags(sweep)
    report = commands.add_parser("report", help="(re)write report.md of a finished sweep")
    report.add_argument("directory", type=Path)
    return parser


def _execution_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--jobs", type=int, help="runs at once (default: 8 per GPU, else one per core)"
    )
    parser.add_argument(
        "--threads-per-run", type=int, help="torch threads per run (default: 1 on CPU)"
    )
    parser.add_argument(
        "--backend", choices=("local", "ray"), default="local", help="default: local"
    )
    parser.add_argument(
        "--ray-address", help="Ray cluster (default: $RAY_ADDRESS, else a local one)"
    )
    parser.add_argument(
        "--gpus-per-run", type=float, help="Ray: GPU share per run (default 1/8 with GPUs)"
    )


def _json_object(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise SweepError(f"{what} is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise SweepError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _rows(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    if args.rows is not None:
        loaded = read_json(args.rows)
        if not isinstance(loaded, dict):
            raise SweepError(f"--rows {args.rows}: expected a JSON object of rows")
        for name, config in loaded.items():
            check_row_name(name, f"--rows {args.rows}")
            if not isinstance(config, dict):
                raise SweepError(f"--rows {args.rows}: row {name!r} must be a JSON object")
            rows[name] = config
    for entry in args.row:
        name, equals, text = entry.partition("=")
        if not equals:
            raise SweepError(f"--row must be NAME=JSON, got {entry!r}")
        check_row_name(name, "--row")
        if name in rows:
            raise SweepError(f"--row {name}: a row of that name is given twice")
        rows[name] = _json_object(text, f"--row {name}")
    if not rows:
        raise SweepError("give the rows: --row NAME=JSON (repeat) or --rows FILE")
    return rows


def _sweep_command(args: argparse.Namespace) -> Path:
    execution = Execution(
        jobs=args.jobs,
        backend=args.backend,
        threads_per_run=args.threads_per_run,
        gpus_per_run=args.gpus_per_run,
        ray_address=args.ray_address,
    )
    if args.resume is not None:
        given = [
            flag
            for flag, value in (
                ("--train", args.train),
                ("--row", args.row),
                ("--rows", args.rows),
                ("--shared", args.shared != "{}"),
                ("--seeds", args.seeds),
                ("--metric", args.metric),
                ("--out", args.out),
            )
            if value
        ]
        if given:
            raise SweepError(
                f"--resume {args.resume}: {', '.join(given)} cannot change a sweep (its sweep.json "
                "fixes it); leave it out, or start a new sweep"
            )
        return resume_sweep(args.resume, execution)
    if args.train is None or args.out is None:
        raise SweepError(
            "a new sweep needs --train MODULE:FUNCTION and --out DIR (or --resume DIR)"
        )
    rows = _rows(args)
    sweep = Sweep(
        train=args.train,
        rows=rows,
        seeds=parse_seeds(args.seeds or "5", args.first_seed),
        kind="compare" if len(rows) == 2 else "grid",
        shared=_json_object(args.shared, "--shared"),
        title=args.title,
        metrics=[Metric(name, name, 3, True) for name in args.metric] or None,
    )
    if args.out.exists() and not (args.out / "sweep.json").is_file():
        raise SweepError(f"--out {args.out} exists and holds no sweep: choose a new directory")
    return run_sweep(args.out, sweep, execution)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``trainkit`` command; returns the exit status (2: bad input, one line)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stdout
    )
    if os.getcwd() not in sys.path:  # train functions next to the caller import, as with python -m
        sys.path.insert(0, os.getcwd())
    try:
        if args.command == "report":
            print(f"report: {write_report(args.directory)}")
        else:
            _sweep_command(args)  # its last progress line names the report
    except (SweepError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        where = args.resume or getattr(args, "out", None) or getattr(args, "directory", "")
        print(f"interrupted: continue with trainkit sweep --resume {where}", file=sys.stderr)
        return 130
    return 0
