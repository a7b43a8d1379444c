"""Trainer: the loop, checkpoints, selection rules, non-finite losses, exact resume (CPU)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from trainkit import (
    AMPStep,
    CheckpointManager,
    EarlyStopper,
    LabelSmoothedNLLLoss,
    RunningAverage,
    WarmupCosineSchedule,
    build_optimizer,
)
from trainkit.batching import TensorBatches
from trainkit.trainer import NonFiniteLossError, Trainer

NUM_CLASSES = 7


class TinyModel(nn.Module):
    """Seed-style interface: model(x, x_dict) -> log-probabilities."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(NUM_CLASSES, 8)
        self.drop = nn.Dropout(0.2)  # consumes RNG: resume must restore it
        self.head = nn.Linear(8, NUM_CLASSES)

    def forward(self, x: torch.Tensor, x_dict: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = self.drop(self.emb(x[:, -1]) + 0.1 * self.emb(x).mean(1)) * x_dict["scale"].unsqueeze(1)
        return torch.log_softmax(self.head(hidden), dim=-1)


def make_data(n: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(1, NUM_CLASSES, (n, 4), generator=g)
    y = x[:, -1].clone()  # learnable: the target is the last input
    y[torch.rand(n, generator=g) < 0.2] = 0  # some padding targets, ignored
    return {"x": x, "y": y, "scale": torch.ones(n)}


def to_seed(batch: dict[str, torch.Tensor]):
    return batch["x"], batch["y"], {"scale": batch["scale"]}


def build(tmp: Path, epochs: int = 4, *, every_seconds: float | None = None, clock=None, loss_fn=None,
          nonfinite: str = "raise", patience: int = 50, min_epochs: int = 0, selection: str = "stopper") -> Trainer:
    torch.manual_seed(0)
    model = TinyModel()
    optimizer = build_optimizer(model, "adamw", lr=3e-2)
    train = TensorBatches(make_data(96, 1), 16, shuffle=True, seed=3, transform=to_seed)
    val = TensorBatches(make_data(40, 2), 16, shuffle=False, transform=to_seed)
    test = TensorBatches(make_data(40, 4), 16, shuffle=False, transform=to_seed)
    kwargs = {} if clock is None else {"clock": clock}
    checkpoints = CheckpointManager(tmp / "ckpt", keep_last=3, every_seconds=every_seconds, **kwargs)
    return Trainer(
        model, optimizer, loss_fn or LabelSmoothedNLLLoss(0.03), train, val, test_loader=test, epochs=epochs,
        schedule=WarmupCosineSchedule(3e-2, 1, epochs, 1e-4), amp=AMPStep(optimizer, "fp32", max_grad_norm=0.8),
        stopper=EarlyStopper(patience=patience, min_epochs=min_epochs) if selection == "stopper" else None,
        running_average=RunningAverage() if selection == "running_average" else None,
        checkpoints=checkpoints, progress=False, log_every=2, metrics_log=tmp / "metrics.jsonl", nonfinite=nonfinite,
        config={"name": "tiny"},
    )


def test_fit_learns_and_writes_checkpoints_and_metrics(tmp_path: Path) -> None:
    trainer = build(tmp_path, epochs=4)
    result = trainer.fit()
    assert result["epochs_run"] == 4
    assert result["test"]["acc@1"] > 60.0  # chance is ~17%
    assert result["history"][-1]["train_loss"] < result["history"][0]["train_loss"]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4
    for name in ("best.pt", "last.pt"):
        state = torch.load(tmp_path / "ckpt" / name, weights_only=True)
        for key in ("model", "optimizer", "epoch", "amp", "schedule", "stopper", "rng", "config", "global_step"):
            assert key in state, key
    assert torch.load(tmp_path / "ckpt" / "last.pt", weights_only=True)["epoch"] == 4
    # padding targets (id 0) are not counted by the metrics
    assert result["test"]["count"] == int((make_data(40, 4)["y"] != 0).sum())


def test_lr_follows_schedule_per_epoch(tmp_path: Path) -> None:
    trainer = build(tmp_path, epochs=3)
    result = trainer.fit()
    schedule = WarmupCosineSchedule(3e-2, 1, 3, 1e-4)
    assert [r["lr"] for r in result["history"]] == [schedule(e) for e in range(3)]


def test_final_evaluation_uses_best_checkpoint_without_early_stop(tmp_path: Path) -> None:
    trainer = build(tmp_path, epochs=4)
    result = trainer.fit()
    best = torch.load(tmp_path / "ckpt" / "best.pt", weights_only=True)
    assert best["epoch"] == result["best_epoch"]
    for name, tensor in trainer.model.state_dict().items():
        assert torch.equal(tensor, best["model"][name]), name


def test_early_stopping_stops_the_loop(tmp_path: Path) -> None:
    trainer = build(tmp_path, epochs=30, patience=0, min_epochs=2)
    result = trainer.fit()
    assert result["stopped_early"]
    assert result["epochs_run"] < 30


def test_running_average_selection(tmp_path: Path) -> None:
    trainer = build(tmp_path, epochs=3, selection="running_average")
    result = trainer.fit()
    assert trainer.running_average is not None and trainer.running_average.count == 3
    assert result["best_epoch"] >= 1


def _weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def test_resume_after_epoch_is_bit_identical(tmp_path: Path) -> None:
    full = build(tmp_path / "full", epochs=4)
    full.fit()
    expected = _weights(full)

    class Killed(Exception):
        pass

    def kill_after_epoch_2(record: dict) -> None:
        if record["epoch"] == 2:
            raise Killed

    first = build(tmp_path / "split", epochs=4)
    first.on_epoch_end = kill_after_epoch_2
    with pytest.raises(Killed):
        first.fit()
    torch.manual_seed(1234)  # a different global RNG state: resume must restore the saved one
    second = build(tmp_path / "split", epochs=4)
    second.resume()
    assert second.epoch == 2
    second.fit()
    for name, tensor in _weights(second).items():
        assert torch.equal(tensor, expected[name]), name
    assert [r["val_loss"] for r in second.history] == [r["val_loss"] for r in full.history]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0  # every call advances one "second"
        return self.now


def test_resume_from_mid_epoch_step_checkpoint_is_bit_identical(tmp_path: Path) -> None:
    full = build(tmp_path / "full", epochs=3)
    full.fit()
    expected = _weights(full)

    # time-based step checkpoints (the original pipeline's rule) land mid-epoch
    clocked = build(tmp_path / "split", epochs=3, every_seconds=5.0, clock=FakeClock())
    clocked.fit()
    step_files = sorted((tmp_path / "split" / "ckpt").glob("step-*.pt"))
    assert step_files, "expected time-based step checkpoints"
    mid = [p for p in step_files if torch.load(p, weights_only=True)["step_in_epoch"] > 0]
    assert mid, "expected a checkpoint taken mid-epoch"
    resumed = build(tmp_path / "resumed", epochs=3)
    resumed.resume(mid[0])
    resumed.fit()
    for name, tensor in _weights(resumed).items():
        assert torch.equal(tensor, expected[name]), name


def test_keep_last_rotates_step_checkpoints(tmp_path: Path) -> None:
    trainer = build(tmp_path, epochs=3, every_seconds=2.0, clock=FakeClock())
    trainer.fit()
    assert len(list((tmp_path / "ckpt").glob("step-*.pt"))) == 3
    assert (tmp_path / "ckpt" / "best.pt").is_file() and (tmp_path / "ckpt" / "last.pt").is_file()


def poisoned_loss(is_bad: Callable[[int], bool], factor: float = float("nan")):
    """The label-smoothed loss, multiplied by ``factor`` on the training steps n (1-based) where
    ``is_bad(n)``: NaN/inf for non-finite losses, a huge finite factor for fp16 overflow."""
    criterion = LabelSmoothedNLLLoss(0.03)
    calls = {"n": 0}

    def loss_fn(log_probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss = criterion(log_probs, targets)
        if torch.is_grad_enabled():
            calls["n"] += 1
            if is_bad(calls["n"]):
                return loss * factor
        return loss

    return loss_fn


def nan_after(steps: int):
    return poisoned_loss(lambda n: n > steps)


def test_nonfinite_loss_raises_with_epoch_and_step(tmp_path: Path) -> None:
    trainer = build(tmp_path, epochs=3, loss_fn=nan_after(8))  # 6 steps per epoch: epoch 2, step 3
    with pytest.raises(NonFiniteLossError, match=r"Loss is not finite.*epoch 2, step 3.*last\.pt"):
        trainer.fit()
    best = torch.load(tmp_path / "ckpt" / "best.pt", weights_only=True)
    assert all(torch.isfinite(t).all() for t in best["model"].values())


def test_nonfinite_skip_policy_skips_and_counts(tmp_path: Path) -> None:
    every_fifth_inf = poisoned_loss(lambda n: n % 5 == 0, float("inf"))
    trainer = build(tmp_path, epochs=2, loss_fn=every_fifth_inf, nonfinite="skip")
    result = trainer.fit()
    assert trainer.nonfinite_steps == 2  # 12 steps, the 5th and 10th are dropped
    assert all(math.isfinite(r["train_loss"]) for r in result["history"])
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_invalid_arguments_are_refused(tmp_path: Path) -> None:
    model = TinyModel()
    optimizer = build_optimizer(model, "adamw")
    with pytest.raises(ValueError, match="epochs"):
        Trainer(model, optimizer, LabelSmoothedNLLLoss(), [], [], epochs=0)
    with pytest.raises(ValueError, match="nonfinite"):
        Trainer(model, optimizer, LabelSmoothedNLLLoss(), [], [], epochs=1, nonfinite="ignore")


def test_trainer_pins_its_best_name_against_rotation(tmp_path: Path) -> None:
    trainer = build(tmp_path, epochs=3)  # for its model, optimizer and data
    fresh = Trainer(trainer.model, trainer.optimizer, LabelSmoothedNLLLoss(), trainer.train_loader, trainer.val_loader,
                    epochs=3, checkpoints=CheckpointManager(tmp_path / "other", keep_last=1, every_seconds=1.0,
                                                            clock=FakeClock()),
                    best_name="bestmodel.pt", running_average=RunningAverage(), progress=False)
    fresh.fit()
    assert (tmp_path / "other" / "bestmodel.pt").is_file()
    assert len(list((tmp_path / "other").glob("step-*.pt"))) == 1
