"""The Trainer's records: what an epoch record holds, its console line, and step records.

Every logger receives these dicts (docs/trainer.md, "Records"). An epoch record names the
training sums and every validation metric under ``val_<metric>``; a step record has
``"step_train_loss"``. Kept apart from the loggers so that the format is one small page.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["describe_epoch", "epoch_record", "is_step_record"]


def is_step_record(record: Mapping[str, Any]) -> bool:
    """Whether ``record`` is a per-step record (it has ``"step_train_loss"``)."""
    return "step_train_loss" in record


def epoch_record(
    epoch: int,
    step: int,
    lr: float,
    train: Mapping[str, float],
    val: Mapping[str, Any],
    improved: bool,
    seconds: float,
    running_avg_loss: float | None = None,
) -> dict[str, Any]:
    """An epoch record: the Trainer's ``train_epoch`` and ``evaluate`` results under the logged names.

    Args:
        epoch, step: Completed epochs and the global step at the epoch's end.
        lr, train, val: The epoch's LR, training sums and validation result (``batch_losses`` is dropped).
        improved, seconds: Whether the selector saw a new best; the epoch's wall time.
        running_avg_loss: A ``RunningAverage`` selector's average (None: no such key).

    Returns:
        ``{"epoch", "step", "lr", "train_loss", "grad_norm", "fp16_overflow_steps", "nonfinite_steps",
        "val_loss", "val_<metric>"..., ["running_avg_loss"], "improved", "epoch_seconds"}``.
    """
    record: dict[str, Any] = {
        "epoch": epoch,
        "step": step,
        "lr": lr,
        "train_loss": train["loss"],
        "grad_norm": train["grad_norm"],
        "fp16_overflow_steps": train["fp16_overflow_steps"],
        "nonfinite_steps": train["nonfinite_steps"],
        "val_loss": val["loss"],
    }
    record.update(
        (f"val_{key}", value) for key, value in val.items() if key not in ("loss", "batch_losses")
    )
    if running_avg_loss is not None:
        record["running_avg_loss"] = running_avg_loss
    record.update(improved=improved, epoch_seconds=seconds)
    return record


def describe_epoch(record: Mapping[str, Any], epochs: int) -> str:
    """The one console line of an epoch record ("Epoch 3/50 | LR: ... | Val: ... | Acc@1: ...")."""
    skipped = "".join(
        f" | skipped: {record[key]} ({why})"
        for key, why in (
            ("fp16_overflow_steps", "fp16 overflow"),
            ("nonfinite_steps", "non-finite loss"),
        )
        if record.get(key)
    )
    acc = f"{record['val_acc@1']:.2f}%" if "val_acc@1" in record else "-"  # RankingMetrics' key
    return (
        f"Epoch {record['epoch']}/{epochs} | LR: {record['lr']:.2e} | Train: {record['train_loss']:.4f} | "
        f"Val: {record['val_loss']:.4f} | Acc@1: {acc}{skipped}{'  * new best' if record.get('improved') else ''}"
    )
