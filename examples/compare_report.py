"""The report of a multi-seed sweep (``examples/compare.py``): ``report.md`` and two PNGs.

    write_report(sweep_dir)   # -> sweep_dir / "report.md", seeds.png, curves.png

Reads ``sweep.json`` and every run's ``results.json`` / ``metrics.jsonl`` /
``config.json``. Rows pair up by RNG seed; every difference is a paired difference over
seeds with a 95% t-interval (which decides the verdict) and a paired-bootstrap interval
(``trainkit.stats``; docs/compare.md). A compare sweep reports the second row minus the
first, an ablation sweep each row minus ``base``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np

from trainkit import stats
from trainkit.atomic import atomic_write

__all__ = ["LEVEL", "RESAMPLES", "RNG_SEED", "read_metrics", "write_report"]

LEVEL = 0.95
RESAMPLES = 10_000
RNG_SEED = 0  # the paired bootstrap's RNG seed: the same runs always give the same report
METRICS = (  # (results.json block or None, key, label, digits)
    ("test", "acc@1", "test Acc@1", 2),
    ("test", "acc@5", "test Acc@5", 2),
    ("test", "mrr", "test MRR", 2),
    ("test", "acc@1_seen", "test Acc@1, seen targets", 2),
    (None, "best_epoch", "best epoch", 1),
    (None, "wall_time_s", "wall time (s)", 1),
)
ACCURACIES = METRICS[:4]
CURVES = (
    ("train_loss", "train loss"),
    ("val_loss", "validation loss"),
    ("val_acc@1", "validation Acc@1 (%)"),
    ("lr", "learning rate"),
)
NOT_SETTINGS = ("name", "seed", "framework", "lr_range")  # recipe fields that describe, not set


# ---------------------------------------------------------------------------- reading
def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The per-epoch records, one per epoch in order (a resumed run may repeat an epoch: last wins)."""
    by_epoch: dict[int, dict[str, Any]] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                by_epoch[int(record["epoch"])] = record
    return [by_epoch[epoch] for epoch in sorted(by_epoch)]


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text())
    except ValueError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    return value if isinstance(value, dict) else {}


def _read_sweep(sweep_dir: Path) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """``sweep.json`` and, per row, its runs in seed order."""
    spec = _read_json(sweep_dir / "sweep.json")
    if not spec.get("rows") or not spec.get("seeds"):
        raise ValueError(f"{sweep_dir / 'sweep.json'}: missing, or without rows and seeds")
    runs: dict[str, list[dict[str, Any]]] = {}
    missing = []
    for row in spec["rows"]:
        runs[row] = []
        for seed in spec["seeds"]:
            run_dir = sweep_dir / row / f"seed{seed}"
            if not (run_dir / "results.json").is_file():
                missing.append(f"{row}/seed{seed}")
                continue
            runs[row].append(
                {
                    "dir": run_dir,
                    "seed": seed,
                    "results": _read_json(run_dir / "results.json"),
                    "config": _read_json(run_dir / "config.json"),
                    "epochs": read_metrics(run_dir / "metrics.jsonl"),
                }
            )
    if missing:
        raise ValueError(
            f"{sweep_dir}: runs without results.json: {', '.join(missing)} (resume the sweep first)"
        )
    return spec, runs


def value_of(results: dict[str, Any], block: str | None, key: str) -> float:
    """One number of a results dict (``results[block][key]``, or ``results[key]``)."""
    return float((results[block] if block else results)[key])


# ------------------------------------------------------------------------------ numbers
def _values(runs: list[dict[str, Any]], block: str | None, key: str) -> list[float]:
    return [value_of(run["results"], block, key) for run in runs]


def _difference(
    reference: list[dict[str, Any]], other: list[dict[str, Any]], block: str | None, key: str
) -> stats.PairedDifference:
    return stats.paired_difference(
        _values(reference, block, key),
        _values(other, block, key),
        LEVEL,
        resamples=RESAMPLES,
        rng_seed=RNG_SEED,
    )


