"""MLflowLogger: the Trainer's records as MLflow metrics (docs/loggers.md#mlflow).

Implements the logger protocol of :mod:`trainkit.loggers` (``log``, ``truncate``,
``close``) on :class:`mlflow.tracking.MlflowClient`, so it never touches MLflow's global
"active run". Needs the ``mlflow`` extra (``mlflow-skinny``), imported when the logger is
created.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import Any

__all__ = ["MLflowLogger"]

_MISSING = "MLflowLogger needs the mlflow package: pip install 'trainkit-pt[mlflow]'"
_NOT_A_METRIC = ("epoch", "step")          # the x-axes, not metrics (as in the TensorBoard logs)
_INVALID = re.compile(r"[^\w\-. :/]")      # what MLflow refuses in a metric name


def metric_name(key: str) -> str:
    """The MLflow name of a record key: characters MLflow refuses become ``_`` (``val_acc@1`` -> ``val_acc_1``)."""
    return _INVALID.sub("_", key)


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
            raise ImportError(_MISSING) from exc
        if not isinstance(experiment, str) or not experiment:
            raise ValueError(f"experiment must be a non-empty string, got {experiment!r}")
        self._Metric, self._RunTag = Metric, RunTag
        self.client = MlflowClient(tracking_uri)
        if run_id is not None:
            try:
                self.client.get_run(run_id)
            except MlflowException as exc:
                raise ValueError(f"run_id {run_id!r} names no MLflow run at {self.client.tracking_uri!r}") from exc
            self.client.update_run(run_id, status="RUNNING")
            self.run_id = run_id
        else:
            found = self.client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found is not None else self.client.create_experiment(experiment)
            self.run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id
            if params:
                self.client.log_batch(self.run_id, params=[Param(str(k), str(v)) for k, v in params.items()])
        if tags:
            self.client.log_batch(self.run_id, tags=[RunTag(str(k), str(v)) for k, v in tags.items()])
        self._closed = False

    def log(self, record: Mapping[str, Any], step: int) -> None:
        """Log each int/float value of ``record`` (bools, strings and ``epoch``/``step`` skipped) at ``step``.

        Args:
            record: An epoch or step record.
            step: The global step (the x-axis).

        Raises:
            ValueError: the logger is closed.
        """
        if self._closed:
            raise ValueError("MLflowLogger.log called after close()")
        stamp = int(time.time() * 1000)
        metrics = [
            self._Metric(metric_name(key), float(value), stamp, int(step))
            for key, value in record.items()
            if key not in _NOT_A_METRIC and isinstance(value, (int, float)) and not isinstance(value, bool)
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
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be a non-negative int, got {step!r}")
        self.client.set_tag(self.run_id, "trainkit.resumed_at_step", str(step))

    def close(self) -> None:
        """Mark the run finished (calling it again does nothing)."""
        if not self._closed:
            self.client.set_terminated(self.run_id, status="FINISHED")
            self._closed = True
