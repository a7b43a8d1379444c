"""Loggers: JSON lines and CSV per epoch and every N steps, truncation on resume, TensorBoard names."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from trainkit import CSVLogger, JSONLinesLogger, TensorBoardLogger


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_jsonl_and_csv_logs_per_epoch_and_per_step(tmp_path: Path, build_trainer) -> None:
    loggers = [
        JSONLinesLogger(tmp_path / "metrics.jsonl"),
        JSONLinesLogger(tmp_path / "steps.jsonl", kind="step"),
        CSVLogger(tmp_path / "metrics.csv"),
        CSVLogger(tmp_path / "steps.csv", kind="step"),
    ]
    build_trainer(tmp_path, epochs=2, loggers=loggers).fit()
    epochs = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["epoch"] for r in epochs] == [1, 2]
    for key in (
        "step",
        "lr",
        "train_loss",
        "val_loss",
        "val_acc@1",
        "grad_norm",
        "fp16_overflow_steps",
        "nonfinite_steps",
        "epoch_seconds",
    ):
        assert key in epochs[0], key
    steps = read_jsonl(tmp_path / "steps.jsonl")
    assert [r["step"] for r in steps] == [2, 4, 6, 8, 10, 12]  # log_every=2, 6 steps per epoch
    assert all({"step_train_loss", "step_lr", "epoch"} <= set(r) for r in steps)
    with open(tmp_path / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [float(r["val_loss"]) for r in rows] == [r["val_loss"] for r in epochs]
    with open(tmp_path / "steps.csv", newline="") as handle:
        assert [int(r["step"]) for r in csv.DictReader(handle)] == [2, 4, 6, 8, 10, 12]


@pytest.mark.parametrize(
    "make",
    [lambda p: JSONLinesLogger(p / "log.jsonl"), lambda p: CSVLogger(p / "log.csv")],
    ids=["jsonl", "csv"],
)
def test_truncate_drops_later_records_and_a_torn_line(tmp_path: Path, make) -> None:
    logger = make(tmp_path)
    for step in (6, 12, 18):
        logger.log({"epoch": step // 6, "val_loss": 1.0 / step}, step)
    path = logger.path
    path.write_text(
        path.read_text() + ('{"step": 24, "epo' if path.suffix == ".jsonl" else "24,4")
    )  # a crash mid-write
    logger.truncate(12)
    text = path.read_text()
    assert "18" not in text and "24" not in text and text.endswith("\n")
    logger.log({"epoch": 3, "val_loss": 0.5}, 18)
    if path.suffix == ".jsonl":
        assert [r["step"] for r in read_jsonl(path)] == [6, 12, 18]
    else:
        with open(path, newline="") as handle:
            assert [int(r["step"]) for r in csv.DictReader(handle)] == [6, 12, 18]


def test_csv_logger_adds_a_column_for_a_new_key(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path / "m.csv")
    logger.log({"epoch": 1, "val_loss": 2.0}, 6)
    logger.log({"epoch": 2, "val_loss": 1.5, "running_avg_loss": 1.9}, 12)
    with open(tmp_path / "m.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows[0]["running_avg_loss"] == "" and rows[1]["running_avg_loss"] == "1.9"


def test_a_logger_of_an_unknown_kind_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="kind must be 'epoch' or 'step', got 'epochs'"):
        JSONLinesLogger(tmp_path / "x.jsonl", kind="epochs")


def test_resume_truncates_every_logger_to_the_checkpoint(tmp_path: Path, build_trainer) -> None:
    def loggers():
        return [
            JSONLinesLogger(tmp_path / "metrics.jsonl"),
            JSONLinesLogger(tmp_path / "steps.jsonl", kind="step"),
        ]

    build_trainer(tmp_path, epochs=3, epoch_checkpoints=True, loggers=loggers()).fit()
    second = build_trainer(tmp_path, epochs=3, epoch_checkpoints=True, loggers=loggers())
    second.resume(tmp_path / "ckpt" / "epoch-0002.pt")
    assert [r["epoch"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2]
    assert read_jsonl(tmp_path / "steps.jsonl")[-1]["step"] == 12
    second.fit()
    assert [r["epoch"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [
        1,
        2,
        3,
    ]  # epoch 3 once, not twice
    assert [r["step"] for r in read_jsonl(tmp_path / "steps.jsonl")] == list(range(2, 19, 2))


def test_tensorboard_scalars_use_the_jsonl_names(tmp_path: Path, build_trainer) -> None:
    pytest.importorskip("tensorboard", reason="the optional 'tensorboard' extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = TensorBoardLogger(tmp_path / "tb")
    build_trainer(
        tmp_path, epochs=2, loggers=[JSONLinesLogger(tmp_path / "metrics.jsonl"), board]
    ).fit()
    board.close()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    epochs = read_jsonl(tmp_path / "metrics.jsonl")
    numeric = {
        k
        for k, v in epochs[0].items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("epoch", "step")
    }
    assert numeric <= tags
    assert {"step_train_loss", "step_lr"} <= tags
    val_loss = [e.value for e in events.Scalars("val_loss")]
    assert val_loss == pytest.approx([r["val_loss"] for r in epochs], rel=1e-6)


def test_tensorboard_resume_hides_events_after_the_checkpoint(
    tmp_path: Path, build_trainer
) -> None:
    pytest.importorskip("tensorboard", reason="the optional 'tensorboard' extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    first = TensorBoardLogger(tmp_path / "tb")
    build_trainer(
        tmp_path, epochs=3, epoch_checkpoints=True, loggers=[first]
    ).fit()  # then "die" after epoch 2
    first.close()
    second = TensorBoardLogger(tmp_path / "tb")
    trainer = build_trainer(tmp_path, epochs=3, epoch_checkpoints=True, loggers=[second])
    trainer.resume(tmp_path / "ckpt" / "epoch-0002.pt")
    trainer.fit()
    second.close()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("val_loss")] == [6, 12, 18]  # epoch 3 once, not twice


def test_tensorboard_without_the_package_is_one_line_and_a_no_op(
    tmp_path: Path, monkeypatch, caplog
) -> None:
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with caplog.at_level("INFO", logger="trainkit.loggers"):
        board = TensorBoardLogger(tmp_path / "tb")
    assert len(caplog.records) == 1 and "tensorboard is not installed" in caplog.text
    board.log({"val_loss": 1.0}, 1)
    board.truncate(0)
    board.close()
    assert not (tmp_path / "tb").exists()


# --------------------------------------------------------------- nothing lost on resume (issue 22)
HISTORY = [
    {"epoch": e, "step": 6 * e, "val_loss": 1.0 / e, "checkpoint_seconds": 0.1} for e in (1, 2, 3)
]


def test_restore_rewrites_a_deleted_file_from_the_history(tmp_path: Path) -> None:
    jsonl = JSONLinesLogger(tmp_path / "metrics.jsonl")
    jsonl.restore(12, HISTORY)
    assert [(r["epoch"], r["step"]) for r in read_jsonl(jsonl.path)] == [(1, 6), (2, 12)]
    table = CSVLogger(tmp_path / "metrics.csv")
    table.restore(18, HISTORY)
    with open(table.path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["step"], r["epoch"], r["val_loss"]) for r in rows] == [
        ("6", "1", "1.0"),
        ("12", "2", "0.5"),
        ("18", "3", str(1 / 3)),
    ]


def test_restore_keeps_the_lines_written_and_adds_only_the_missing_epochs(tmp_path: Path) -> None:
    logger = JSONLinesLogger(tmp_path / "metrics.jsonl")
    logger.log({"epoch": 1, "val_loss": 1.0, "note": "as logged"}, 6)
    logger.log({"epoch": 3, "val_loss": 0.3, "note": "as logged"}, 18)  # epoch 2's line lost
    logger.restore(18, HISTORY)
    records = read_jsonl(logger.path)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert records[0]["note"] == records[2]["note"] == "as logged" and "note" not in records[1]
    steps = JSONLinesLogger(tmp_path / "steps.jsonl", kind="step")
    steps.restore(12, HISTORY)
    assert not steps.path.exists()  # a step log is not rebuilt from epoch records


@pytest.mark.parametrize(
    "tail",
    [b"4,,", b"4,1,0.2", b"24,4,\xc3", b'24,4,"\xe2\x82'],
    ids=["empty-cells", "short-row", "torn-utf8", "torn-utf8-quoted"],
)
def test_csv_truncate_drops_a_row_torn_by_a_kill(tmp_path: Path, tail: bytes) -> None:
    logger = CSVLogger(tmp_path / "m.csv")
    for step in (6, 12):
        logger.log({"epoch": step // 6, "lr": 0.1, "val_loss": 1.0 / step}, step)
    logger.path.write_bytes(logger.path.read_bytes() + tail)
    logger.truncate(30)
    with open(logger.path, newline="") as handle:
        assert [r["step"] for r in csv.DictReader(handle)] == ["6", "12"]


def test_non_utf8_lines_are_dropped_with_one_warning_naming_the_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    logger = JSONLinesLogger(tmp_path / "metrics.jsonl")
    logger.log({"epoch": 1, "val_loss": 1.0}, 6)
    with open(logger.path, "ab") as handle:
        handle.write(b'{"step": 9, "note": "\xff\xfe"}\n')
    logger.log({"epoch": 2, "val_loss": 0.5}, 12)
    with caplog.at_level("WARNING", logger="trainkit.loggers"):
        logger.truncate(12)
    assert [r["step"] for r in read_jsonl(logger.path)] == [6, 12]
    assert len(caplog.records) == 1 and str(logger.path) in caplog.text and "line 2" in caplog.text


def test_csv_logging_does_not_read_the_rows_back(tmp_path: Path, monkeypatch) -> None:
    logger = CSVLogger(tmp_path / "m.csv")
    logger.log({"epoch": 1, "val_loss": 1.0}, 6)
    reads = []
    real_read = CSVLogger._read

    def counting_read(self: CSVLogger):
        reads.append(1)
        return real_read(self)

    monkeypatch.setattr(CSVLogger, "_read", counting_read)
    for epoch in range(2, 50):
        logger.log({"epoch": epoch, "val_loss": 1.0 / epoch}, 6 * epoch)
    assert reads == []  # appending is linear in the rows: the file is not re-read per record
    logger.log({"epoch": 50, "val_loss": 0.02, "new_key": 1}, 300)
    assert reads == [1]  # a new column rewrites the file once
    with open(logger.path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 50 and rows[-1]["new_key"] == "1" and rows[0]["new_key"] == ""


class _Writer:
    """Stands in for TensorBoard's SummaryWriter (the package is optional)."""

    def __init__(self, **kwargs: object) -> None:
        self.scalars: list[tuple[str, float, int]] = []

    def add_scalar(self, key: str, value: float, step: int) -> None:
        self.scalars.append((key, value, step))

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_tensorboard_refuses_an_int_too_large_for_a_float_naming_it(tmp_path: Path) -> None:
    board = TensorBoardLogger(tmp_path / "tb")
    board._writer_class = _Writer
    with pytest.raises(ValueError, match=r"record\['huge'\].*too large for a float") as info:
        board.log({"val_loss": 1.0, "huge": 10**400}, 1)
    assert "\n" not in str(info.value)
    board.log({"val_loss": 1.0, "count": 10**300}, 2)
    assert board.writer.scalars == [("val_loss", 1.0, 2), ("count", 1e300, 2)]


def test_the_tensorboard_install_hint_names_the_distribution(
    tmp_path: Path, monkeypatch, caplog
) -> None:
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with caplog.at_level("INFO", logger="trainkit.loggers"):
        TensorBoardLogger(tmp_path / "tb")
    assert "pip install 'trainkit-pt[tensorboard]'" in caplog.text
