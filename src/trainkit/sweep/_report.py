"""The report of a finished sweep: ``report.md`` (and ``seeds.png``, ``curves.png``).

Rows pair up by seed; every difference is a paired difference over seeds with a 95%
t-interval and a paired-bootstrap interval (``trainkit.stats``). Each verdict comes from the
paired t-test's p-value adjusted with Holm's method over the family the report tests: the
tested metrics of a compare sweep, the rows of an ablation or grid on its first metric. The
report shows both p-values and the smallest difference its seeds could detect.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainkit import stats
from trainkit.atomic import atomic_write
from trainkit.sweep import _spec
from trainkit.sweep._run import read_record, run_dir_of
from trainkit.sweep._spec import Metric
from trainkit.sweep.rundir import SweepError

__all__ = ["LEVEL", "POWER", "RESAMPLES", "RNG_SEED", "read_epochs", "write_report"]

LEVEL = 0.95
POWER = 0.8
RESAMPLES = 10_000
RNG_SEED = 0  # the paired bootstrap's RNG seed: the same runs always give the same report


@dataclass(frozen=True)
class Run:
    """One finished run as the report reads it."""

    seed: int
    result: dict[str, Any]
    seconds: float
    epochs: list[dict[str, Any]]


@dataclass(frozen=True)
class Test:
    """One comparison of the family: the paired difference, its p-values and verdict."""

    diff: stats.PairedDifference
    p: float
    adjusted: float
    detectable: float | None
    verdict: str

    @property
    def has_interval(self) -> bool:
        """False below MIN_SEEDS pairs or when every difference is the same."""
        return self.diff.t is not None and bool(self.diff.sd)


# ----------------------------------------------------------------------------- reading
def read_epochs(path: Path) -> list[dict[str, Any]]:
    """The per-epoch records of a ``metrics.jsonl``, one per epoch in order.

    A resumed run may repeat an epoch (the last record wins). Lines that are not JSON
    objects with an integer ``epoch`` (a torn write, a record of another kind, bytes that
    are not UTF-8) are skipped: the curves are a picture, not a result.
    """
    by_epoch: dict[int, dict[str, Any]] = {}
    if not path.is_file():
        return []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        epoch = record.get("epoch") if isinstance(record, dict) else None
        if isinstance(epoch, int) and not isinstance(epoch, bool):
            by_epoch[epoch] = record
    return [by_epoch[epoch] for epoch in sorted(by_epoch)]


def _read_runs(out_dir: Path, spec: Mapping[str, Any]) -> dict[str, list[Run]]:
    runs: dict[str, list[Run]] = {}
    missing = []
    for row in spec["rows"]:
        runs[row] = []
        for seed in spec["seeds"]:
            run_dir = run_dir_of(out_dir, row, seed)
            if not (run_dir / "sweep_result.json").is_file():
                missing.append(f"{row}/seed{seed}")
                continue
            record = read_record(out_dir, spec, row, seed)
            epochs = read_epochs(run_dir / "metrics.jsonl")
            runs[row].append(Run(seed, record["result"], float(record["seconds"]), epochs))
    if missing:
        raise SweepError(
            f"{out_dir}: runs without sweep_result.json: {', '.join(missing)} (resume the sweep first)"
        )
    return runs


def _metrics(spec: Mapping[str, Any], runs: Mapping[str, list[Run]]) -> list[Metric]:
    if spec.get("metrics"):
        metrics = [Metric(**entry) for entry in spec["metrics"]]
    else:
        first = runs[spec["reference"]][0].result
        metrics = [Metric(k, k, 3, True) for k, v in first.items() if isinstance(v, float)]
    for row, row_runs in runs.items():
        for run in row_runs:
            for metric in metrics:
                if not isinstance(run.result.get(metric.name), float):
                    where = run_dir_of(Path("."), row, run.seed) / "sweep_result.json"
                    raise SweepError(f"{where}: the result has no number {metric.name!r}")
    if not metrics:
        raise SweepError("the runs returned no numbers to report")
    return metrics


# ------------------------------------------------------------------------------ numbers
def values(runs: Sequence[Run], name: str) -> list[float]:
    """One metric of every run, in seed order."""
    return [float(run.result[name]) for run in runs]


def _tests(pairs: Sequence[tuple[list[float], list[float]]]) -> list[Test]:
    """The family's paired differences, p-values, Holm-adjusted p-values and verdicts."""
    diffs = [
        stats.paired_difference(a, b, LEVEL, resamples=RESAMPLES, rng_seed=RNG_SEED)
        for a, b in pairs
    ]
    p_values = []
    for (a, b), diff in zip(pairs, diffs):
        enough = diff.n >= stats.MIN_SEEDS
        p = stats.paired_t_p_value([y - x for x, y in zip(a, b)]) if enough else math.nan
        p_values.append(p)
    adjusted = stats.holm(p_values)
    tests = []
    for diff, p, adj in zip(diffs, p_values, adjusted):
        detectable = None
        if diff.n < stats.MIN_SEEDS:
            verdict = "too few seeds"
        elif diff.verdict == "no spread":  # every difference equal up to rounding
            verdict = "no interval (zero variance)"
        else:
            detectable = stats.detectable_effect(diff.sd, diff.n, LEVEL, POWER, len(pairs))
            verdict = "differs" if adj < 1 - LEVEL else "no difference detected"
        tests.append(Test(diff, p, adj, detectable, verdict))
    return tests


