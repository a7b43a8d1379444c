"""Trainer: the loop, checkpoints, selection rules, non-finite losses, exact resume (CPU)."""

from __future__ import annotations

import json
import math
import types
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from trainkit import (
    AMPStep,
    BestValue,
    CheckpointManager,
    LabelSmoothedNLLLoss,
    RunningAverage,
    TensorBatches,
    WarmupCosineSchedule,
    build_optimizer,
)
from trainkit.trainer import NonFiniteLossError, Trainer


def _weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


class Killed(Exception):
    pass


def kill_after(epoch: int):
    def on_epoch_end(record: dict[str, Any]) -> None:
        if record["epoch"] == epoch:
            raise Killed

    return on_epoch_end


def test_fit_learns_and_writes_checkpoints_and_metrics(
    tmp_path: Path, build_trainer, tiny_data
) -> None:
    trainer = build_trainer(tmp_path, epochs=4)
    result = trainer.fit()
    assert result["epochs_run"] == 4
    assert result["test"]["acc@1"] > 60.0  # chance is ~17%
    assert result["history"][-1]["train_loss"] < result["history"][0]["train_loss"]
    assert result["evaluated"] == f"best.pt (epoch {result['best_epoch']})"
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4] and [r["step"] for r in records] == [
        6,
        12,
        18,
        24,
    ]
    for name in ("best.pt", "last.pt"):
        state = torch.load(tmp_path / "ckpt" / name, weights_only=True)
        for key in (
            "model",
            "optimizer",
            "epoch",
            "amp",
            "schedule",
            "selector",
            "rng",
            "config",
            "global_step",
        ):
            assert key in state, key
    assert torch.load(tmp_path / "ckpt" / "last.pt", weights_only=True)["epoch"] == 4
    # padding targets (id 0) are not counted by the metrics
    assert result["test"]["count"] == int((tiny_data(40, 4)["y"] != 0).sum())


def test_lr_follows_schedule_per_epoch(tmp_path: Path, build_trainer) -> None:
    result = build_trainer(tmp_path, epochs=3).fit()
    schedule = WarmupCosineSchedule(3e-2, 1, 3, 1e-4)
    assert [r["lr"] for r in result["history"]] == [schedule(e) for e in range(3)]


def test_final_evaluation_uses_best_checkpoint_without_early_stop(
    tmp_path: Path, build_trainer
) -> None:
    trainer = build_trainer(tmp_path, epochs=4)
    result = trainer.fit()
    best = torch.load(tmp_path / "ckpt" / "best.pt", weights_only=True)
    assert best["epoch"] == result["best_epoch"]
    for name, tensor in trainer.model.state_dict().items():
        assert torch.equal(tensor, best["model"][name]), name


def test_early_stopping_stops_the_loop(tmp_path: Path, build_trainer) -> None:
    result = build_trainer(tmp_path, epochs=30, patience=0, min_epochs=2).fit()
    assert result["stopped_early"]
    assert result["epochs_run"] < 30


def test_default_selector_is_the_plain_best_loss(tmp_path: Path, build_trainer) -> None:
    trainer = build_trainer(tmp_path, epochs=3, selector="best")
    result = trainer.fit()
    assert isinstance(trainer.selector, BestValue)
    losses = [r["val_loss"] for r in result["history"]]
    assert result["best_epoch"] == 1 + losses.index(min(losses))
    assert [r["improved"] for r in result["history"]] == [
        losses[i] < min(losses[:i], default=math.inf) for i in range(3)
    ]


def test_running_average_is_fed_every_validation_batch_in_order(
    tmp_path: Path, build_trainer
) -> None:
    """The reference's eval process updates the average once per validation batch (docs/stopping.md)."""
    trainer = build_trainer(tmp_path, epochs=3, selector="running_average")
    fed: list[float] = []
    update = trainer.selector.update

    def spy(value: float) -> float:
        fed.append(float(value))
        return update(value)

    trainer.selector.update = spy  # type: ignore[method-assign]
    result = trainer.fit()
    batches = len(trainer.val_loader)  # 40 samples in batches of 16: 3 batches a pass
    assert batches == 3 and trainer.selector.count == 3 * batches == len(fed)
    # replaying the fed losses with a fresh average gives the logged averages and the decisions
    replay, averages, improved = RunningAverage(), [], []
    for epoch in range(3):
        pass_improved = False
        for value in fed[epoch * batches : (epoch + 1) * batches]:
            replay.update(value)
            pass_improved = pass_improved or replay.is_best
        averages.append(replay.avg)
        improved.append(pass_improved)
    assert [r["running_avg_loss"] for r in result["history"]] == averages
    assert [r["improved"] for r in result["history"]] == improved
    # the per-epoch mean would give other averages: this is what the old port did
    per_epoch = RunningAverage()
    assert [per_epoch.update(r["val_loss"]) for r in result["history"]] != averages
    best = torch.load(tmp_path / "ckpt" / "best.pt", weights_only=True)
    assert (
        best["epoch"]
        == result["best_epoch"]
        == max(i + 1 for i, flag in enumerate(improved) if flag)
    )


