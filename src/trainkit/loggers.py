"""Where training records go: JSON lines, CSV, TensorBoard, MLflow, W&B (docs/trainer.md, docs/loggers.md).

A logger receives every record with the global step it belongs to. Epoch records and step
records both reach every logger; a record is a step record when it has the key
``"step_train_loss"``, and each file logger keeps one kind (``kind="epoch"`` or
``"step"``). After a resume the Trainer calls :func:`restore_log` on each logger: the file
loggers drop the records logged after ``step`` (and a line torn by a crash, and lines that are
not UTF-8) and add back the checkpoint's epoch records the file lacks (a deleted
``metrics.jsonl`` is rewritten from the history); the others only ``truncate(step)``.
Only rank 0 of a torchrun job logs.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from trainkit._validate import check_int, shown
from trainkit.atomic import atomic_write
from trainkit.records import describe_epoch, epoch_record, is_step_record

__all__ = [
    "CSVLogger",
    "JSONLinesLogger",
    "Logger",
    "MLflowLogger",
    "TensorBoardLogger",
    "WandbLogger",
    "describe_epoch",
    "epoch_record",
    "is_step_record",
    "metric_name",
    "restore_log",
]

log = logging.getLogger("trainkit.loggers")
_KINDS = ("epoch", "step")


@runtime_checkable
class Logger(Protocol):
    """What the Trainer needs of a logger."""

    def log(self, record: Mapping[str, Any], step: int) -> None:
        """Record ``record`` at global step ``step``."""

    def truncate(self, step: int) -> None:
        """Drop the records logged after ``step`` (a resumed run logs them again)."""

    def close(self) -> None:
        """Flush and release files."""


def restore_log(sink: Logger, step: int, history: Sequence[Mapping[str, Any]]) -> None:
    """After a resume to global step ``step``: make ``sink``'s log agree with the checkpoint.

    Calls ``sink.restore(step, history)`` when the logger has that optional method (the file
    loggers: records after ``step`` dropped, the epoch records of ``history`` the file lacks
    added back), else ``sink.truncate(step)``.

    Args:
        sink: A logger.
        step: The checkpoint's global step.
        history: The checkpoint's epoch records (``TrainingProgress.history``).
    """
    restore = getattr(sink, "restore", None)
    if restore is not None:
        restore(step, history)
    else:
        sink.truncate(step)


def _read_lines(path: Path) -> list[str]:
    """The complete UTF-8 lines of ``path``, without their newline.

    A last line without a newline (torn by a kill mid-write) is dropped; so is a line that
    is not UTF-8, with one warning naming the file and the lines.
    """
    raw_lines = path.read_bytes().split(b"\n")
    raw_lines.pop()  # b"" after a final newline, else a line torn by a kill
    lines: list[str] = []
    undecodable: list[int] = []
    for number, raw in enumerate(raw_lines, start=1):
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            undecodable.append(number)
    if undecodable:
        log.warning(
            "%s: dropped %d line(s) that are not UTF-8 (line %s)",
            path,
            len(undecodable),
            ", ".join(str(number) for number in undecodable[:5]),
        )
    return lines


def _history_at(
    step: int, history: Sequence[Mapping[str, Any]], present: set[str]
) -> list[dict[str, Any]]:
    """The records of ``history`` up to ``step`` whose epoch (as text) is not in ``present``."""
    missing = []
    for record in history:
        at = record.get("step")
        if isinstance(at, int) and at <= step and str(record.get("epoch")) not in present:
            missing.append({"step": at, **record})  # as log() writes it: "step" first
    return missing


def _check_kind(kind: str) -> None:
    if kind not in _KINDS:
        raise ValueError(f"kind must be 'epoch' or 'step', got {kind!r}")


def _check_step(step: int) -> None:
    check_int("step", step, minimum=0)


class JSONLinesLogger:
    """One JSON object per line, appended (``metrics.jsonl``, ``steps.jsonl``).

    Args:
        path: The file (its directory is created).
        kind: Which records it keeps: ``"epoch"`` or ``"step"``.

    Raises:
        ValueError: unknown ``kind``.
    """

    def __init__(self, path: str | Path, kind: str = "epoch") -> None:
        _check_kind(kind)
        self.path = Path(path)
        self.kind = kind

    def _wants(self, record: Mapping[str, Any]) -> bool:
        return is_step_record(record) == (self.kind == "step")

    def log(self, record: Mapping[str, Any], step: int) -> None:
        """Append ``record`` (with ``"step"`` added when it lacks one) if it is of this kind."""
        if not self._wants(record):
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"step": step, **record}, allow_nan=True) + "\n")

    def truncate(self, step: int) -> None:
        """Rewrite the file (atomically) without records after ``step`` or unreadable lines
        (a line torn by a kill, one that is not JSON or not UTF-8: the last is warned about)."""
        self.restore(step, ())

    def restore(self, step: int, history: Sequence[Mapping[str, Any]]) -> None:
        """:meth:`truncate` to ``step``, then add the epoch records of ``history`` the file lacks.

        Lines already in the file stay as they were written; a record of ``history`` (up to
        ``step``) whose epoch has no line is written in its place, ordered by step. A step
        logger only truncates (the history holds epoch records).

        Args:
            step: The checkpoint's global step.
            history: The checkpoint's epoch records.
        """
        _check_step(step)
        if not self.path.is_file() and (self.kind == "step" or not history):
            return  # nothing to cut and nothing to add back
        kept: list[tuple[int, str]] = []
        present: set[str] = set()
        lines = _read_lines(self.path) if self.path.is_file() else []
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            at = record.get("step") if isinstance(record, dict) else None
            if isinstance(at, int) and at <= step:
                kept.append((at, line))
                present.add(str(record.get("epoch")))
        if self.kind == "epoch":
            for record in _history_at(step, history, present):
                kept.append((record["step"], json.dumps(record, allow_nan=True)))
            kept.sort(key=lambda entry: entry[0])  # stable: lines of one step keep their order
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, "".join(line + "\n" for _, line in kept))

    def close(self) -> None:
        """Nothing to release: each record is appended and the file closed."""


class CSVLogger:
    """One row per record, a header of the keys (a new key rewrites the file with it).

    Args:
        path: The ``.csv`` file (its directory is created).
        kind: Which records it keeps: ``"epoch"`` or ``"step"``.

    Raises:
        ValueError: unknown ``kind``.
    """

    def __init__(self, path: str | Path, kind: str = "epoch") -> None:
        _check_kind(kind)
        self.path = Path(path)
        self.kind = kind

    def _header(self) -> list[str]:
        """The columns of the file (its first line only: appending stays linear in the rows)."""
        if not self.path.is_file():
            return []
        with open(self.path, newline="", encoding="utf-8", errors="replace") as handle:
            return next(csv.reader(handle), [])

    def _read(self) -> tuple[list[str], list[dict[str, str]]]:
        """The columns and the complete rows (a row torn by a kill, or not UTF-8, is dropped).

        Raises:
            ValueError: the file is not a CSV that this logger can read (names the file).
        """
        if not self.path.is_file():
            return [], []
        text = "".join(line + "\n" for line in _read_lines(self.path))
        try:
            reader = csv.DictReader(io.StringIO(text, newline=""))
            rows = [row for row in reader if _complete(row)]
        except csv.Error as exc:
            raise ValueError(f"{self.path}: cannot read the CSV log: {exc}") from None
        return list(reader.fieldnames or []), rows

    def _write(self, columns: list[str], rows: list[Mapping[str, Any]]) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, buffer.getvalue())

    def log(self, record: Mapping[str, Any], step: int) -> None:
        """Append a row if ``record`` is of this kind."""
        if is_step_record(record) != (self.kind == "step"):
            return
        row = {"step": step, **record}
        columns = self._header()
        if columns and set(row) <= set(columns):
            with open(self.path, "a", newline="", encoding="utf-8") as handle:
                csv.DictWriter(handle, fieldnames=columns, lineterminator="\n").writerow(row)
            return
        columns, rows = self._read()  # a new key: rewrite the file with a wider header
        self._write(columns + [key for key in row if key not in columns], [*rows, row])

    def truncate(self, step: int) -> None:
        """Rewrite the file without rows after ``step``, torn rows or lines that are not UTF-8."""
        self.restore(step, ())

    def restore(self, step: int, history: Sequence[Mapping[str, Any]]) -> None:
        """:meth:`truncate` to ``step``, then add the epoch records of ``history`` the file lacks.

        Args:
            step: The checkpoint's global step.
            history: The checkpoint's epoch records (a step logger ignores them).
        """
        _check_step(step)
        columns, rows = self._read()
        kept: list[Mapping[str, Any]] = [
            row for row in rows if row["step"].isdigit() and int(row["step"]) <= step
        ]
        if self.kind == "epoch":
            present = {row.get("epoch", "") for row in kept}
            for record in _history_at(step, history, present):
                columns += [key for key in record if key not in columns]
                kept.append(record)
            kept = sorted(kept, key=lambda row: int(row["step"]))  # stable
        if columns:
            self._write(columns, kept)

    def close(self) -> None:
        """Nothing to release: each row is appended and the file closed."""


def _complete(row: Mapping[Any, Any]) -> bool:
    """Whether a ``csv.DictReader`` row has every cell and no extra one (not torn)."""
    return None not in row and None not in row.values() and isinstance(row.get("step"), str)


class TensorBoardLogger:
    """Every numeric value as a scalar of the same name, on the global-step axis.

    Needs the optional ``tensorboard`` package; without it one line says so and the logger
    does nothing. The event file is opened at the first record (so a logger that never logs,
    as on the other ranks of a torchrun job, writes nothing).

    Args:
        directory: The TensorBoard log directory.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.writer: Any = None
        self._purge_step: int | None = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.info(
                "tensorboard is not installed (pip install 'trainkit-pt[tensorboard]'): %s not written",
                self.directory,
            )
            self._writer_class: Any = None
        else:
            self._writer_class = SummaryWriter

    def log(self, record: Mapping[str, Any], step: int) -> None:
        """Add each int/float value of ``record`` (except ``epoch`` and ``step``) at ``step``.

        Raises:
            ValueError: a value is an int too large for a float (``10**400``; the key is
                named); nothing of the record is written then.
        """
        if self._writer_class is None:
            return
        values = _float_metrics(record, "TensorBoardLogger")
        if self.writer is None:
            self.writer = self._writer_class(
                log_dir=str(self.directory), purge_step=self._purge_step
            )
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        if not is_step_record(record):
            self.writer.flush()

    def truncate(self, step: int) -> None:
        """Hide events logged after ``step`` (TensorBoard's ``purge_step``, applied by the next writer)."""
        self.close()
        self._purge_step = step + 1

    def close(self) -> None:
        """Flush and close the event file (a later record opens a new one)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None


# ---------------------------------------------------------------- MLflow (docs/loggers.md)
_MLFLOW_MISSING = "MLflowLogger needs the mlflow package: pip install 'trainkit-pt[mlflow]'"
_MLFLOW_INVALID = re.compile(r"[^\w\-. :/]")  # what MLflow refuses in a metric name
_MLFLOW_MAX_NAME = 250  # MLflow's longest metric name


_X_AXES = ("epoch", "step")  # record keys that are positions, not metrics


def _metric_values(record: Mapping[str, Any]) -> dict[str, int | float]:
    """The int/float values of ``record`` for a tracking service: bools, strings and the x-axes
    (``epoch``, ``step``) left out."""
    return {
        key: value
        for key, value in record.items()
        if key not in _X_AXES and isinstance(value, (int, float)) and not isinstance(value, bool)
    }


def _float_metrics(record: Mapping[str, Any], owner: str) -> dict[str, float]:
    """:func:`_metric_values` as floats.

    Raises:
        ValueError: an int too large for a float (``10**400``), naming ``owner`` and the key.
    """
    values = {}
    for key, value in _metric_values(record).items():
        try:
            values[key] = float(value)
        except OverflowError:
            raise ValueError(
                f"{owner}: record[{key!r}] is an int of {int(value).bit_length()} bits, "
                "too large for a float"
            ) from None
    return values


def metric_name(key: str) -> str:
    """The MLflow name of a record key: characters MLflow refuses become ``_`` (``val_acc@1`` -> ``val_acc_1``)."""
    return _MLFLOW_INVALID.sub("_", key)


class MLflowLogger:
    """Log every numeric value of each record as an MLflow metric at the given step.

    Args:
        tracking_uri: Where the runs live (``"file:///abs/mlruns"``, ``"sqlite:///mlflow.db"``,
            ``"http://host:5000"``); ``None`` uses MLflow's default (``MLFLOW_TRACKING_URI``).
        experiment: The experiment name; created when missing.
        run_name: The new run's display name.
        run_id: Continue this existing run instead of starting one (resuming a training run).
        params: Logged once as run parameters of a new run (values converted with ``str``).
        tags: Set on the run.

    Raises:
        ImportError: ``mlflow`` is not installed (a one-line message with the install command).
        ValueError: ``experiment`` is empty, or ``run_id`` names no run at ``tracking_uri``.
    """

    def __init__(
        self,
        tracking_uri: str | None = None,
        *,
        experiment: str = "trainkit",
        run_name: str | None = None,
        run_id: str | None = None,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        try:
            from mlflow.entities import Metric, Param, RunTag
            from mlflow.exceptions import MlflowException
            from mlflow.tracking import MlflowClient
        except ImportError as exc:
            raise ImportError(_MLFLOW_MISSING) from exc
        if not isinstance(experiment, str) or not experiment:
            raise ValueError(f"experiment must be a non-empty string, got {experiment!r}")
        self._Metric, self._RunTag = Metric, RunTag
        self.client = MlflowClient(tracking_uri)
        if run_id is not None:
            try:
                self.client.get_run(run_id)
            except MlflowException as exc:
                raise ValueError(
                    f"run_id {run_id!r} names no MLflow run at {self.client.tracking_uri!r}"
                ) from exc
            self.client.update_run(run_id, status="RUNNING")
            self.run_id = run_id
        else:
            found = self.client.get_experiment_by_name(experiment)
            experiment_id = (
                found.experiment_id
                if found is not None
                else self.client.create_experiment(experiment)
            )
            self.run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id
            if params:
                self.client.log_batch(
                    self.run_id, params=[Param(str(k), str(v)) for k, v in params.items()]
                )
        if tags:
            self.client.log_batch(
                self.run_id, tags=[RunTag(str(k), str(v)) for k, v in tags.items()]
            )
        self._closed = False
        self._keys: dict[str, str] = {}  # MLflow name -> the record key logged under it

    def _names(self, keys: list[str]) -> dict[str, str]:
        """``{record key: MLflow name}``; the names are remembered once all are accepted.

        Raises:
            ValueError: a key whose name is empty or longer than 250 characters, or two keys
                (in this record or over the run) that become the same name (``a@b``, ``a#b``).
        """
        names: dict[str, str] = {}
        taken = dict(self._keys)
        for key in keys:
            name = metric_name(key) if isinstance(key, str) else ""
            if not name.strip():
                raise ValueError(f"MLflowLogger: record key {key!r} is no MLflow metric name")
            if len(name) > _MLFLOW_MAX_NAME:
                raise ValueError(
                    f"MLflowLogger: record key {shown(key)} has {len(name)} characters; "
                    f"MLflow takes at most {_MLFLOW_MAX_NAME}"
                )
            first = taken.setdefault(name, key)
            if first != key:
                raise ValueError(
                    f"MLflowLogger: record keys {first!r} and {key!r} both become the MLflow "
                    f"metric {name!r}; rename one"
                )
            names[key] = name
        self._keys = taken
        return names

    def log(self, record: Mapping[str, Any], step: int) -> None:
        """Log each int/float value of ``record`` (bools, strings and ``epoch``/``step`` skipped) at ``step``.

        Args:
            record: An epoch or step record.
            step: The global step (the x-axis).

        Raises:
            ValueError: the logger is closed; a value is an int too large for a float; a key
                is empty or longer than 250 characters once MLflow's refused characters are
                replaced; two keys become the same MLflow name (``a@b`` and ``a#b`` are both
                ``a_b``): one line naming them, and nothing of the record is logged.
        """
        if self._closed:
            raise ValueError("MLflowLogger.log called after close()")
        values = _float_metrics(record, "MLflowLogger")
        names = self._names(list(values))
        stamp = int(time.time() * 1000)
        metrics = [
            self._Metric(names[key], value, stamp, int(step)) for key, value in values.items()
        ]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def truncate(self, step: int) -> None:
        """Mark a resume at ``step``; MLflow cannot delete metric values, so none are removed.

        Values the interrupted run logged after ``step`` stay in the history; the resumed run
        logs those steps again, and the tag ``trainkit.resumed_at_step`` records where that
        starts (docs/loggers.md#mlflow).

        Args:
            step: The global step of the checkpoint the run resumes from.

        Raises:
            ValueError: ``step`` is not a non-negative int.
        """
        _check_step(step)
        self.client.set_tag(self.run_id, "trainkit.resumed_at_step", str(step))

    def close(self) -> None:
        """Mark the run finished (calling it again does nothing)."""
        if not self._closed:
            self.client.set_terminated(self.run_id, status="FINISHED")
            self._closed = True


# ---------------------------------------------------------------- W&B (docs/loggers.md)
_WANDB_MISSING = "WandbLogger needs the wandb package: pip install 'trainkit-pt[wandb]'"
_WANDB_STEP = "global_step"  # the x-axis of every chart (a metric of its own)


class WandbLogger:
    """Log every numeric value of each record to a Weights & Biases run, against ``global_step``.

    The global step is logged as the metric ``global_step`` and declared the x-axis of every
    other metric (``define_metric``), instead of being passed as W&B's own ``step``: W&B drops
    a point whose ``step`` is lower than the last one it saw, which a resumed run would hit.
    The run starts at the first record (a logger that never logs, as on the other ranks of a
    torchrun job, starts nothing) and always has the id :attr:`run_id`.

    Args:
        project: The W&B project.
        run_id: Continue the W&B run with this id (resuming a training run); ``None`` makes a new id.
        name: The run's display name.
        config: Stored as the run's config.
        tags: The run's tags.
        directory: Where W&B writes its files (``wandb.init(dir=...)``); ``None``: W&B's default.
        mode: ``"online"``, ``"offline"`` or ``"disabled"``; ``None``: W&B's default (``WANDB_MODE``).

    Raises:
        ImportError: ``wandb`` is not installed (a one-line message with the install command).
        ValueError: ``project`` or ``run_id`` is empty, or ``mode`` is unknown.
    """

    def __init__(
        self,
        project: str = "trainkit",
        *,
        run_id: str | None = None,
        name: str | None = None,
        config: Mapping[str, Any] | None = None,
        tags: list[str] | None = None,
        directory: str | Path | None = None,
        mode: str | None = None,
    ) -> None:
        try:
            import wandb
        except ImportError as exc:
            raise ImportError(_WANDB_MISSING) from exc
        if not isinstance(project, str) or not project:
            raise ValueError(f"project must be a non-empty string, got {project!r}")
        if run_id is not None and (not isinstance(run_id, str) or not run_id):
            raise ValueError(f"run_id must be a non-empty string or None, got {run_id!r}")
        if mode not in (None, "online", "offline", "disabled"):
            raise ValueError(f"mode must be 'online', 'offline', 'disabled' or None, got {mode!r}")
        self._wandb = wandb
        self.run_id = run_id if run_id is not None else uuid.uuid4().hex[:12]
        self._init = {
            "project": project,
            "id": self.run_id,
            "name": name,
            "config": dict(config or {}),
            "tags": list(tags) if tags else None,
            "dir": None if directory is None else str(directory),
            "mode": mode,
            "resume": "allow",
            "reinit": "create_new",
        }
        self.run: Any = None
        self._resumed_at: int | None = None
        self._closed = False

    def _start(self) -> Any:
        if self.run is None:
            self.run = self._wandb.init(**self._init)
            self.run.define_metric(_WANDB_STEP)
            self.run.define_metric("*", step_metric=_WANDB_STEP)
            if self._resumed_at is not None:
                self.run.summary["trainkit/resumed_at_step"] = self._resumed_at
        return self.run

    def log(self, record: Mapping[str, Any], step: int) -> None:
        """Log each int/float value of ``record`` (bools, strings and ``epoch``/``step`` skipped) with ``global_step=step``.

        Args:
            record: An epoch or step record.
            step: The global step (the x-axis).

        Raises:
            ValueError: the logger is closed.
        """
        if self._closed:
            raise ValueError("WandbLogger.log called after close()")
        metrics = _metric_values(record)
        if metrics:
            self._start().log({_WANDB_STEP: int(step), **metrics})

    def truncate(self, step: int) -> None:
        """Mark a resume at ``step`` in the run summary; W&B keeps the points already logged.

        Points the interrupted run logged after ``step`` stay in the run's history; the
        resumed run logs those global steps again, and the summary key
        ``trainkit/resumed_at_step`` records where that starts (docs/loggers.md#weights-biases).

        Args:
            step: The global step of the checkpoint the run resumes from.

        Raises:
            ValueError: ``step`` is not a non-negative int.
        """
        _check_step(step)
        self._resumed_at = step
        if self.run is not None:
            self.run.summary["trainkit/resumed_at_step"] = step

    def close(self) -> None:
        """Finish the run (calling it again does nothing)."""
        if not self._closed:
            if self.run is not None:
                self.run.finish()
            self._closed = True