def _signed(value: float, digits: int) -> str:
    return f"{value:+.{digits}f}"


def _interval(interval: stats.Interval | None, digits: int) -> str:
    return interval.text(digits) if interval is not None else "—"


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
def _header(spec: dict[str, Any], runs: dict[str, list[dict[str, Any]]]) -> list[str]:
    rows = list(spec["rows"])
    first = runs[rows[0]][0]
    results, config = first["results"], first["config"]
    n = len(spec["seeds"])
    title = (
        " vs ".join(rows)
        if spec["kind"] == "compare"
        else f"ablation of the {spec['rows'][rows[0]].get('name', rows[0])} recipe"
    )
    samples = results.get("num_samples") or {}
    epochs = sorted({recipe.get("epochs") for recipe in spec["rows"].values()}, key=str)
    lines = [
        f"# pointer_v45: {title}, {n} seed{'s' if n != 1 else ''}",
        "",
        f"{len(rows)} rows × {n} seeds ({', '.join(map(str, spec['seeds']))}), every row with the same seeds, "
        f"so results pair up by seed. Data: {results.get('data', '-')}"
        + (f" ({', '.join(f'{k} {v}' for k, v in samples.items())} samples)" if samples else "")
        + f"; epochs: {', '.join(map(str, epochs))}"
        + (
            f"; model: {', '.join(f'{k} {v}' for k, v in config['model'].items())}"
            if config.get("model")
            else ""
        )
        + (f"; device: {results['device']}" if results.get("device") else "")
        + ".",
        "",
    ]
    differences = _config_differences([run["config"] for row in rows for run in runs[row]])
    if differences:
        lines += [
            f"**Warning:** the runs' configs differ in {', '.join(differences)}: not a like-for-like "
            "comparison.",
            "",
        ]
    lines += [
        "Run directories: "
        + ", ".join(f"[`{row}/`]({row}/)" for row in rows)
        + " (one `seed<S>/` each); "
        "progress in [`sweep.log`](sweep.log).",
        "",
    ]
    return lines


def _method() -> list[str]:
    return [
        f"Each difference is paired by seed. Intervals: the {100 * LEVEL:g}% **t-interval** of the mean paired "
        f"difference (it decides the verdict) and the {100 * LEVEL:g}% **paired bootstrap** percentile interval "
        f"({RESAMPLES:,} resamples of the seeds, RNG seed {RNG_SEED}); the bootstrap is too narrow at small N, "
        "so it is shown, not used. Fewer than "
        f'{stats.MIN_SEEDS} seeds give no interval. "mean ± sd" is the sample standard deviation over seeds.',
        "",
    ]


def _settings(spec: dict[str, Any]) -> list[str]:
    """The recipe fields that differ between rows."""
    rows = spec["rows"]
    names = list(rows)
    fields = [
        f
        for f in rows[names[0]]
        if f not in NOT_SETTINGS and len({json.dumps(rows[name].get(f)) for name in names}) > 1
    ]
    if spec["kind"] == "compare":
        return [
            "## Settings that differ",
            "",
            *table(
                ["recipe field", *names],
                [[f"`{f}`", *(fmt(rows[n].get(f)) for n in names)] for f in fields],
            ),
            "",
        ]
    base = rows[names[0]]
    body = []
    for name in names[1:]:
        reverted = spec.get("reverted", {}).get(name) or [
            f for f in fields if rows[name].get(f) != base.get(f)
        ]
        body.append(
            [
                name,
                "; ".join(f"`{f}` {fmt(base.get(f))} → {fmt(rows[name].get(f))}" for f in reverted),
            ]
        )
    return [
        "## Rows",
        "",
        f"Each row is `{names[0]}` with one group of fields reverted to the original recipe's values.",
        "",
        *table(["row", "reverted fields (base → row)"], body),
        "",
    ]