def test_running_average_step_reports_a_dip_inside_the_pass() -> None:
    average = RunningAverage(decay=0.5)
    assert average.step([4.0])  # the first value is the first best
    assert average.step([5.0, 1.0, 9.0])  # avg 4.5, 2.75 (< 4: a new best), 5.875
    assert average.best == 2.75 and average.best_epoch == 2 and average.avg == 5.875
    assert not average.step([9.0]) and average.best_epoch == 2
    assert average.should_stop is False and average.feeds == "batch_losses"


def test_resume_after_epoch_is_bit_identical(tmp_path: Path, build_trainer) -> None:
    full = build_trainer(tmp_path / "full", epochs=4)
    full.fit()
    expected = _weights(full)
    first = build_trainer(tmp_path / "split", epochs=4, on_epoch_end=kill_after(2))
    with pytest.raises(Killed):
        first.fit()
    torch.manual_seed(1234)  # a different global RNG state: resume must restore the saved one
    second = build_trainer(tmp_path / "split", epochs=4)
    second.resume()
    assert second.progress.epoch == 2
    second.fit()
    for name, tensor in _weights(second).items():
        assert torch.equal(tensor, expected[name]), name
    assert [r["val_loss"] for r in second.progress.history] == [
        r["val_loss"] for r in full.progress.history
    ]


def test_resume_from_mid_epoch_step_checkpoint_is_bit_identical(
    tmp_path: Path, build_trainer, fake_clock
) -> None:
    full = build_trainer(tmp_path / "full", epochs=3)
    full.fit()
    expected = _weights(full)
    # time-based step checkpoints (the original pipeline's rule) land mid-epoch
    build_trainer(tmp_path / "split", epochs=3, every_seconds=5.0, clock=fake_clock()).fit()
    step_files = sorted((tmp_path / "split" / "ckpt").glob("step-*.pt"))
    mid = [p for p in step_files if torch.load(p, weights_only=True)["step_in_epoch"] > 0]
    assert mid, "expected a checkpoint taken mid-epoch"
    resumed = build_trainer(tmp_path / "resumed", epochs=3)
    resumed.resume(mid[0])
    resumed.fit()
    for name, tensor in _weights(resumed).items():
        assert torch.equal(tensor, expected[name]), name


def test_keep_last_rotates_step_checkpoints(tmp_path: Path, build_trainer, fake_clock) -> None:
    build_trainer(tmp_path, epochs=3, every_seconds=2.0, clock=fake_clock()).fit()
    assert len(list((tmp_path / "ckpt").glob("step-*.pt"))) == 3
    assert (tmp_path / "ckpt" / "best.pt").is_file() and (tmp_path / "ckpt" / "last.pt").is_file()


def test_nonfinite_loss_raises_with_epoch_and_step(
    tmp_path: Path, build_trainer, poisoned_loss
) -> None:
    trainer = build_trainer(
        tmp_path, epochs=3, loss_fn=poisoned_loss(lambda n: n > 8)
    )  # epoch 2, step 3
    with pytest.raises(NonFiniteLossError, match=r"Loss is not finite.*epoch 2, step 3.*last\.pt"):
        trainer.fit()
    best = torch.load(tmp_path / "ckpt" / "best.pt", weights_only=True)
    assert all(torch.isfinite(t).all() for t in best["model"].values())


