"""The report's pictures: ``seeds.png`` (every run, paired differences) and ``curves.png``.

matplotlib is optional: without it the report says how to get the pictures.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainkit import stats
from trainkit.sweep._spec import Metric

if TYPE_CHECKING:
    from trainkit.sweep._report import Run

__all__ = ["draw"]


def draw(
    out_dir: Path,
    spec: Mapping[str, Any],
    runs: Mapping[str, list[Run]],
    metrics: Sequence[Metric],
    level: float,
) -> list[str]:
    """Draw the pictures into ``out_dir``; the report's lines that show them."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display
        import matplotlib.pyplot as plt
    except ImportError:
        return [
            "## Pictures",
            "",
            "Not drawn: matplotlib is not installed (pip install matplotlib).",
            "",
        ]
    lines = ["## Pictures", ""]
    caption = _seeds(plt, out_dir / "seeds.png", spec, runs, metrics, level)
    lines += [f"![{caption.split('.')[0]}](seeds.png)", "", caption, ""]
    if spec.get("curves"):
        caption = _curves(plt, out_dir / "curves.png", spec, runs)
        lines += [f"![{caption.split('.')[0]}](curves.png)", "", caption, ""]
    return lines


def _values(runs: Sequence[Run], name: str) -> list[float]:
    return [float(run.result[name]) for run in runs]


def _seeds(
    plt: Any,
    path: Path,
    spec: Mapping[str, Any],
    runs: Mapping[str, list[Run]],
    metrics: Sequence[Metric],
    level: float,
) -> str:
    """Left: the first metric per seed and row; right: the paired differences and intervals."""
    import numpy as np

    names = list(spec["rows"])
    primary = metrics[0]
    reference = spec["reference"]
    percent = f"{100 * level:g}%"
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    table = np.array([_values(runs[row], primary.name) for row in names])  # rows x seeds
    x = np.arange(len(names))
    for j in range(table.shape[1]):  # one grey line per seed joins its rows
        left.plot(x, table[:, j], color="0.75", linewidth=0.8, zorder=1)
    for i in range(len(names)):
        left.scatter(np.full(table.shape[1], x[i]), table[i], s=18, color=f"C{i % 10}", zorder=2)
        spread = float(np.std(table[i], ddof=1)) if table.shape[1] > 1 else 0.0
        if table.shape[1] >= stats.MIN_SEEDS and spread > 0:
            ci = stats.t_interval(table[i], level)
            mean = float(table[i].mean())
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
    left.set_ylabel(primary.label)
    left.set_title(f"{primary.label} per seed (black: mean, {percent} t-interval)", fontsize=10)
    if spec["kind"] == "compare":
        tested = [m for m in metrics if m.verdict] or [primary]
        pairs = [(m.label, names[0], names[1], m.name) for m in tested]
        title = f"{names[1]} − {names[0]}, per seed"
    else:
        pairs = [(row, reference, row, primary.name) for row in names if row != reference]
        title = f"{primary.label}: row − {reference}, per seed"
    for i, (_label, ref, other, name) in enumerate(pairs):
        d = np.array(_values(runs[other], name)) - np.array(_values(runs[ref], name))
        y = len(pairs) - 1 - i
        right.scatter(d, np.full(d.size, y), s=18, color="0.5", zorder=2)
        right.scatter([float(d.mean())], [y + 0.18], marker="D", color="black", s=22, zorder=4)
        if d.size < stats.MIN_SEEDS or float(np.std(d, ddof=1)) == 0.0:
            continue
        t = stats.t_interval(d, level)
        boot = stats.bootstrap_interval(d, level)
        for interval, offset, color in ((t, 0.18, "black"), (boot, -0.18, "tab:red")):
            if math.isfinite(interval.low) and math.isfinite(interval.high):
                right.plot(
                    [interval.low, interval.high],
                    [y + offset] * 2,
                    color=color,
                    linewidth=2.5,
                    zorder=3,
                )
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
    right.set_xlabel("paired difference")
    right.set_title(
        f"{title}\nblack: mean and t-interval, red: paired bootstrap ({percent}, unadjusted)",
        fontsize=9,
    )
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return (
        f"Left: {primary.label} of every run (grey lines join runs of the same seed) with each "
        f"row's mean and {percent} t-interval. Right: the paired differences per seed (grey), "
        "their mean and intervals."
    )


def _curves(plt: Any, path: Path, spec: Mapping[str, Any], runs: Mapping[str, list[Run]]) -> str:
    """Per-epoch curves: mean over seeds, band ±1 sd over the seeds that ran that epoch."""
    import numpy as np

    curves = spec["curves"]
    columns = 2 if len(curves) > 1 else 1
    rows_of_axes = math.ceil(len(curves) / columns)
    fig, axes = plt.subplots(
        rows_of_axes, columns, figsize=(5.5 * columns, 3.5 * rows_of_axes), squeeze=False
    )
    for ax, (key, label) in zip(axes.flat, curves):
        for i, row in enumerate(spec["rows"]):
            per_epoch: dict[int, list[float]] = {}
            for run in runs[row]:
                for record in run.epochs:
                    value = record.get(key)
                    if (
                        isinstance(value, (int, float))
                        and not isinstance(value, bool)
                        and math.isfinite(value)
                    ):
                        per_epoch.setdefault(int(record["epoch"]), []).append(float(value))
            if not per_epoch:
                continue
            epochs = sorted(per_epoch)
            mean = np.array([np.mean(per_epoch[e]) for e in epochs])
            sd = np.array(
                [np.std(per_epoch[e], ddof=1) if len(per_epoch[e]) > 1 else 0.0 for e in epochs]
            )
            ax.plot(epochs, mean, color=f"C{i % 10}", label=row, marker="o", markersize=2.5)
            ax.fill_between(
                epochs, mean - sd, mean + sd, color=f"C{i % 10}", alpha=0.2, linewidth=0
            )
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        if key == "lr" and ax.lines and all(np.all(line.get_ydata() > 0) for line in ax.lines):
            ax.set_yscale("log")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(True, alpha=0.3)
    for ax in list(axes.flat)[len(curves) :]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(
        "Mean over seeds per epoch; band: ±1 sd over the seeds that ran that epoch", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return (
        "Training curves, mean over seeds with a ±1 sd band; a run that stopped early leaves the "
        "later epochs to the seeds that went on. Each row's loss is its own loss: compare the "
        "metrics above."
    )
