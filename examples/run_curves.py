"""The curves of one run: ``curves.png`` beside its ``results.json``.

Two panels from the Trainer's per-epoch history (``fit()["history"]``, the records of
``metrics.jsonl``): the training and validation loss, and the validation accuracy. Sweeps
plot their own comparisons (compare_report.py); this is the picture of a single run.
matplotlib comes with the ``examples`` extra; without it the PNG is skipped with one log line.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("pointer_v45")
__all__ = ["LOSSES", "METRIC", "write_curves"]

LOSSES = ("train_loss", "val_loss")
METRIC = "val_acc@1"


def _series(history: Sequence[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """The epochs and finite values of ``key`` in ``history`` (records without it are left out)."""
    epochs = []
    values = []
    for record in history:
        value = record.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            epochs.append(int(record["epoch"]))
            values.append(float(value))
    return epochs, values


def write_curves(
    history: Sequence[Mapping[str, Any]], path: Path, best_epoch: int | None = None
) -> Path | None:
    """Draw the loss and ``val_acc@1`` per epoch of ``history`` into the PNG ``path``.

    Args:
        history: Epoch records, each with ``epoch`` and any of ``train_loss``, ``val_loss``,
            ``val_acc@1``.
        path: The PNG to write (replaced whole: a kill leaves the old file or the new one).
        best_epoch: Marked by a dashed line on both panels (the epoch of ``best.pt``).

    Returns:
        ``path``, or None when matplotlib is missing or there is no epoch to draw.
    """
    if not history:
        log.info("curves: no epoch trained, %s not drawn", path.name)
        return None
    try:
        from matplotlib.figure import Figure
    except ImportError:
        log.info(
            "curves: matplotlib is not installed (pip install 'trainkit-pt[examples]'): %s not drawn",
            path.name,
        )
        return None
    figure = Figure(figsize=(9.0, 3.6), layout="constrained")
    loss_axes, metric_axes = figure.subplots(1, 2)
    for key in LOSSES:
        epochs, values = _series(history, key)
        loss_axes.plot(epochs, values, marker="o", markersize=3, label=key)
    loss_axes.set(xlabel="epoch", ylabel="loss", title="loss")
    epochs, values = _series(history, METRIC)
    metric_axes.plot(epochs, values, marker="o", markersize=3, color="tab:green")
    metric_axes.set(xlabel="epoch", ylabel=f"{METRIC} (%)", title=METRIC)
    for axes in (loss_axes, metric_axes):
        if best_epoch is not None:
            axes.axvline(
                best_epoch, color="grey", linestyle="--", label=f"best: epoch {best_epoch}"
            )
        axes.grid(alpha=0.3)
        axes.xaxis.get_major_locator().set_params(integer=True)
    loss_axes.legend()
    temporary = path.with_name(f".{path.name}.tmp")
    figure.savefig(temporary, format="png", dpi=100)
    os.replace(temporary, path)  # a kill leaves the old picture or the new one
    return path