def _compare_sections(spec: dict[str, Any], runs: dict[str, list[dict[str, Any]]]) -> list[str]:
    first, second = list(spec["rows"])
    lines = ["## What the data supports", ""]
    diffs = {
        label: _difference(runs[first], runs[second], block, key)
        for block, key, label, _ in ACCURACIES
    }
    if (
        next(iter(diffs.values())).verdict == "too few seeds"
    ):  # one statement, then the bare differences
        statement = next(iter(diffs.values())).statement
        lines.append(
            statement.split(";")[0]
            + f": the differences ({second} − {first}) "
            + "; ".join(f"{label} {diff.mean:+.2f}" for label, diff in diffs.items())
            + f" are anecdotes, not evidence. Run at least {stats.MIN_SEEDS} seeds."
        )
    else:
        lines += [
            f"- {label}: {diff.statement} ({second} − {first}, percentage points)."
            for label, diff in diffs.items()
        ]
    lines += ["", *_method(), f"## Per metric ({second} − {first})", ""]
    body = []
    for block, key, label, digits in METRICS:
        diff = _difference(runs[first], runs[second], block, key)
        body.append(
            [
                label,
                *(
                    stats.summarize(_values(runs[r], block, key)).text(digits)
                    for r in (first, second)
                ),
                _signed(diff.mean, digits)
                + (f" ± {diff.sd:.{digits}f}" if diff.sd is not None else ""),
                _interval(diff.t, digits),
                _interval(diff.bootstrap, digits),
                diff.verdict,
            ]
        )
    lines += table(
        [
            "metric",
            f"{first} (mean ± sd)",
            f"{second} (mean ± sd)",
            "difference (mean ± sd)",
            f"{100 * LEVEL:g}% t-interval",
            f"{100 * LEVEL:g}% paired bootstrap",
            "verdict",
        ],
        body,
    )
    lines += ["", "## Per seed", ""]
    body = []
    for a, b in zip(runs[first], runs[second]):
        acc = [value_of(run["results"], "test", "acc@1") for run in (a, b)]
        body.append(
            [
                str(a["seed"]),
                *(f"{v:.2f}" for v in acc),
                f"{acc[1] - acc[0]:+.2f}",
                *(str(run["results"]["best_epoch"]) for run in (a, b)),
                *(f"{run['results']['wall_time_s']:.1f}" for run in (a, b)),
            ]
        )
    lines += table(
        [
            "seed",
            f"{first} test Acc@1",
            f"{second} test Acc@1",
            "difference",
            f"{first} best epoch",
            f"{second} best epoch",
            f"{first} wall s",
            f"{second} wall s",
        ],
        body,
    )
    return [*lines, ""]


def _ablation_sections(spec: dict[str, Any], runs: dict[str, list[dict[str, Any]]]) -> list[str]:
    names = list(spec["rows"])
    base = names[0]
    block, key, label, digits = METRICS[0]
    diffs = {row: _difference(runs[base], runs[row], block, key) for row in names[1:]}
    mattering = [row for row, diff in diffs.items() if diff.verdict == "differs"]
    few = next(iter(diffs.values())).verdict == "too few seeds"
    n = len(spec["seeds"])
    if few:
        summary = (
            next(iter(diffs.values())).statement.split(";")[0]
            + ": no row can be said to matter or not."
        )
    elif mattering:
        summary = (
            f"At N = {n}, reverting {', '.join(f'`{r}`' for r in mattering)} changes {label} "
            f"({100 * LEVEL:g}% t-interval excludes 0); for the other rows no difference was detected."
        )
    else:
        summary = f"At N = {n}, no row's {label} differs detectably from `{base}` (every t-interval contains 0)."
    lines = [
        "## What the data supports",
        "",
        summary,
        "",
        *_method(),
        f"## {label}: each row against `{base}`",
        "",
    ]
    body = [
        [f"`{base}`", stats.summarize(_values(runs[base], block, key)).text(digits), "", "", "", ""]
    ]
    for row, diff in diffs.items():
        body.append(
            [
                f"`{row}`",
                stats.summarize(_values(runs[row], block, key)).text(digits),
                _signed(diff.mean, digits),
                _interval(diff.t, digits),
                _interval(diff.bootstrap, digits),
                "**matters**" if diff.verdict == "differs" else diff.verdict,
            ]
        )
    lines += table(
        [
            "row",
            f"{label} (mean ± sd)",
            f"difference from `{base}`",
            f"{100 * LEVEL:g}% t-interval",
            f"{100 * LEVEL:g}% paired bootstrap",
            "verdict",
        ],
        body,
    )
    lines += [
        "",
        f"## Other metrics: difference from `{base}` (mean, {100 * LEVEL:g}% t-interval)",
        "",
    ]
    body = []
    for row in names[1:]:
        cells = []
        for block_, key_, _, digits_ in METRICS[1:]:
            diff = _difference(runs[base], runs[row], block_, key_)
            cells.append(
                _signed(diff.mean, digits_) + (f" {diff.t.text(digits_)}" if diff.t else "")
            )
        body.append([f"`{row}`", *cells])
    lines += table(["row", *(m[2] for m in METRICS[1:])], body)
    lines += ["", f"## Per seed: {label}", ""]
    lines += table(
        ["seed", *(f"`{r}`" for r in names)],
        [
            [str(seed), *(f"{value_of(runs[r][i]['results'], block, key):.2f}" for r in names)]
            for i, seed in enumerate(spec["seeds"])
        ],
    )
    return [*lines, ""]


