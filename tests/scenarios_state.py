"""Adversarial scenarios of issue 22 ("nothing lost, nothing silently wrong"), run by scenarios.py.

Loggers (torn rows, non-UTF-8 bytes, deleted files, names MLflow merges, values no float holds),
k-best checkpoints, EMA states, the staypoint CSV and its cache, and the Trainer's resume
checking every block before it loads anything. Each scenario is registered with ``@scenario``
as in ``tests/scenarios.py``, which runs them with its own.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from scenarios import ROOT, expect_raises, scenario
from trainkit import (
    EMA,
    CheckpointManager,
    CSVLogger,
    EarlyStopper,
    JSONLinesLogger,
    LabelSmoothedNLLLoss,
    TensorBatches,
    Trainer,
    build_optimizer,
    load_model_state,
)
from trainkit.loggers import TensorBoardLogger
from trainkit.rng import seed_everything
from trainkit.stopping import BestValue, RunningAverage

if str(ROOT / "examples") not in sys.path:
    sys.path.insert(0, str(ROOT / "examples"))

import geolife_cache
import geolife_data

HEADER = "id,user_id,location_id,duration,start_day,end_day,start_min,end_min,weekday"


def _state(k: int) -> dict[str, Any]:
    return {"step": k, "w": torch.full((4,), float(k))}


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ----------------------------------------------------------------------------- loggers


@scenario
def state_csv_torn_row_with_empty_cells_dropped(tmp: Path) -> None:
    """CSVLogger.truncate drops a row torn by a kill ("4,,": cells missing), not keeps it."""
    logger = CSVLogger(tmp / "m.csv")
    logger.log({"epoch": 1, "lr": 0.1, "val_loss": 1.0}, 6)
    logger.path.write_bytes(logger.path.read_bytes() + b"12,2,")
    logger.truncate(99)
    assert logger.path.read_text().splitlines()[1:] == ["6,1,0.1,1.0"]


@scenario
def state_csv_torn_utf8_truncates(tmp: Path) -> None:
    """A CSV row torn inside a UTF-8 character does not make truncate raise."""
    logger = CSVLogger(tmp / "m.csv")
    logger.log({"epoch": 1, "note": "café"}, 6)
    logger.path.write_bytes(logger.path.read_bytes() + b"12,2,caf" + b"\xc3")
    logger.truncate(99)
    assert len(logger.path.read_text().splitlines()) == 2


@scenario
def state_jsonl_non_utf8_line_dropped(tmp: Path) -> None:
    """Non-UTF-8 bytes in metrics.jsonl: the line is dropped on truncate, no decode error."""
    logger = JSONLinesLogger(tmp / "metrics.jsonl")
    logger.log({"epoch": 1}, 6)
    with open(logger.path, "ab") as handle:
        handle.write(b'{"step": 7, "x": "\xff"}\n')
    logging.disable(logging.WARNING)
    try:
        logger.truncate(99)
    finally:
        logging.disable(logging.NOTSET)
    assert [r["step"] for r in _read_jsonl(logger.path)] == [6]


@scenario
def state_jsonl_deleted_file_restored_from_history(tmp: Path) -> None:
    """A deleted metrics.jsonl is rewritten from the checkpoint's history on restore."""
    history = [{"epoch": e, "step": 6 * e, "val_loss": 1.0 / e} for e in (1, 2, 3)]
    logger = JSONLinesLogger(tmp / "metrics.jsonl")
    logger.restore(18, history)
    assert [r["epoch"] for r in _read_jsonl(logger.path)] == [1, 2, 3]


@scenario
def state_csv_deleted_file_restored_from_history(tmp: Path) -> None:
    """A deleted metrics.csv is rewritten from the checkpoint's history on restore."""
    history = [{"epoch": e, "step": 6 * e, "val_loss": 1.0 / e} for e in (1, 2, 3)]
    logger = CSVLogger(tmp / "metrics.csv")
    logger.restore(12, history)
    assert logger.path.read_text().splitlines() == ["step,epoch,val_loss", "6,1,1.0", "12,2,0.5"]


@scenario
def state_csv_append_does_not_reread(tmp: Path) -> None:
    """CSVLogger appends a row without reading the file's rows back (linear, not quadratic)."""
    logger = CSVLogger(tmp / "m.csv")
    logger.log({"epoch": 0}, 0)
    logger._read = None  # type: ignore[assignment,method-assign]  # any full read would fail
    for step in range(1, 200):
        logger.log({"epoch": step}, step)
    assert len(logger.path.read_text().splitlines()) == 201


class _Writer:
    def __init__(self, **kwargs: object) -> None:
        self.scalars: list[tuple[str, float, int]] = []

    def add_scalar(self, key: str, value: float, step: int) -> None:
        self.scalars.append((key, value, step))

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


@scenario
def state_tensorboard_huge_int_one_line(tmp: Path) -> None:
    """TensorBoardLogger given 10**400 raises one ValueError naming the key, not OverflowError."""
    board = TensorBoardLogger(tmp / "tb")
    board._writer_class = _Writer
    with expect_raises(ValueError, r"record\['n'\]"):
        board.log({"n": 10**400}, 1)