def test_nonfinite_skip_policy_skips_and_counts(
    tmp_path: Path, build_trainer, poisoned_loss
) -> None:
    every_fifth_inf = poisoned_loss(lambda n: n % 5 == 0, float("inf"))
    trainer = build_trainer(tmp_path, epochs=2, loss_fn=every_fifth_inf, nonfinite="skip")
    result = trainer.fit()
    assert (
        result["nonfinite_steps"] == trainer.progress.nonfinite_steps == 2
    )  # the 5th and 10th of 12
    assert [r["nonfinite_steps"] for r in result["history"]] == [1, 1]
    assert all(math.isfinite(r["train_loss"]) for r in result["history"])
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_invalid_arguments_are_refused(tmp_path: Path, tiny_model) -> None:
    model = tiny_model()
    optimizer = build_optimizer(model, "adamw")
    with pytest.raises(ValueError, match="epochs"):
        Trainer(model, optimizer, LabelSmoothedNLLLoss(), [], [], epochs=0)
    with pytest.raises(ValueError, match="nonfinite"):
        Trainer(model, optimizer, LabelSmoothedNLLLoss(), [], [], epochs=1, nonfinite="ignore")
    with pytest.raises(ValueError, match="max_nonfinite_steps must be an int >= 0, got -1"):
        Trainer(model, optimizer, LabelSmoothedNLLLoss(), [], [], epochs=1, max_nonfinite_steps=-1)


def test_an_unpinned_best_name_is_refused_and_the_manager_left_alone(
    tmp_path: Path, tiny_model
) -> None:
    model = tiny_model()
    manager = CheckpointManager(tmp_path, keep_last=1)
    pinned = manager.pinned
    with pytest.raises(
        ValueError,
        match=r"best_name 'bestmodel\.pt' would be rotated away.*pinned=\('bestmodel\.pt',\)",
    ):
        Trainer(
            model,
            build_optimizer(model, "adamw"),
            LabelSmoothedNLLLoss(),
            [],
            [],
            epochs=1,
            checkpoints=manager,
            best_name="bestmodel.pt",
        )
    assert manager.pinned == pinned


def test_a_pinned_best_name_survives_rotation(tmp_path: Path, build_trainer, fake_clock) -> None:
    trainer = build_trainer(
        tmp_path,
        epochs=3,
        every_seconds=1.0,
        clock=fake_clock(),
        best_name="bestmodel.pt",
        selector="running_average",
    )
    trainer.checkpoints.keep_last = 1
    trainer.fit()
    assert (tmp_path / "ckpt" / "bestmodel.pt").is_file()
    assert len(list((tmp_path / "ckpt").glob("step-*.pt"))) == 1


def test_plain_xy_batches_and_pluggable_metrics(tmp_path: Path) -> None:
    """(x, y) batches go through the default forward; any metrics factory can replace RankingMetrics."""

    class MeanAbsError:
        def __init__(self, device: Any = None) -> None:
            self.total, self.count = (
                torch.zeros((), dtype=torch.float64),
                torch.zeros((), dtype=torch.float64),
            )

        def update(self, scores: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor) -> None:
            self.total += ((scores.argmax(-1) - targets).abs() * valid).sum()
            self.count += valid.sum()

        def sums(self) -> torch.Tensor:
            return torch.stack([self.total, self.count])

        def compute(self) -> dict[str, float]:
            return self.compute_from_sums(self.sums())

        @staticmethod
        def compute_from_sums(sums: torch.Tensor) -> dict[str, float]:
            return {"mae": float(sums[0] / sums[1])}

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 4), nn.LogSoftmax(-1))
    x = torch.randn(64, 3)
    data = {"x": x, "y": (x[:, 0] > 0).long() + 1}
    batches = TensorBatches(data, 16, transform=lambda b: (b["x"], b["y"]))
    trainer = Trainer(
        model,
        build_optimizer(model, "adamw", lr=1e-2),
        LabelSmoothedNLLLoss(),
        batches,
        batches,
        epochs=2,
        metrics=MeanAbsError,
        progress=False,
        checkpoints=CheckpointManager(tmp_path),
    )
    result = trainer.fit()
    assert set(result["validation"]) == {"mae", "loss"}
    assert "val_mae" in result["history"][0] and "val_acc@1" not in result["history"][0]


class FakeEMA:
    """The EMA protocol (update, module, state_dict/load_state_dict) with decay 0.5."""

    def __init__(self, model: nn.Module) -> None:
        import copy

        self.source, self.module, self.updates = model, copy.deepcopy(model), 0

    def update(self) -> None:
        self.updates += 1
        with torch.no_grad():
            for mine, theirs in zip(self.module.parameters(), self.source.parameters()):
                mine.mul_(0.5).add_(theirs, alpha=0.5)

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = state["updates"]