# ------------------------------------------------------------------------------ pictures
def plot_seeds(path: Path, spec: dict[str, Any], runs: dict[str, list[dict[str, Any]]]) -> str:
    """Left: test Acc@1 per seed and row; right: the paired differences with both intervals."""
    names = list(spec["rows"])
    block, key, label, _ = METRICS[0]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    values = np.array([_values(runs[row], block, key) for row in names])  # rows x seeds
    x = np.arange(len(names))
    for j in range(values.shape[1]):  # one grey line per seed joins its rows
        left.plot(x, values[:, j], color="0.75", linewidth=0.8, zorder=1)
    for i in range(len(names)):
        left.scatter(np.full(values.shape[1], x[i]), values[i], s=18, color=f"C{i}", zorder=2)
        if values.shape[1] >= stats.MIN_SEEDS:
            ci = stats.t_interval(values[i], LEVEL)
            mean = values[i].mean()
            left.errorbar(
                x[i] + 0.15,
                mean,
                yerr=[[mean - ci.low], [ci.high - mean]],
                fmt="D",
                color="black",
                capsize=4,
                markersize=4,
                zorder=3,
            )
    left.set_xticks(x, names, rotation=30 if len(names) > 3 else 0)
    left.set_ylabel(f"{label} (%)")
    left.set_title(f"{label} per seed (black: mean, {100 * LEVEL:g}% t-interval)")
    if spec["kind"] == "compare":  # differences of each accuracy metric
        pairs = [(f"{m[2]}", names[0], names[1], m[0], m[1]) for m in ACCURACIES]
        title = f"{names[1]} − {names[0]}, per seed"
    else:  # each row against the base
        pairs = [(row, names[0], row, block, key) for row in names[1:]]
        title = f"{label}: row − {names[0]}, per seed"
    for i, (_what, ref, other, block_, key_) in enumerate(pairs):
        d = np.array(_values(runs[other], block_, key_)) - np.array(
            _values(runs[ref], block_, key_)
        )
        y = len(pairs) - 1 - i
        right.scatter(d, np.full(d.size, y), s=18, color="0.5", zorder=2)
        diff = _difference(runs[ref], runs[other], block_, key_)
        for interval, offset, color in (
            (diff.t, 0.18, "black"),
            (diff.bootstrap, -0.18, "tab:red"),
        ):
            if interval is not None:
                right.plot(
                    [interval.low, interval.high],
                    [y + offset] * 2,
                    color=color,
                    linewidth=2.5,
                    zorder=3,
                )
        right.scatter([diff.mean], [y + 0.18], marker="D", color="black", s=22, zorder=4)
    if len(spec["seeds"]) < stats.MIN_SEEDS:
        right.text(
            0.02,
            0.02,
            f"N = {len(spec['seeds'])}: no interval",
            transform=right.transAxes,
            fontsize=9,
        )
    right.axvline(0, color="0.3", linewidth=0.8)
    right.set_yticks(range(len(pairs)), [p[0] for p in reversed(pairs)])
    right.set_xlabel("paired difference (percentage points)")
    right.set_title(
        title + f"\nblack: mean and t-interval, red: paired bootstrap ({100 * LEVEL:g}%)",
        fontsize=9,
    )
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return (
        f"Left: {label} of every run (grey lines join runs of the same seed) with each row's mean and "
        f"{100 * LEVEL:g}% t-interval. Right: the paired differences per seed (grey), their mean and intervals."
    )


