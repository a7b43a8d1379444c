"""``WandbLogger`` in W&B's offline mode (needs the ``wandb`` extra; no network)."""

from __future__ import annotations

import json
import struct
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from trainkit.loggers import JSONLinesLogger, WandbLogger

try:
    from wandb.proto import wandb_internal_pb2

    HAVE_WANDB = True
except ImportError:
    HAVE_WANDB = False
needs_wandb = pytest.mark.skipif(
    not HAVE_WANDB, reason="wandb is not installed (pip install 'trainkit-pt[wandb]')"
)


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """W&B writes offline runs under ``tmp_path`` and contacts no server."""
    for key, value in {
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(tmp_path),
        "WANDB_SILENT": "true",
        "WANDB_DISABLE_GIT": "true",
    }.items():
        monkeypatch.setenv(key, value)
    return tmp_path


def records(run_file: Path) -> Iterator[Any]:
    """The protobuf records of an offline run's ``.wandb`` file (a LevelDB-style log of 32 KiB blocks)."""
    data, block, pos, pending = run_file.read_bytes(), 32768, 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if pos + 7 + length > len(data):  # still being written
            return
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def name(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


def offline_run(logger: WandbLogger) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(history rows without W&B's own ``_`` keys, the last summary value of each key) of the logger's run."""
    run_file = Path(logger.run.settings.sync_file)
    # finish() can return before W&B's service process has written the file: wait for its exit record
    deadline = time.monotonic() + 60
    while not any(record.WhichOneof("record_type") == "exit" for record in records(run_file)):
        assert time.monotonic() < deadline, f"{run_file} has no exit record after 60 s"
        time.sleep(0.1)
    history, summary = [], {}
    for record in records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            items = {name(item): json.loads(item.value_json) for item in record.history.item}
            history.append({key: value for key, value in items.items() if not key.startswith("_")})
        elif kind == "summary":
            summary.update(
                (name(item), json.loads(item.value_json)) for item in record.summary.update
            )
    return history, summary


@needs_wandb
def test_records_are_logged_against_the_global_step(offline: Path) -> None:
    logger = WandbLogger("exp", name="run", config={"lr": 0.001}, directory=offline)
    logger.log(
        {
            "epoch": 1,
            "step": 30,
            "lr": 0.001,
            "val_loss": 2.25,
            "val_acc@1": 0.375,
            "improved": True,
            "note": "text",
        },
        step=30,
    )
    logger.log({"step": 32, "epoch": 1, "step_train_loss": 3.0}, step=32)
    logger.close()
    history, summary = offline_run(logger)
    assert history == [
        {"global_step": 30, "lr": 0.001, "val_loss": 2.25, "val_acc@1": 0.375},
        {"global_step": 32, "step_train_loss": 3.0},
    ]
    assert summary["val_loss"] == 2.25 and "trainkit/resumed_at_step" not in summary
    logger.close()  # idempotent
    with pytest.raises(ValueError, match="after close"):
        logger.log({"x": 1.0}, step=1)


@needs_wandb
def test_resume_continues_the_run_id_and_marks_the_truncation(offline: Path) -> None:
    first = WandbLogger("exp", directory=offline)
    for step in (10, 20, 30):
        first.log({"val_loss": float(step)}, step=step)  # the run dies after logging step 30
    first.close()
    second = WandbLogger("exp", run_id=first.run_id, directory=offline)
    second.truncate(20)  # its checkpoint was at step 20
    second.log({"val_loss": 30.5}, step=30)
    second.close()
    assert second.run.id == first.run.id == first.run_id
    # W&B cannot delete points: the interrupted run's step-30 value stays; the resumed one is marked
    assert offline_run(first)[0] == [{"global_step": s, "val_loss": float(s)} for s in (10, 20, 30)]
    history, summary = offline_run(second)
    assert (
        history == [{"global_step": 30, "val_loss": 30.5}]
        and summary["trainkit/resumed_at_step"] == 20
    )


@needs_wandb
def test_the_trainer_logs_epochs_and_steps(offline: Path, build_trainer) -> None:
    logger = WandbLogger("exp", directory=offline)
    idle = WandbLogger("exp", directory=offline)  # never logs: starts no run
    build_trainer(
        offline, epochs=2, loggers=[JSONLinesLogger(offline / "metrics.jsonl"), logger]
    ).fit()
    logger.close()  # the Trainer leaves its loggers open
    history, _ = offline_run(logger)
    epochs = [row for row in history if "val_loss" in row]
    assert [row["global_step"] for row in epochs] == [6, 12]
    assert [row["global_step"] for row in history if "step_train_loss" in row] == [
        2,
        4,
        6,
        8,
        10,
        12,
    ]
    assert idle.run is None and len(list((offline / "wandb").glob("offline-run-*"))) == 1


def test_missing_wandb_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ImportError, match=r"pip install 'trainkit-pt\[wandb\]'"):
        WandbLogger()


@needs_wandb
def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="project must be a non-empty string, got ''"):
        WandbLogger("")
    with pytest.raises(ValueError, match="mode must be"):
        WandbLogger(mode="cloud")
    with pytest.raises(ValueError, match="step must be an int >= 0, got -1"):
        WandbLogger().truncate(-1)
