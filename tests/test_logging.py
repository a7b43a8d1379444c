"""Trainer logging: JSON-lines per epoch and every N steps; TensorBoard with the same names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from test_trainer import build


def test_jsonl_logs_per_epoch_and_per_step(tmp_path: Path) -> None:
    trainer = build(tmp_path, epochs=2)
    trainer.step_log = tmp_path / "steps.jsonl"
    trainer.fit()
    epochs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in epochs] == [1, 2]
    for key in ("lr", "train_loss", "val_loss", "val_acc@1", "grad_norm", "skipped_steps", "checkpoint_seconds"):
        assert key in epochs[0], key
    steps = [json.loads(line) for line in (tmp_path / "steps.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps] == [2, 4, 6, 8, 10, 12]  # log_every=2, 6 steps per epoch
    assert all({"step_train_loss", "step_lr", "epoch"} <= set(r) for r in steps)


def test_tensorboard_scalars_use_the_jsonl_names(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="the optional 'tensorboard' extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from trainkit.trainer import _tensorboard_writer

    trainer = build(tmp_path, epochs=2)
    trainer.tensorboard_dir = tmp_path / "tb"
    trainer.tensorboard = _tensorboard_writer(trainer.tensorboard_dir)
    trainer.fit()
    trainer.tensorboard.close()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    epochs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    numeric = {k for k, v in epochs[0].items() if isinstance(v, (int, float)) and k != "epoch"}
    assert numeric <= tags
    assert {"step_train_loss", "step_lr"} <= tags
    val_loss = [e.value for e in events.Scalars("val_loss")]
    assert val_loss == pytest.approx([r["val_loss"] for r in epochs], rel=1e-6)


def test_tensorboard_resume_hides_events_after_the_checkpoint(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="the optional 'tensorboard' extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from trainkit.trainer import _tensorboard_writer

    def with_tensorboard(trainer):
        trainer.epoch_checkpoints = True
        trainer.tensorboard_dir = tmp_path / "tb"
        trainer.tensorboard = _tensorboard_writer(trainer.tensorboard_dir)
        return trainer

    first = with_tensorboard(build(tmp_path, epochs=3))
    first.fit()  # epochs 1-3 logged; now pretend the run died after epoch 2 and resume there
    first.tensorboard.close()
    second = with_tensorboard(build(tmp_path, epochs=3))
    second.resume(tmp_path / "ckpt" / "epoch-0002.pt")
    second.fit()
    second.tensorboard.close()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("val_loss")] == [6, 12, 18]  # epoch 3 once, not twice
