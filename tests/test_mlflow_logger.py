"""``MLflowLogger`` against a local MLflow file store (needs the ``mlflow`` extra)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from trainkit.loggers import MLflowLogger, metric_name

try:
    from mlflow.tracking import MlflowClient

    HAVE_MLFLOW = True
except ImportError:
    HAVE_MLFLOW = False
needs_mlflow = pytest.mark.skipif(
    not HAVE_MLFLOW, reason="mlflow is not installed (pip install 'trainkit-pt[mlflow]')"
)


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    # MLflow 3 keeps the file store in maintenance mode and refuses it unless this is set.
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    return (tmp_path / "mlruns").as_uri()


def history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in MlflowClient(uri).get_metric_history(run_id, key)]


EPOCH = {
    "epoch": 1,
    "step": 30,
    "lr": 0.001,
    "train_loss": 2.5,
    "val_loss": 2.25,
    "val_acc@1": 0.375,
    "improved": True,
    "note": "text",
    "epoch_seconds": 1.5,
}


@needs_mlflow
def test_records_become_metrics_at_their_step(store: str) -> None:
    logger = MLflowLogger(
        store, experiment="exp", run_name="run", params={"lr": 0.001, "recipe": "proposed"}
    )
    logger.log(EPOCH, step=30)
    logger.log({"step": 10, "epoch": 1, "step_train_loss": 3.0, "step_lr": 0.0005}, step=10)
    logger.log({**EPOCH, "epoch": 2, "val_loss": 2.0}, step=60)
    logger.close()
    run = MlflowClient(store).get_run(logger.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.params == {"lr": "0.001", "recipe": "proposed"}
    assert set(run.data.metrics) == {
        "lr",
        "train_loss",
        "val_loss",
        "val_acc_1",
        "epoch_seconds",
        "step_train_loss",
        "step_lr",
    }
    assert history(store, logger.run_id, "val_loss") == [(30, 2.25), (60, 2.0)]
    assert history(store, logger.run_id, "val_acc_1") == [(30, 0.375), (60, 0.375)]
    assert history(store, logger.run_id, "step_train_loss") == [(10, 3.0)]


@needs_mlflow
def test_resume_continues_the_same_run_and_marks_the_truncation(store: str) -> None:
    first = MLflowLogger(store, experiment="exp")
    for step in (10, 20, 30):
        first.log({"val_loss": float(step)}, step=step)  # the run dies after logging step 30
    second = MLflowLogger(store, experiment="exp", run_id=first.run_id)
    second.truncate(20)  # its checkpoint was at step 20
    second.log({"val_loss": 30.5}, step=30)
    second.close()
    run = MlflowClient(store).get_run(first.run_id)
    assert run.data.tags["trainkit.resumed_at_step"] == "20"
    # MLflow cannot delete values: the interrupted run's step-30 value stays next to the new one
    assert sorted(history(store, first.run_id, "val_loss")) == [
        (10, 10.0),
        (20, 20.0),
        (30, 30.0),
        (30, 30.5),
    ]
    assert len(MlflowClient(store).search_runs([run.info.experiment_id])) == 1


@needs_mlflow
def test_an_existing_experiment_is_reused_and_tags_are_set(store: str) -> None:
    a = MLflowLogger(store, experiment="exp", tags={"team": "geo"})
    b = MLflowLogger(store, experiment="exp")
    client = MlflowClient(store)
    assert (
        client.get_run(a.run_id).info.experiment_id == client.get_run(b.run_id).info.experiment_id
    )
    assert client.get_run(a.run_id).data.tags["team"] == "geo"
    a.close()
    a.close()  # idempotent
    with pytest.raises(ValueError, match="after close"):
        a.log({"x": 1.0}, step=1)


@needs_mlflow
def test_bad_arguments(store: str) -> None:
    with pytest.raises(ValueError, match="run_id 'nope'"):
        MLflowLogger(store, run_id="nope")
    with pytest.raises(ValueError, match="experiment"):
        MLflowLogger(store, experiment="")
    logger = MLflowLogger(store)
    with pytest.raises(ValueError, match="step"):
        logger.truncate(-1)


def test_metric_names_mlflow_accepts() -> None:
    assert metric_name("val_acc@1") == "val_acc_1"
    assert metric_name("val_ndcg@10") == "val_ndcg_10"
    assert metric_name("a-b.c d:e/f_g") == "a-b.c d:e/f_g"


def test_missing_package_gives_a_one_line_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("mlflow", "mlflow.entities", "mlflow.exceptions", "mlflow.tracking"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match=r"pip install 'trainkit-pt\[mlflow\]'"):
        MLflowLogger()


@needs_mlflow
def test_the_docs_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from test_docs import DOCS, python_blocks

    blocks = [
        code
        for _, code, skipped in python_blocks(DOCS / "loggers.md")
        if skipped and "MLflowLogger" in code
    ]
    assert len(blocks) == 1
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    namespace: dict = {"__name__": "docs_loggers"}
    exec(compile(blocks[0], "docs/loggers.md", "exec"), namespace)
    store = (tmp_path / "mlruns").as_uri()
    assert history(store, namespace["logger"].run_id, "val_acc_1") == [(120, 0.21)]


# ------------------------------------------------------------- nothing silently merged (issue 22)


@needs_mlflow
@pytest.mark.parametrize(
    ("records", "named"),
    [
        ([{"a@b": 1.0, "a#b": 2.0}], r"'a@b' and 'a#b' both become the MLflow metric 'a_b'"),
        ([{"a@b": 1.0}, {"a#b": 2.0}], r"'a@b' and 'a#b' both become the MLflow metric 'a_b'"),
        ([{"": 1.0}], r"record key '' is no MLflow metric name"),
        ([{"x" * 251: 1.0}], r"251 characters; MLflow takes at most 250"),
        ([{"huge": 10**400}], r"record\['huge'\] is an int of 1329 bits, too large for a float"),
    ],
    ids=["one-record", "two-records", "empty", "too-long", "10**400"],
)
def test_a_key_or_value_mlflow_cannot_take_is_one_line_and_logs_nothing(
    store: str, records: list[dict], named: str
) -> None:
    logger = MLflowLogger(store)
    for record in records[:-1]:
        logger.log(record, step=1)
    with pytest.raises(ValueError, match=named) as info:
        logger.log({"val_loss": 0.5, **records[-1]}, step=2)
    assert "\n" not in str(info.value)
    assert history(store, logger.run_id, "val_loss") == []  # nothing of the refused record
    logger.log({"val_loss": 0.25, "x" * 250: 1.0}, step=3)  # the longest name MLflow takes
    assert history(store, logger.run_id, "val_loss") == [(3, 0.25)]
