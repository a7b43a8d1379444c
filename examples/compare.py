"""Multi-seed sweeps: ``--recipe compare`` and ``--recipe ablate`` of ``pointer_v45.py``.

    report = run_compare({"original": original, "proposed": proposed}, out_dir, [1, 2, 3, 4, 5], run_one)
    report = run_ablation(proposed, original, out_dir, [1, 2, 3, 4, 5], run_one)
    if is_sweep_dir(out_dir):
        report = resume_sweep(out_dir, run_one, recipe_from_dict)

A sweep trains several recipes ("rows") with the same RNG seeds, so that results pair up by
seed, then writes ``report.md`` with paired differences and confidence intervals
(``examples/compare_report.py``, ``trainkit.stats``; docs/compare.md). The training itself is
the caller's ``run_one(recipe, run_dir, resume) -> results``, which must write
``run_dir/results.json``; this module never imports the model code.

Directory layout::

    out_dir/sweep.json              written first: kind, seeds, rows (recipe dicts)
    out_dir/sweep.log               one line per run started / finished
    out_dir/<row>/seed<S>/          one run: config.json, metrics.jsonl, results.json, ...
    out_dir/report.md + *.png       written when every run has finished

A killed sweep resumes with :func:`resume_sweep`: a run whose ``results.json`` exists is
kept, a run with a ``config.json`` but no results is resumed (``resume=True``), any other is
started. Runs go seed by seed (every row of seed 1, then of seed 2, ...), so a sweep killed
half-way has complete pairs to look at.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from trainkit.atomic import atomic_write
from trainkit.recipes import Recipe

__all__ = [
    "ABLATION_ROWS",
    "RunOne",
    "SweepError",
    "is_sweep_dir",
    "resume_sweep",
    "run_ablation",
    "run_compare",
]

RunOne = Callable[[Recipe, Path, bool], dict]
"""``run_one(recipe, run_dir, resume) -> results``: trains ``recipe`` (its ``seed`` and
``epochs`` fields included) in ``run_dir`` and writes ``run_dir/results.json``."""

# The ablation ladder: each row starts from the proposed recipe and takes these Recipe fields
# from the original recipe. Recipe field names live only here (rename them here).
ABLATION_ROWS: dict[str, tuple[str, ...]] = {
    "optimizer": ("optimizer", "lr", "initial_accumulator_value", "betas", "eps", "weight_decay"),
    "schedule": ("schedule",),
    "clip": ("max_grad_norm",),
    "loss": ("loss", "label_smoothing"),
    "selection": ("selection", "running_avg_decay", "running_avg_clip", "patience", "min_epochs"),
    "precision": ("precision", "amp"),
}
BASE_ROW = "base"
SWEEP_FILE = "sweep.json"
LOG_FILE = "sweep.log"
# Values every results.json must hold: (block or None, key). The report reads exactly these.
RESULT_KEYS: tuple[tuple[str | None, str], ...] = (
    ("test", "acc@1"),
    ("test", "acc@5"),
    ("test", "mrr"),
    ("test", "acc@1_seen"),
    (None, "best_epoch"),
    (None, "wall_time_s"),
)

log = logging.getLogger("compare")


class SweepError(ValueError):
    """A sweep directory that cannot be used as it is; the message is one line naming the file."""


# ------------------------------------------------------------------------------ entry points
def run_compare(base: dict[str, Recipe], out_dir: Path, seeds: list[int], run_one: RunOne) -> Path:
    """Train two recipes with the same seeds, paired by seed, and write the report.

    Args:
        base: Exactly two rows, ``{name: recipe}``; the report gives second minus first
            (``{"original": ..., "proposed": ...}``: proposed - original).
        out_dir: The sweep directory (created; may already hold this same sweep).
        seeds: RNG seeds, each run as ``recipe.replace(seed=s)``.
        run_one: Trains one recipe in one run directory (see :data:`RunOne`).

    Returns:
        The path of ``report.md``.

    Raises:
        ValueError: not two rows, a bad row name or seed list, or ``out_dir`` holding a
            different sweep.
        SweepError: a run's ``results.json`` is malformed.
    """
    if len(base) != 2:
        raise ValueError(f"base must hold exactly two recipes, got {len(base)}: {sorted(base)}")
    return _sweep(Path(out_dir), "compare", dict(base), seeds, run_one, {})


def run_ablation(
    proposed: Recipe, original: Recipe, out_dir: Path, seeds: list[int], run_one: RunOne
) -> Path:
    """The ablation ladder: the proposed recipe, and one row per difference reverted to the original.

    Rows: ``base`` (the proposed recipe) and one row per entry of :data:`ABLATION_ROWS`,
    each the proposed recipe with that group of fields set to the original's values.

    Args:
        proposed: The starting recipe (the ``base`` row).
        original: Where each row takes its reverted values from.
        out_dir: The sweep directory.
        seeds: RNG seeds (every row runs every seed).
        run_one: Trains one recipe in one run directory.

    Returns:
        The path of ``report.md``.

    Raises:
        ValueError: a row whose fields already agree (it would train the base again), an
            unknown field name in :data:`ABLATION_ROWS`, bad seeds or a different sweep in
            ``out_dir``.
        SweepError: a run's ``results.json`` is malformed.
    """
    rows: dict[str, Recipe] = {BASE_ROW: proposed}
    reverted: dict[str, list[str]] = {}
    for row, fields in ABLATION_ROWS.items():
        changes = {field: getattr(original, field) for field in fields if hasattr(original, field)}
        missing = [field for field in fields if field not in changes]
        if missing:
            raise ValueError(f"ABLATION_ROWS[{row!r}] names unknown recipe field(s) {missing}")
        if all(getattr(proposed, field) == value for field, value in changes.items()):
            raise ValueError(
                f"ablation row {row!r} changes nothing: both recipes have the same {list(fields)}"
            )
        rows[row] = proposed.replace(**changes)
        reverted[row] = list(fields)
    return _sweep(Path(out_dir), "ablation", rows, seeds, run_one, {"reverted": reverted})


def is_sweep_dir(path: Path) -> bool:
    """True when ``path`` holds a ``sweep.json`` (a compare or ablation directory)."""
    return (Path(path) / SWEEP_FILE).is_file()


def resume_sweep(
    out_dir: Path, run_one: RunOne, recipe_from_dict: Callable[[dict], Recipe]
) -> Path:
    """Finish a killed sweep and write its report.

    Args:
        out_dir: A sweep directory (see :func:`is_sweep_dir`).
        run_one: Trains one recipe in one run directory.
        recipe_from_dict: Rebuilds a recipe from ``Recipe.to_dict()`` output.

    Returns:
        The path of ``report.md``.

    Raises:
        SweepError: ``sweep.json`` is missing or malformed, or a run's ``results.json`` is.
    """
    out_dir = Path(out_dir)
    spec = read_sweep(out_dir)
    try:
        rows = {name: recipe_from_dict(dict(recipe)) for name, recipe in spec["rows"].items()}
    except (TypeError, ValueError) as exc:
        raise SweepError(f"{out_dir / SWEEP_FILE}: a row is not a recipe ({exc})") from None
    return _run_and_report(out_dir, spec, rows, run_one)


# ---------------------------------------------------------------------------------- the sweep
def read_sweep(out_dir: Path) -> dict[str, Any]:
    """The sweep's ``sweep.json``, checked.

    Raises:
        SweepError: missing, not JSON, or without ``kind``/``seeds``/``rows``.
    """
    path = Path(out_dir) / SWEEP_FILE
    if not path.is_file():
        raise SweepError(f"{path}: not found (not a sweep directory?)")
    try:
        spec = json.loads(path.read_text())
    except ValueError as exc:
        raise SweepError(f"{path}: not valid JSON ({exc})") from None
    if not (
        isinstance(spec, dict)
        and spec.get("kind") in ("compare", "ablation")
        and isinstance(spec.get("seeds"), list)
        and isinstance(spec.get("rows"), dict)
        and spec["rows"]
    ):
        raise SweepError(
            f"{path}: needs kind (compare or ablation), seeds (a list) and rows (recipe dicts)"
        )
    return spec


def read_results(path: Path) -> dict[str, Any]:
    """A run's ``results.json``, with every value the report needs.

    Raises:
        SweepError: not valid JSON, or a value of :data:`RESULT_KEYS` missing or not a finite number.
    """
    try:
        results = json.loads(Path(path).read_text())
    except ValueError as exc:
        raise SweepError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(results, dict):
        raise SweepError(f"{path}: expected a JSON object, got {type(results).__name__}")
    bad = []
    for block, key in RESULT_KEYS:
        value = results.get(block) if block else results
        value = value.get(key) if isinstance(value, dict) else None
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            bad.append(f"{block}.{key}" if block else key)
    if bad:
        raise SweepError(f"{path}: missing or not a finite number: {', '.join(bad)}")
    return results


def run_dir_of(out_dir: Path, row: str, seed: int) -> Path:
    """Where one run of a sweep lives: ``out_dir/<row>/seed<seed>``."""
    return Path(out_dir) / row / f"seed{seed}"


def _check_seeds(seeds: Sequence[int]) -> list[int]:
    ok = (
        isinstance(seeds, (list, tuple))
        and len(seeds) > 0
        and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
    )
    if not ok or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be a non-empty list of distinct integers >= 0, got {seeds!r}")
    return list(seeds)


def _sweep(
    out_dir: Path,
    kind: str,
    rows: dict[str, Recipe],
    seeds: Sequence[int],
    run_one: RunOne,
    extra: dict[str, Any],
) -> Path:
    """Write ``sweep.json`` (or check the one there), then run and report."""
    for name in rows:
        if not name or "/" in name or name.startswith(".") or name != name.strip():
            raise ValueError(f"row names must be plain directory names, got {name!r}")
    spec = {
        "kind": kind,
        "seeds": _check_seeds(seeds),
        "rows": {name: r.to_dict() for name, r in rows.items()},
        **extra,
    }
    path = out_dir / SWEEP_FILE
    if path.is_file():
        if read_sweep(out_dir) != json.loads(json.dumps(spec)):
            raise ValueError(
                f"{path} holds a different sweep: resume it, or choose another directory"
            )
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(spec, indent=2))
    return _run_and_report(out_dir, spec, rows, run_one)


def _run_and_report(
    out_dir: Path, spec: dict[str, Any], rows: dict[str, Recipe], run_one: RunOne
) -> Path:
    """Run every unfinished run of the sweep, seed by seed, then write the report."""
    import compare_report  # matplotlib: only needed once there is something to report

    plan = [(row, seed) for seed in spec["seeds"] for row in rows]
    finished = {}  # check every existing results.json before training anything
    for row, seed in plan:
        results_path = run_dir_of(out_dir, row, seed) / "results.json"
        if results_path.is_file():
            finished[row, seed] = read_results(results_path)
    for number, (row, seed) in enumerate(plan, start=1):
        run_dir = run_dir_of(out_dir, row, seed)
        where = f"run {number}/{len(plan)}: {row} seed {seed}"
        if (row, seed) in finished:
            _progress(out_dir, f"{where} finished already ({run_dir / 'results.json'})")
            continue
        resume = (run_dir / "config.json").is_file()
        _progress(out_dir, f"{where} {'resumed' if resume else 'started'}")
        if not resume and run_dir.exists():  # killed before its config.json: nothing in it to keep
            shutil.rmtree(run_dir)
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        run_one(rows[row].replace(seed=seed), run_dir, resume)
        results_path = run_dir / "results.json"
        if not results_path.is_file():
            raise SweepError(f"{results_path}: run_one returned without writing it")
        results = read_results(results_path)
        _progress(
            out_dir,
            f"{where} finished: test Acc@1 {results['test']['acc@1']:.2f}, "
            f"{results['wall_time_s']:.1f} s",
        )
    report = compare_report.write_report(out_dir)
    _progress(out_dir, f"report: {report}")
    return report


def _progress(out_dir: Path, line: str) -> None:
    """Log one progress line and append it to ``out_dir/sweep.log``."""
    log.info("%s", line)
    with open(out_dir / LOG_FILE, "a", encoding="utf-8") as handle:
        handle.write(line + "\n")