def plot_curves(path: Path, spec: dict[str, Any], runs: dict[str, list[dict[str, Any]]]) -> str:
    """Training curves: mean over seeds per epoch, band ±1 sd over the seeds that ran that epoch."""
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    for ax, (key, label) in zip(axes.flat, CURVES):
        for i, row in enumerate(spec["rows"]):
            per_epoch: dict[int, list[float]] = {}
            for run in runs[row]:
                for record in run["epochs"]:
                    value = record.get(key)
                    if isinstance(value, (int, float)) and math.isfinite(value):
                        per_epoch.setdefault(int(record["epoch"]), []).append(float(value))
            if not per_epoch:
                continue
            epochs = sorted(per_epoch)
            mean = np.array([np.mean(per_epoch[e]) for e in epochs])
            sd = np.array(
                [np.std(per_epoch[e], ddof=1) if len(per_epoch[e]) > 1 else 0.0 for e in epochs]
            )
            ax.plot(epochs, mean, color=f"C{i}", label=row, marker="o", markersize=2.5)
            ax.fill_between(epochs, mean - sd, mean + sd, color=f"C{i}", alpha=0.2, linewidth=0)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        if key == "lr" and ax.lines and all(np.all(line.get_ydata() > 0) for line in ax.lines):
            ax.set_yscale("log")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(True, alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(
        "Mean over seeds per epoch; band: ±1 sd over the seeds that ran that epoch", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return (
        "Training curves, mean over seeds with a ±1 sd band; a run that stopped early leaves the later epochs "
        "to the seeds that went on. Each row's loss is its own loss (label-smoothed NLL is not on the scale of "
        "masked NLL): compare the accuracies."
    )


# ----------------------------------------------------------------------------- report
def write_report(sweep_dir: Path) -> Path:
    """Write ``sweep_dir/report.md``, ``seeds.png`` and ``curves.png`` from a finished sweep.

    Args:
        sweep_dir: A directory written by ``examples/compare.py`` (``sweep.json`` and one
            ``<row>/seed<S>/results.json`` per run).

    Returns:
        The path of ``report.md``.

    Raises:
        ValueError: ``sweep.json`` missing or malformed, or a run without ``results.json``.
    """
    sweep_dir = Path(sweep_dir)
    spec, runs = _read_sweep(sweep_dir)
    lines = _header(spec, runs)
    lines += (
        _compare_sections(spec, runs)
        if spec["kind"] == "compare"
        else _ablation_sections(spec, runs)
    )
    lines += _settings(spec)
    lines += ["## Pictures", ""]
    for name, plot in (("seeds.png", plot_seeds), ("curves.png", plot_curves)):
        caption = plot(sweep_dir / name, spec, runs)
        lines += [f"![{caption.split('.')[0]}]({name})", "", caption, ""]
    path = sweep_dir / "report.md"
    atomic_write(path, "\n".join(lines))
    return path


def _config_differences(configs: list[dict[str, Any]]) -> list[str]:
    """``section.key`` names of the data and model sections whose values differ between runs."""
    keys = {
        (section, key)
        for config in configs
        for section in ("data", "model")
        if isinstance(config.get(section), dict)
        for key in config[section]
    }
    return sorted(
        f"{section}.{key}"
        for section, key in keys
        if len({json.dumps((config.get(section) or {}).get(key)) for config in configs}) > 1
    )