def test_ema_is_updated_each_step_evaluated_and_saved(tmp_path: Path, build_trainer) -> None:
    trainer = build_trainer(tmp_path / "run", epochs=2)
    ema = FakeEMA(trainer.model)
    trainer.ema = ema
    result = trainer.fit()
    assert ema.updates == 12  # 6 steps an epoch
    best = torch.load(tmp_path / "run" / "ckpt" / "best.pt", weights_only=True)
    assert best["ema"]["updates"] == 6 * result["best_epoch"]
    # the final evaluation used the EMA weights of the best epoch
    for name, tensor in ema.module.state_dict().items():
        assert torch.equal(tensor, best["ema"]["module"][name]), name
    expected = trainer.evaluate(trainer.val_loader)
    assert result["validation"]["loss"] == expected["loss"]
    trainer.ema = None
    assert (
        trainer.evaluate(trainer.val_loader)["loss"] != expected["loss"]
    )  # the raw weights differ


def test_a_checkpoint_of_another_optimizer_is_refused_before_anything_changes(
    tmp_path: Path, build_trainer
) -> None:
    build_trainer(tmp_path / "a", epochs=1).fit()
    state = torch.load(tmp_path / "a" / "ckpt" / "last.pt", weights_only=True)
    other = build_trainer(tmp_path / "b", epochs=1)
    adamw_state, state["optimizer"] = (
        state["optimizer"],
        build_optimizer(other.model, "adagrad").state_dict(),
    )
    before = _weights(other)
    with pytest.raises(ValueError) as info:
        other.load_state_dict(state)
    message = str(info.value)
    assert "\n" not in message and "not a AdamW state" in message and "betas" in message
    assert all(
        torch.equal(t, before[k]) for k, t in _weights(other).items()
    )  # the model was not loaded
    assert other.progress.epoch == 0
    state["optimizer"] = adamw_state
    del state["selector"]["counter"]
    with pytest.raises(
        ValueError, match=r"not a EarlyStopper \('selector'\) state: it lacks 'counter'"
    ):
        other.load_state_dict(state)


# ------------------------------------------------------------- capture (docs/captured.md, "In the Trainer")
from trainkit import TensorBatches as _Batches  # noqa: E402
from trainkit import TrainStep  # noqa: E402
from trainkit.train_step import CaptureError  # noqa: E402
from trainkit.trainer import capture_reason  # noqa: E402

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")


def test_capture_auto_on_cpu_is_eager_with_one_logged_reason(
    tmp_path: Path, build_trainer, caplog
) -> None:
    with caplog.at_level("INFO", logger="trainkit.trainer"):
        result = build_trainer(tmp_path, epochs=2).fit()
    lines = [
        r.getMessage()
        for r in caplog.records
        if r.getMessage().startswith(("training step", "evaluation:"))
    ]
    assert lines == ["training step: eager (device is cpu: a CUDA graph needs CUDA)"]
    assert result["capture"] == {
        "step": "eager",
        "reason": "device is cpu: a CUDA graph needs CUDA",
        "seconds": 0.0,
    }


def test_capture_true_without_cuda_raises_the_reason_and_bad_values_are_refused(
    tmp_path: Path, build_trainer
) -> None:
    with pytest.raises(CaptureError, match="capture=True, but device is cpu"):
        build_trainer(tmp_path, capture=True)
    with pytest.raises(ValueError, match="capture must be one of 'auto', True, False, got 'yes'"):
        build_trainer(tmp_path, capture="yes")
    with pytest.raises(ValueError, match="capture must be"):
        build_trainer(tmp_path, capture=1)


def test_capture_decision_names_each_reason(tiny_model) -> None:
    cuda = torch.device("cuda")
    assert capture_reason(False, cuda) == "capture=False"
    assert "device is cpu" in capture_reason("auto", torch.device("cpu"))
    assert capture_reason("auto", cuda) is None and capture_reason(True, cuda) is None
    model = tiny_model()
    loss = LabelSmoothedNLLLoss(0.03)
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    assert "SGD is not captured" in TrainStep(model, sgd, loss).why_not()
    foreach = torch.optim.AdamW(model.parameters(), lr=0.1, foreach=True)
    skipping = TrainStep(model, foreach, loss, nonfinite="skip")
    assert "nonfinite='skip' needs fused=True" in skipping.why_not()
    # AdamW is named by itself (on torch 2.6 it does not subclass Adam): only the device is left
    assert "CUDA" in TrainStep(model, foreach, loss).why_not()
    adagrad = torch.optim.Adagrad(model.parameters(), lr=0.1)
    assert "CUDA" in TrainStep(model, adagrad, loss, nonfinite="skip").why_not()