def _p(value: float) -> str:
    if math.isnan(value):
        return "—"
    return "<0.0001" if value < 1e-4 else f"{value:.4f}"


def _interval(test: Test, which: str, digits: int) -> str:
    interval = test.diff.t if which == "t" else test.diff.bootstrap
    if interval is None:
        return "—"
    if not test.has_interval:
        return "no interval"
    return interval.text(digits)


def _detectable(test: Test, digits: int) -> str:
    return "—" if test.detectable is None else f"±{test.detectable:.{digits}f}"


def _mean_sd(diff: stats.PairedDifference, digits: int) -> str:
    text = f"{diff.mean:+.{digits}f}"
    return text if diff.sd is None else f"{text} ± {diff.sd:.{digits}f}"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table as lines."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def fmt(value: Any) -> str:
    """A setting as text: small floats as ``6.5e-04``, lists as ``(0.9, 0.98)``."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:.1e}" if value != 0 and abs(value) < 1e-2 else repr(value)
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(fmt(v) for v in value) + ")"
    return str(value)


# ------------------------------------------------------------------------------ sections
def _header(spec: Mapping[str, Any], runs: Mapping[str, list[Run]]) -> list[str]:
    rows = list(spec["rows"])
    n = len(spec["seeds"])
    if spec["kind"] == "compare":
        what = " vs ".join(rows)
    elif spec["kind"] == "ablation":
        what = f"ablation of `{spec['reference']}` ({spec['design']} design)"
    else:
        what = f"{len(rows)} row{'s' if len(rows) != 1 else ''}"
    info: dict[str, list[str]] = {}
    for row_runs in runs.values():
        for run in row_runs:
            for key, value in run.result.items():
                if isinstance(value, str) and value not in info.setdefault(key, []):
                    info[key].append(value)
    same = [f"{key}: {found[0]}" for key, found in info.items() if len(found) == 1]
    lines = [
        f"# {spec['title']}: {what}, {n} seed{'s' if n != 1 else ''}",
        "",
        f"{len(rows)} row{'s' if len(rows) != 1 else ''} × {n} seeds "
        f"({', '.join(map(str, spec['seeds']))}), every row with the same seeds, so results pair "
        "up by seed." + (f" {'; '.join(same)}." if same else ""),
        "",
    ]
    varying = [f"{key} ({', '.join(found)})" for key, found in info.items() if len(found) > 1]
    if varying:
        lines += [
            f"**Warning:** the runs differ in {'; '.join(varying)}: not a like-for-like comparison.",
            "",
        ]
    links = ", ".join(f"[`{row}/`]({row}/)" for row in rows)
    lines += [
        f"Run directories: {links} (one `seed<S>/` each); progress in [`sweep.log`](sweep.log).",
        "",
    ]
    return lines


def _method(family: str, size: int) -> list[str]:
    percent = f"{100 * LEVEL:g}%"
    return [
        f"Each difference is paired by seed. **Verdicts**: the paired t-test's p-value, adjusted "
        f"with Holm's method over the {size} {family} this report tests (family-wise error "
        f"{100 * (1 - LEVEL):g}%); a difference *differs* when its adjusted p is below "
        f"{1 - LEVEL:g}. Both p-values are shown. Intervals: the {percent} **t-interval** of the "
        f"mean paired difference (unadjusted) and the {percent} **paired bootstrap** percentile "
        f"interval ({RESAMPLES:,} resamples of the seeds, RNG seed {RNG_SEED}; too narrow at "
        f"small N, so shown, not used). **Detectable**: the smallest true difference this many "
        f"seeds would detect with {100 * POWER:g}% power at the adjusted level, from the "
        f"observed sd of the paired differences. Fewer than {stats.MIN_SEEDS} seeds, or "
        'differences that are all the same, give no interval. "mean ± sd" is the sample '
        "standard deviation over seeds.",
        "",
    ]


def _compare_sections(
    spec: Mapping[str, Any], runs: Mapping[str, list[Run]], metrics: list[Metric]
) -> list[str]:
    first, second = list(spec["rows"])
    tested = [m for m in metrics if m.verdict]
    tests = dict(
        zip(
            [m.name for m in tested],
            _tests([(values(runs[first], m.name), values(runs[second], m.name)) for m in tested]),
        )
    )
    lines = ["## What the data supports", ""]
    n = len(spec["seeds"])
    if n < stats.MIN_SEEDS:
        differences = "; ".join(
            f"{m.label} {tests[m.name].diff.mean:+.{m.digits}f}" for m in tested
        )
        lines.append(
            f"N = {n}: no confidence interval: the differences ({second} − {first}) "
            f"{differences} are anecdotes, not evidence. Run at least {stats.MIN_SEEDS} seeds."
        )
    for m in tested if n >= stats.MIN_SEEDS else []:
        test = tests[m.name]
        lines.append(
            f"- {m.label} ({second} − {first}): {test.diff.mean:+.{m.digits}f}, "
            f"{100 * LEVEL:g}% t-interval {_interval(test, 't', m.digits)}; p {_p(test.p)}, "
            f"Holm-adjusted p {_p(test.adjusted)}: **{test.verdict}**; detectable at N = {n}: "
            f"{_detectable(test, m.digits)}."
        )
    lines += ["", *_method("metrics", len(tested)), f"## Per metric ({second} − {first})", ""]
    body = []
    for m in metrics:
        test = (
            tests.get(m.name)
            or _tests([(values(runs[first], m.name), values(runs[second], m.name))])[0]
        )
        verdict = test.verdict if m.verdict else "(not tested)"
        body.append(
            [
                m.label,
                stats.summarize(values(runs[first], m.name)).text(m.digits),
                stats.summarize(values(runs[second], m.name)).text(m.digits),
                _mean_sd(test.diff, m.digits),
                _interval(test, "t", m.digits),
                _interval(test, "bootstrap", m.digits),
                _p(test.p) if m.verdict else "—",
                _p(test.adjusted) if m.verdict else "—",
                _detectable(test, m.digits) if m.verdict else "—",
                verdict,
            ]
        )
    percent = f"{100 * LEVEL:g}%"
    lines += table(
        [
            "metric",
            f"{first} (mean ± sd)",
            f"{second} (mean ± sd)",
            "difference (mean ± sd)",
            f"{percent} t-interval",
            f"{percent} paired bootstrap",
            "p",
            "Holm p",
            "detectable",
            "verdict",
        ],
        body,
    )
    primary = metrics[0]
    lines += ["", f"## Per seed: {primary.label}", ""]
    body = []
    for a, b in zip(runs[first], runs[second]):
        va, vb = a.result[primary.name], b.result[primary.name]
        body.append(
            [
                str(a.seed),
                f"{va:.{primary.digits}f}",
                f"{vb:.{primary.digits}f}",
                f"{vb - va:+.{primary.digits}f}",
                f"{a.seconds:.1f}",
                f"{b.seconds:.1f}",
            ]
        )
    lines += table(["seed", first, second, "difference", f"{first} s", f"{second} s"], body)
    return [*lines, ""]


def _rows_sections(
    spec: Mapping[str, Any], runs: Mapping[str, list[Run]], metrics: list[Metric]
) -> list[str]:
    names = list(spec["rows"])
    reference = spec["reference"]
    others = [row for row in names if row != reference]
    m = metrics[0]
    n = len(spec["seeds"])
    lines = ["## What the data supports", ""]
    if not others:
        lines += [
            f"One row: no comparison. {m.label}: {stats.summarize(values(runs[reference], m.name)).text(m.digits)}.",
            "",
        ]
        return [*lines, *_per_seed(spec, runs, m)]
    base_values = values(runs[reference], m.name)
    tests = dict(zip(others, _tests([(base_values, values(runs[row], m.name)) for row in others])))
    verb = {"revert": "reverting", "add-one": "adding"}.get(spec.get("design") or "", "row")
    differing = [row for row, test in tests.items() if test.verdict == "differs"]
    if n < stats.MIN_SEEDS:
        summary = f"N = {n}: no confidence interval: no row can be said to differ or not. Run at least {stats.MIN_SEEDS} seeds."
    elif differing:
        listed = ", ".join(f"`{row}` (adjusted p {_p(tests[row].adjusted)})" for row in differing)
        summary = (
            f"At N = {n}, with Holm's adjustment over the {len(others)} rows, {verb} {listed} "
            f"changes {m.label}; for the other rows no difference was detected."
        )
    else:
        summary = (
            f"At N = {n}, no row's {m.label} differs detectably from `{reference}` after Holm's "
            f"adjustment over the {len(others)} rows."
        )
    detectable = [t.detectable for t in tests.values() if t.detectable is not None]
    if detectable:
        summary += (
            f" The smallest differences these seeds could detect ({100 * POWER:g}% power) range "
            f"from {min(detectable):.{m.digits}f} to {max(detectable):.{m.digits}f}."
        )
    lines += [summary, ""]
    if spec.get("design") == "add-one" and n >= stats.MIN_SEEDS:
        lines += [_largest_gain(tests, m, spec["changed"]), ""]
    lines += [*_method("rows", len(others)), f"## {m.label}: each row against `{reference}`", ""]
    body = [[f"`{reference}`", stats.summarize(base_values).text(m.digits), *[""] * 7]]
    for row, test in tests.items():
        body.append(
            [
                f"`{row}`",
                stats.summarize(values(runs[row], m.name)).text(m.digits),
                f"{test.diff.mean:+.{m.digits}f}",
                _interval(test, "t", m.digits),
                _interval(test, "bootstrap", m.digits),
                _p(test.p),
                _p(test.adjusted),
                _detectable(test, m.digits),
                "**differs**" if test.verdict == "differs" else test.verdict,
            ]
        )
    percent = f"{100 * LEVEL:g}%"
    lines += table(
        [
            "row",
            f"{m.label} (mean ± sd)",
            f"difference from `{reference}`",
            f"{percent} t-interval",
            f"{percent} paired bootstrap",
            "p",
            "Holm p",
            "detectable",
            "verdict",
        ],
        body,
    )
    if len(metrics) > 1:
        lines += [
            "",
            f"## Other metrics: difference from `{reference}` (mean, {percent} t-interval, unadjusted, no verdicts)",
            "",
        ]
        body = []
        for row in others:
            cells = []
            for other in metrics[1:]:
                (test,) = _tests(
                    [(values(runs[reference], other.name), values(runs[row], other.name))]
                )
                interval = _interval(test, "t", other.digits)
                cells.append(
                    f"{test.diff.mean:+.{other.digits}f}"
                    + ("" if interval == "—" else f" {interval}")
                )
            body.append([f"`{row}`", *cells])
        lines += table(["row", *(other.label for other in metrics[1:])], body)
    return [*lines, "", *_per_seed(spec, runs, m)]


def _largest_gain(tests: Mapping[str, Test], m: Metric, changed: Mapping[str, list[str]]) -> str:
    """Add-one design: which single group moves the metric most, and every group at once."""
    every = set().union(*(set(fields) for fields in changed.values()))
    whole = [row for row, fields in changed.items() if len(changed) > 2 and set(fields) == every]
    singles = {row: test for row, test in tests.items() if row not in whole}
    if not singles:
        return ""
    best = max(singles, key=lambda row: singles[row].diff.mean)
    text = (
        f"Of the single changes, adding `{best}` moves {m.label} most: "
        f"{singles[best].diff.mean:+.{m.digits}f} ({singles[best].verdict})."
    )
    if whole:
        text += f" Every group at once (`{whole[0]}`) moves it {tests[whole[0]].diff.mean:+.{m.digits}f}."
    return text


def _per_seed(spec: Mapping[str, Any], runs: Mapping[str, list[Run]], m: Metric) -> list[str]:
    names = list(spec["rows"])
    body = [
        [str(seed), *(f"{runs[row][i].result[m.name]:.{m.digits}f}" for row in names)]
        for i, seed in enumerate(spec["seeds"])
    ]
    return [
        f"## Per seed: {m.label}",
        "",
        *table(["seed", *(f"`{row}`" for row in names)], body),
        "",
    ]


def _settings(spec: Mapping[str, Any]) -> list[str]:
    """The row fields that differ (compare, grid), or what each ablation row changed."""
    rows = spec["rows"]
    names = list(rows)
    reference = spec["reference"]
    if spec["kind"] == "ablation":
        source = {
            "revert": "reverted to the other recipe's values",
            "add-one": "taken from the other recipe",
        }[spec["design"]]
        body = []
        for name in names:
            if name == reference:
                continue
            fields = spec["changed"].get(name) or []
            body.append(
                [
                    name,
                    "; ".join(
                        f"`{f}` {fmt(rows[reference].get(f))} → {fmt(rows[name].get(f))}"
                        for f in fields
                    ),
                ]
            )
        return [
            "## Rows",
            "",
            f"Each row is `{reference}` with one group of fields {source}.",
            "",
            *table(["row", f"changed fields ({reference} → row)"], body),
            "",
        ]
    keys = list(dict.fromkeys(key for row in rows.values() for key in row))
    differ = [
        key
        for key in keys
        if key not in spec.get("not_settings", [])
        and len({json.dumps(rows[name].get(key), sort_keys=True) for name in names}) > 1
    ]
    if not differ:
        return []
    return [
        "## Settings that differ",
        "",
        *table(
            ["field", *names],
            [[f"`{key}`", *(fmt(rows[n].get(key)) for n in names)] for key in differ],
        ),
        "",
    ]


# ----------------------------------------------------------------------------- report
def write_report(out_dir: Path) -> Path:
    """Write ``out_dir/report.md`` (and its pictures) from a finished sweep.

    Args:
        out_dir: A sweep directory whose runs have all finished.

    Returns:
        The path of ``report.md``.

    Raises:
        SweepError: ``sweep.json`` missing or malformed, a run unfinished or malformed, or
            a metric some run did not return.
    """
    out_dir = Path(out_dir)
    spec = _spec.read_spec(out_dir)
    runs = _read_runs(out_dir, spec)
    metrics = _metrics(spec, runs)
    lines = _header(spec, runs)
    if spec["kind"] == "compare":
        lines += _compare_sections(spec, runs, metrics)
    else:
        lines += _rows_sections(spec, runs, metrics)
    lines += _settings(spec)
    from trainkit.sweep import _plots

    lines += _plots.draw(out_dir, spec, runs, metrics, LEVEL)
    path = out_dir / "report.md"
    atomic_write(path, "\n".join(lines))
    return path