def _mlflow(tmp: Path) -> Any:
    import os

    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    from trainkit.loggers import MLflowLogger

    return MLflowLogger((tmp / "mlruns").as_uri())


def _needs_mlflow() -> bool:
    return importlib.util.find_spec("mlflow") is not None


@scenario
def state_mlflow_colliding_names_refused(tmp: Path) -> None:
    """MLflowLogger refuses keys that sanitise to one name (a@b, a#b), naming both (needs mlflow)."""
    if not _needs_mlflow():
        return
    with expect_raises(ValueError, "'a@b' and 'a#b'"):
        _mlflow(tmp).log({"a@b": 1.0, "a#b": 2.0}, 1)


@scenario
def state_mlflow_bad_names_and_values_refused(tmp: Path) -> None:
    """MLflowLogger: an empty key, a 251-char key and 10**400 are one-line ValueErrors (needs mlflow)."""
    if not _needs_mlflow():
        return
    logger = _mlflow(tmp)
    for record in ({"": 1.0}, {"k" * 251: 1.0}, {"n": 10**400}):
        with expect_raises(ValueError, "MLflowLogger"):
            logger.log(record, 1)


# ----------------------------------------------------------------------------- k best


@scenario
def state_kbest_same_name_keeps_better(tmp: Path) -> None:
    """save_best twice under one name keeps the better value and its state."""
    mgr = CheckpointManager(tmp, keep_best=2)
    mgr.save_best("a.pt", _state(1), 0.1)
    mgr.save_best("a.pt", _state(2), 9.0)
    assert mgr.best_names() == ["a.pt"] and mgr.best_checkpoints()[0][1] == 0.1
    assert torch.load(tmp / "a.pt", weights_only=True)["step"] == 1


@scenario
def state_kbest_non_number_values_refused(tmp: Path) -> None:
    """save_best(..., None) and (..., "0.3") raise ValueError showing the value."""
    mgr = CheckpointManager(tmp, keep_best=2)
    for value in (None, "0.3"):
        with expect_raises(ValueError, re_escape(repr(value))):
            mgr.save_best("b.pt", _state(1), value)  # type: ignore[arg-type]


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


@scenario
def state_kbest_nan_and_pinned_records_refused(tmp: Path) -> None:
    """A k-best record with NaN or a pinned name (last.pt) is refused by load_state_dict."""
    mgr = CheckpointManager(tmp, keep_best=2)
    for best in ([["b.pt", math.nan]], [["last.pt", 1.0]]):
        with expect_raises(ValueError, "best entry"):
            mgr.load_state_dict({**mgr.state_dict(), "best": best})
    mgr.save("last.pt", _state(1))


# ----------------------------------------------------------------------------- components


@scenario
def state_ema_wrong_shape_one_line(tmp: Path) -> None:
    """EMA.load_state_dict with a wrong shape or a non-tensor: one line naming the key."""
    ema = EMA(nn.Linear(3, 2), decay=0.9)
    for bad in (torch.zeros(5), [0.0, 0.0]):
        state = ema.state_dict()
        state["module"] = {**state["module"], "module.bias": bad}
        with expect_raises(ValueError, "module.bias"):
            ema.load_state_dict(state)


@scenario
def state_load_model_state_non_tensor_one_line(tmp: Path) -> None:
    """load_model_state with a non-tensor value: one ValueError line, not torch's RuntimeError."""
    with expect_raises(ValueError, "not tensors: weight"):
        load_model_state(nn.Linear(2, 2), {"weight": [[1.0, 0.0]] * 2, "bias": torch.zeros(2)})


@scenario
def state_stopper_bad_state_changes_nothing(tmp: Path) -> None:
    """EarlyStopper/RunningAverage/BestValue refuse a bad state before changing anything."""
    for selector, key in (
        (EarlyStopper(), "counter"),
        (RunningAverage(), "avg"),
        (BestValue(), "best"),
    ):
        selector.step([1.0] if isinstance(selector, RunningAverage) else 1.0)
        before = selector.state_dict()
        with expect_raises(ValueError, key):
            selector.load_state_dict({**before, key: "x"})
        assert selector.state_dict() == before, type(selector).__name__


@scenario
def state_seed_too_large_one_line(tmp: Path) -> None:
    """seed_everything(2**64) raises one ValueError, not torch's RuntimeError."""
    with expect_raises(ValueError, "seed"):
        seed_everything(2**64)


# ----------------------------------------------------------------------------- staypoint CSV


def _rows() -> list[str]:
    rows = []
    for user in (1, 2):
        for day in range(30):
            for minute in (60, 600):
                rows.append(
                    f"{len(rows)},{user},{(day + minute) % 5},60.0,{day},{day},{minute},{minute},{day % 7}"
                )
    return rows