def test_ranks_train_eagerly_together_when_a_capture_failed_on_another_rank(
    monkeypatch, tmp_path: Path, build_trainer
) -> None:
    from trainkit import distributed

    trainer = build_trainer(tmp_path, epochs=1)
    trainer.capture_reason = None  # as on CUDA
    monkeypatch.setattr(TrainStep, "why_not", lambda self, **kwargs: None)
    captured: list[bool] = []
    monkeypatch.setattr(TrainStep, "capture", lambda self, batch: captured.append(True))
    dropped: list[bool] = []
    monkeypatch.setattr(TrainStep, "drop_graphs", lambda self: dropped.append(True))
    gathered: list[bool] = []
    monkeypatch.setattr(
        distributed, "all_gather_object", lambda value: gathered.append(value) or [value, False]
    )
    trainer._decide_capture()
    assert captured == [True] and gathered == [True] and dropped == [True]
    assert trainer.capture_reason == "the capture failed on another rank"


def test_evaluation_under_torchrun_reduces_sums_and_gathers_batch_losses(
    monkeypatch, tiny_model
) -> None:
    """The wiring of EvalStep.result with two identical simulated ranks."""
    from conftest import NUM_CLASSES, make_data, to_batch
    from trainkit import RankingMetrics, distributed
    from trainkit.evaluation import default_forward, evaluate

    model = tiny_model()
    loader = _Batches(make_data(40, 2), 16, shuffle=False, transform=to_batch)
    loss_fn = LabelSmoothedNLLLoss(0.03)
    metrics = lambda device: RankingMetrics(NUM_CLASSES, device=device)  # noqa: E731
    options = {"metrics": metrics, "device": torch.device("cpu"), "forward": default_forward}
    alone = evaluate(model, loader, loss_fn, ignore_index=0, **options)
    monkeypatch.setattr(
        distributed, "context", lambda: types.SimpleNamespace(enabled=True, is_main=True)
    )
    monkeypatch.setattr(distributed, "all_reduce_sum", lambda tensor: tensor.mul_(2))
    monkeypatch.setattr(
        distributed, "all_gather_interleaved", lambda values: [v for v in values for _ in range(2)]
    )
    two = evaluate(model, loader, loss_fn, ignore_index=0, **options)
    for key in ("loss", "acc@1", "mrr"):
        assert two[key] == pytest.approx(alone[key], rel=1e-6), key
    assert two["batch_losses"] == pytest.approx(
        [v for v in alone["batch_losses"] for _ in range(2)], rel=1e-6
    )