@scenario
def state_csv_bom_keeps_the_id_column(tmp: Path) -> None:
    """A staypoint CSV with a UTF-8 BOM keeps its id column."""
    path = tmp / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbf" + ("\n".join([HEADER, *_rows()[::-1]]) + "\n").encode())
    ids = geolife_data.load_staypoints(path)["id"]
    assert ids[0] == len(_rows()) - 1, ids[:3]


@scenario
def state_csv_huge_duration_last_bucket(tmp: Path) -> None:
    """A duration of 1e19 minutes lands in the last duration bucket, not bucket 0."""
    rows = [row.replace(",60.0,", ",1e19,") for row in _rows()]
    path = tmp / "huge.csv"
    path.write_text("\n".join([HEADER, *rows]) + "\n")
    splits = geolife_data.make_samples(geolife_data.load_staypoints(path))
    assert set(splits.train["duration"][splits.train["x"] > 0].tolist()) == {95}


@scenario
def state_csv_latin1_and_utf16_name_the_file(tmp: Path) -> None:
    """A latin-1 or UTF-16 staypoint CSV: one ValueError naming the file and UTF-8."""
    for encoding in ("latin-1", "utf-16"):
        path = tmp / f"{encoding}.csv"
        path.write_bytes(("\n".join([HEADER, *_rows()]) + " é\n").encode(encoding))
        with expect_raises(ValueError, f"{encoding}.csv.*UTF"):
            geolife_data.load_staypoints(path)


@scenario
def state_csv_long_cell_names_file_and_line(tmp: Path) -> None:
    """A CSV cell over 131,072 characters: one ValueError naming the file and line."""
    path = tmp / "long.csv"
    path.write_text("\n".join([HEADER, *_rows(), f'0,1,1,1.0,0,0,0,0,"{"x" * 140_000}"']) + "\n")
    with expect_raises(ValueError, r"long\.csv: line 122"):
        geolife_data.load_staypoints(path)


@scenario
def state_cache_full_directory_continues(tmp: Path) -> None:
    """A cache directory that cannot be written (ENOSPC) does not abort loading the data."""
    path = tmp / "s.csv"
    path.write_text("\n".join([HEADER, *_rows()]) + "\n")
    real = geolife_cache.atomic_write

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    geolife_cache.atomic_write = disk_full  # type: ignore[assignment]
    logging.disable(logging.WARNING)
    try:
        splits = geolife_cache.load_or_build_splits(path, tmp / "cache")
    finally:
        geolife_cache.atomic_write = real
        logging.disable(logging.NOTSET)
    assert len(splits.train["y"]) > 0


@scenario
def state_cache_out_of_range_ids_rebuilt(tmp: Path) -> None:
    """A valid-looking .npz split cache with out-of-range ids is rebuilt, not used."""
    path = tmp / "s.csv"
    path.write_text("\n".join([HEADER, *_rows()]) + "\n")
    first = geolife_cache.load_or_build_splits(path, tmp / "cache")
    (cache_file,) = (tmp / "cache").iterdir()
    with np.load(cache_file) as data:
        arrays = {name: data[name].copy() for name in data.files}
    arrays["train.x"][0, 0] = 10**6
    with open(cache_file, "wb") as handle:
        np.savez(handle, **arrays)
    logging.disable(logging.WARNING)
    try:
        second = geolife_cache.load_or_build_splits(path, tmp / "cache")
    finally:
        logging.disable(logging.NOTSET)
    assert np.array_equal(second.train["x"], first.train["x"])


# ----------------------------------------------------------------------------- check, then change


def _trainer(directory: Path, decay: float) -> Trainer:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(5, 4), nn.Flatten(), nn.Linear(8, 5), nn.LogSoftmax(-1))
    optimizer = build_optimizer(model, "adamw", lr=1e-2)
    x = torch.randint(0, 5, (32, 2))
    data = {"x": x, "y": x[:, 1]}

    def batch(b: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        return b["x"], b["y"], {}

    trainer = Trainer(
        model,
        optimizer,
        LabelSmoothedNLLLoss(0.0, ignore_index=-100),
        TensorBatches(data, 8, shuffle=True, seed=1, transform=batch),
        TensorBatches(data, 8, transform=batch),
        epochs=2,
        checkpoints=CheckpointManager(directory / "ckpt"),
        loggers=[JSONLinesLogger(directory / "metrics.jsonl")],
        forward=lambda m, b, device: (m(b[0].to(device)), b[1].to(device)),
        progress=False,
        ignore_index=None,
    )
    trainer.ema = EMA(trainer.model, decay=decay)
    return trainer


@scenario
def state_refused_resume_changes_nothing(tmp: Path) -> None:
    """A resume refused for another EMA decay leaves the model's weights and every file untouched."""
    _trainer(tmp, 0.9).fit()
    other = _trainer(tmp, 0.5)
    before = {k: v.clone() for k, v in other.model.state_dict().items()}
    files = {p: p.read_bytes() for p in tmp.rglob("*") if p.is_file()}
    with expect_raises(ValueError, "decay"):
        other.resume()
    assert all(torch.equal(v, before[k]) for k, v in other.model.state_dict().items())
    assert {p: p.read_bytes() for p in tmp.rglob("*") if p.is_file()} == files