def test_trainer_defaults_count_every_sample(tiny_model) -> None:
    """No GeoLife conventions by default: class 0 is a class like any other."""
    from conftest import NUM_CLASSES, make_data, to_batch
    from trainkit import RankingMetrics
    from trainkit.evaluation import evaluate

    model = tiny_model()
    data = make_data(48, 5)
    data["y"] = torch.arange(48) % 3  # three classes, class 0 included
    loader = _Batches(data, 16, shuffle=False, transform=to_batch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    trainer = Trainer(
        model,
        optimizer,
        torch.nn.NLLLoss(),
        loader,
        loader,
        epochs=1,
        progress=False,
        metrics=lambda device: RankingMetrics(NUM_CLASSES, device=device),
    )
    assert trainer.ignore_index is None
    counted = evaluate(
        model,
        loader,
        torch.nn.NLLLoss(),
        metrics=lambda device: _CountingMetrics(device),
        device=torch.device("cpu"),
    )
    assert counted["samples"] == 48


class _CountingMetrics:
    """Counts the samples evaluate() marks valid."""

    def __init__(self, device: torch.device) -> None:
        self.count = torch.zeros(1, dtype=torch.float64, device=device)

    def update(self, scores: Any, targets: torch.Tensor, valid: torch.Tensor) -> None:
        self.count += valid.sum()

    def reset(self) -> None:
        self.count.zero_()

    def sums(self) -> torch.Tensor:
        return self.count

    @staticmethod
    def compute_from_sums(sums: torch.Tensor) -> dict[str, float]:
        return {"samples": float(sums[0])}


# ------------------------------------------------------- gradient accumulation (docs/trainer.md)
def test_accumulation_counts_updates_and_flushes_the_epochs_last_window(
    tmp_path: Path, build_trainer
) -> None:
    """k = 4 over 6 batches: updates after batch 4 and (flushed) after batch 6, per epoch."""
    from trainkit import EMA, JSONLinesLogger

    steps_log = JSONLinesLogger(tmp_path / "steps.jsonl", kind="step")
    trainer = build_trainer(
        tmp_path, epochs=2, accumulation_steps=4, log_every=3, loggers=[steps_log]
    )
    trainer.ema = EMA(trainer.model, decay=0.9)
    calls: list[int] = []
    original = trainer.amp.update

    def counting_update(skip: Any = None) -> Any:
        calls.append(trainer.progress.step_in_epoch)
        return original(skip)

    trainer.amp.update = counting_update  # type: ignore[method-assign]
    result = trainer.fit()
    assert calls == [3, 5, 3, 5]  # step_in_epoch before the 4th and the 6th batch
    assert [r["step"] for r in result["history"]] == [2, 4]  # global_step: update steps
    assert trainer.ema.num_updates == 4  # once per update
    assert trainer.amp.micro_step == 0
    # every log_every-th update step, and each epoch's last (a live loss for short epochs)
    steps = [json.loads(line) for line in (tmp_path / "steps.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps] == [2, 3, 4]


def test_accumulation_equals_one_big_batch_step(tmp_path: Path, build_trainer) -> None:
    """Four micro-batches of 16 with k = 4 make the update one batch of 64 would (fp32, no clip)."""
    from conftest import TinyModel, make_data, to_batch

    torch.manual_seed(0)
    model_a = TinyModel(8)
    model_b = TinyModel(8)
    model_b.load_state_dict(model_a.state_dict())
    model_a.eval()  # no dropout: the two runs draw their masks differently
    model_b.eval()
    loss = torch.nn.NLLLoss(ignore_index=-100)
    data = make_data(64, 7)
    optimizer_a = torch.optim.SGD(model_a.parameters(), lr=0.1)
    amp_a = AMPStep(optimizer_a, "fp32", accumulation_steps=4)
    step_a = TrainStep(model_a, optimizer_a, loss, amp=amp_a)
    for i in range(4):
        part = {k: v[16 * i : 16 * (i + 1)] for k, v in data.items()}
        updated = step_a(to_batch(part))
        assert updated == (i == 3)
    step_b = TrainStep(model_b, torch.optim.SGD(model_b.parameters(), lr=0.1), loss)
    assert step_b(to_batch(data))
    for a, b in zip(model_a.parameters(), model_b.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    counts = step_a.stats.read()
    assert counts["micro_batches"] == 4 and counts["update_steps"] == 1 and counts["updates"] == 1


def test_accumulation_resume_from_a_mid_epoch_checkpoint_is_bit_identical(
    tmp_path: Path, build_trainer, fake_clock
) -> None:
    """Step checkpoints are taken only between update steps: no pending gradient is lost."""
    full = build_trainer(tmp_path / "full", epochs=2, accumulation_steps=4)
    full.fit()
    expected = _weights(full)
    first = build_trainer(
        tmp_path / "split",
        epochs=2,
        accumulation_steps=4,
        every_seconds=1.0,
        clock=fake_clock(),
        on_epoch_end=kill_after(1),
    )
    with pytest.raises(Killed):
        first.fit()
    steps = sorted((tmp_path / "split" / "ckpt").glob("step-*.pt"))
    assert steps
    mid = torch.load(steps[0], weights_only=True)
    assert mid["step_in_epoch"] in (4, 6)  # boundaries only
    assert mid["amp"]["micro_step"] == 0
    second = build_trainer(tmp_path / "split", epochs=2, accumulation_steps=4)
    second.resume(steps[0])
    second.fit()
    for name, tensor in _weights(second).items():
        assert torch.equal(tensor, expected[name]), name


def test_nonfinite_skip_leaves_the_weights_alone_and_is_counted_per_update_step(
    tmp_path: Path, build_trainer
) -> None:
    """k = 3: a NaN in one micro-batch skips its whole update step (one count, weights kept)."""
    from conftest import poisoned

    trainer = build_trainer(
        tmp_path,
        epochs=1,
        accumulation_steps=3,
        loss_fn=poisoned(lambda n: n == 2),
        nonfinite="skip",
    )
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    seen: list[bool] = []
    original = trainer.amp.update

    def watch(skip: Any = None) -> Any:
        info = original(skip)
        seen.append(all(torch.equal(v, before[k]) for k, v in trainer.model.state_dict().items()))
        return info

    trainer.amp.update = watch  # type: ignore[method-assign]
    result = trainer.fit()
    assert seen == [True, False]  # the first update step (micro-batches 1-3) was skipped
    assert result["nonfinite_steps"] == 1 and result["history"][0]["step"] == 2
    assert all(bool(torch.isfinite(p).all()) for p in trainer.model.parameters())


def test_state_dict_has_no_side_effects(tmp_path: Path, build_trainer) -> None:
    trainer = build_trainer(tmp_path, epochs=1)
    trainer.fit()
    sums = trainer.step.stats.values.clone()
    first = trainer.state_dict()
    second = trainer.state_dict()
    assert torch.equal(trainer.step.stats.values, sums)
    assert first["global_step"] == second["global_step"] == 6


def test_resume_on_cpu_from_a_captured_runs_optimizer_state(tmp_path: Path, build_trainer) -> None:
    """A checkpoint written under capture (capturable groups, LR tensors) resumes bit-identically on CPU."""
    full = build_trainer(tmp_path / "full", epochs=4)
    full.fit()
    expected = _weights(full)
    first = build_trainer(tmp_path / "split", epochs=4, on_epoch_end=kill_after(2))
    with pytest.raises(Killed):
        first.fit()
    path = tmp_path / "split" / "ckpt" / "last.pt"
    state = torch.load(path, weights_only=True)
    for group in state["optimizer"]["param_groups"]:  # what make_capturable leaves in a saved state
        group["capturable"], group["lr"] = True, torch.tensor(group["lr"], dtype=torch.float32)
    for saved in state["optimizer"]["state"].values():
        saved["step"] = saved["step"].to(torch.float32)
    torch.save(state, path)
    second = build_trainer(tmp_path / "split", epochs=4)
    second.resume()
    group = second.optimizer.param_groups[0]
    assert group["capturable"] is False and isinstance(group["lr"], float)
    second.fit()
    for name, tensor in _weights(second).items():
        assert torch.equal(tensor, expected[name]), name


# ------------------------------------------------------------------------------------------ CUDA
def _cuda_trainer(directory: Path, epochs: int, **kwargs: Any) -> Trainer:
    from conftest import build

    return build(directory, epochs, device="cuda", **kwargs)


@needs_cuda
def test_cuda_trainer_captures_step_and_evaluation(tmp_path: Path) -> None:
    from trainkit.evaluation import evaluate

    trainer = _cuda_trainer(tmp_path, 3, selector="running_average")
    result = trainer.fit()
    assert result["capture"]["step"] == "captured" and result["capture"]["seconds"] > 0
    assert trainer.step.captured and trainer.step.eager_steps == 0
    assert [r["step"] for r in result["history"]] == [6, 12, 18]
    assert all(
        math.isfinite(r["train_loss"]) and "running_avg_loss" in r for r in result["history"]
    )
    captured = trainer.evaluate(trainer.val_loader)
    assert len(captured["batch_losses"]) == 3
    eager = evaluate(
        trainer.model,
        trainer.val_loader,
        trainer.loss_fn,
        metrics=trainer.metrics,
        device=trainer.device,
        forward=trainer.forward,
        ignore_index=0,
    )
    for key in ("loss", "acc@1", "mrr"):
        assert captured[key] == pytest.approx(eager[key], rel=1e-4, abs=1e-6), key
    assert captured["batch_losses"] == pytest.approx(eager["batch_losses"], rel=1e-4)


@needs_cuda
def test_cuda_trainer_trains_eagerly_after_a_failed_capture(tmp_path: Path) -> None:
    """A host sync in the loss invalidates the capture: one log line, then the eager step (with dropout) trains."""
    criterion = LabelSmoothedNLLLoss(0.03)

    def syncing_loss(log_probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss = criterion(log_probs, targets)
        if torch.is_grad_enabled():
            float(loss)  # a host sync: fine eagerly, invalid under capture
        return loss

    result = _cuda_trainer(tmp_path, 2, loss_fn=syncing_loss).fit()
    assert result["capture"]["step"] == "eager" and result["capture"]["reason"].startswith(
        "capture failed"
    )
    assert [r["step"] for r in result["history"]] == [6, 12]
    assert all(
        math.isfinite(r["train_loss"]) and math.isfinite(r["val_loss"]) for r in result["history"]
    )


@needs_cuda
def test_cuda_captured_resume_continues_optimizer_state_and_schedule(tmp_path: Path) -> None:
    full = _cuda_trainer(tmp_path / "full", 4)
    full.fit()
    first = _cuda_trainer(tmp_path / "split", 4, on_epoch_end=kill_after(2))
    with pytest.raises(Killed):
        first.fit()
    second = _cuda_trainer(tmp_path / "split", 4)
    second.resume()
    second.fit()
    assert second.step.captured
    for mine, theirs in zip(second.optimizer.state.values(), full.optimizer.state.values()):
        assert mine["step"].item() == theirs["step"].item() == 24
    assert float(second.optimizer.param_groups[0]["lr"]) == pytest.approx(
        float(full.optimizer.param_groups[0]["lr"])
    )
    for (name, a), b in zip(second.model.state_dict().items(), full.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4, msg=name)
    assert [r["epoch"] for r in second.progress.history] == [1, 2, 3, 4]


def _without_prefix(averaged: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An ``AveragedModel`` state under the model's own keys (``module.x`` -> ``x``; ``n_averaged`` dropped)."""
    return {k.removeprefix("module."): v for k, v in averaged.items() if k != "n_averaged"}


def test_real_ema_is_evaluated_saved_as_best_and_resumes_bit_identically(
    tmp_path: Path, build_trainer
) -> None:
    from trainkit import EMA

    full = build_trainer(tmp_path / "full", epochs=3)
    full.ema = EMA(full.model, decay=0.8)
    result = full.fit()
    best = torch.load(tmp_path / "full" / "ckpt" / "best.pt", weights_only=True)
    assert best["ema"]["module"]["n_averaged"] == 6 * result["best_epoch"]
    averaged = _without_prefix(best["ema"]["module"])
    assert any(
        not torch.equal(averaged[k], best["model"][k]) for k in averaged
    )  # the average is not the raw model
    # validation, selection and the final evaluation all ran on the EMA weights of best.pt
    assert result["validation"]["loss"] == result["history"][result["best_epoch"] - 1]["val_loss"]
    for name, tensor in full.ema.model_state_dict().items():
        assert torch.equal(tensor, averaged[name]), name
    full.ema = None
    full.model.load_state_dict(averaged)
    assert full.evaluate(full.val_loader)["loss"] == result["validation"]["loss"]
    full.model.load_state_dict(best["model"])
    assert full.evaluate(full.val_loader)["loss"] != result["validation"]["loss"]

    first = build_trainer(tmp_path / "split", epochs=3, on_epoch_end=kill_after(2))
    first.ema = EMA(first.model, decay=0.8)
    with pytest.raises(Killed):
        first.fit()
    torch.manual_seed(1234)  # a different global RNG state: resume must restore the saved one
    second = build_trainer(tmp_path / "split", epochs=3)
    second.ema = EMA(second.model, decay=0.8)
    second.resume(tmp_path / "split" / "ckpt" / "last.pt")
    assert second.ema.num_updates == 12
    resumed = second.fit()
    assert [r["val_loss"] for r in resumed["history"]] == [r["val_loss"] for r in result["history"]]
    assert resumed["validation"] == result["validation"] and resumed["test"] == result["test"]
    for name in ("best.pt", "last.pt"):
        a, b = (
            torch.load(tmp_path / run / "ckpt" / name, weights_only=True)
            for run in ("full", "split")
        )
        for part in ("model", "ema"):
            flat_a = a[part] if part == "model" else a[part]["module"]
            flat_b = b[part] if part == "model" else b[part]["module"]
            for key, tensor in flat_a.items():
                assert torch.equal(tensor, flat_b[key]), (name, part, key)
