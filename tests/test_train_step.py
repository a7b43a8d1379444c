"""TrainStep / EvalStep: one body, eager or captured (docs/trainer.md, docs/captured.md).

On CPU: the counters, the body against a hand-written AMPStep loop, the capture reasons and
the graph plumbing. On CUDA: the equivalence matrix of issue 20 (eager and captured end with
equal weights, counters and optimizer state over precision x accumulation x clipping x
optimizer x EMA x non-finite rule), and captured evaluation against eager.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from trainkit import (
    EMA,
    AMPStep,
    EvalStep,
    LabelSmoothedNLLLoss,
    RankingMetrics,
    StepStats,
    TensorBatches,
    TrainStep,
    WarmupCosineSchedule,
)
from trainkit._graph import StaticInputs, make_capturable
from trainkit.capturable_adagrad import adagrad_step
from trainkit.train_step import CaptureError

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
V, L, B = 23, 6, 8
LOSS = LabelSmoothedNLLLoss(0.03)


class Tiny(nn.Module):
    """Embedding bag over a history + one float feature -> log-probabilities over V."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(V, 16)
        self.feat = nn.Linear(1, 16)
        self.out = nn.Linear(16, V)

    def forward(self, x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        h = self.emb(x).mean(dim=1) + self.feat(f.unsqueeze(1))
        return torch.log_softmax(self.out(torch.tanh(h)).float(), dim=-1)


def forward(model: nn.Module, batch: dict[str, torch.Tensor], device: torch.device):
    return model(batch["x"].to(device), batch["f"].to(device)), batch["y"].to(device)


def tensors(n: int = 56, seed: int = 0, device: str = "cpu") -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    data = {
        "x": torch.randint(1, V, (n, L), generator=g),
        "f": torch.randn(n, generator=g),
        "y": torch.randint(1, V, (n,), generator=g),
    }
    return {k: v.to(device) for k, v in data.items()}


def make_optimizer(model: nn.Module, name: str, fused: bool | None = None):
    if name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01, fused=fused)
    return torch.optim.Adagrad(model.parameters(), lr=0.15, initial_accumulator_value=0.1)


# ----------------------------------------------------------------------------------- CPU
def test_step_stats_count_by_name_and_refuse_foreign_layouts() -> None:
    stats = StepStats()
    stats.add_micro_batch(torch.tensor(2.0), torch.tensor(True))
    stats.add_micro_batch(torch.tensor(float("nan")), torch.tensor(False))
    stats.add_update(
        torch.tensor(3.0), torch.tensor(False), torch.tensor(False), torch.tensor(True)
    )
    stats.add_update(
        torch.tensor(1.0), torch.tensor(True), torch.tensor(False), torch.tensor(False)
    )
    read = stats.read()
    assert read["loss_sum"] == 2.0 and read["finite_micro_batches"] == 1
    assert read["micro_batches"] == 2 and read["update_steps"] == 2 and read["updates"] == 1
    assert read["grad_norm_sum"] == 4.0 and read["finite_norm_updates"] == 2
    assert read["nonfinite_steps"] == 1 and read["first_nonfinite"] == 0
    with pytest.raises(ValueError, match="tensor of 10 values"):
        stats.load(torch.zeros(5))
    stats.reset()
    assert stats.read()["first_nonfinite"] == -1 and stats.read()["loss_sum"] == 0


@pytest.mark.parametrize("k", [1, 3])
def test_eager_step_equals_the_hand_written_ampstep_loop(k: int) -> None:
    """The body is AMPStep's step: TrainStep and ``amp.step(loss)`` give bit-identical weights."""
    batches = list(TensorBatches(tensors(), B, seed=1))
    weights = []
    for use_train_step in (True, False):
        torch.manual_seed(0)
        model = Tiny()
        optimizer = make_optimizer(model, "adamw")
        amp = AMPStep(optimizer, "fp32", max_grad_norm=0.5, accumulation_steps=k)
        step = TrainStep(model, optimizer, LOSS, forward, amp)
        for i, batch in enumerate(batches):
            if use_train_step:
                step(batch, ends_epoch=i == len(batches) - 1)
            else:
                loss = LOSS(*forward(model, batch, torch.device("cpu")))
                if i == len(batches) - 1 and amp.micro_step + 1 < k:
                    amp.backward(loss)  # the flush at the epoch's end
                    amp.optimizer_step()
                else:
                    amp.step(loss)
        weights.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*weights):
        assert torch.equal(a, b)


def test_adagrad_step_equals_torch_and_its_skip_keeps_every_value() -> None:
    batches = list(TensorBatches(tensors(), B, seed=1))
    results = []
    for by_hand in (True, False):
        torch.manual_seed(0)
        model = Tiny()
        optimizer = make_optimizer(model, "adagrad")
        for batch in batches:
            optimizer.zero_grad()
            LOSS(*forward(model, batch, torch.device("cpu"))).backward()
            if by_hand:
                adagrad_step(optimizer)
            else:
                optimizer.step()
        results.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*results):
        assert torch.equal(a, b)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sums = [optimizer.state[p]["sum"].clone() for p in model.parameters()]
    adagrad_step(optimizer, torch.tensor(True))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(torch.equal(optimizer.state[p]["sum"], s) for p, s in zip(model.parameters(), sums))


def test_capture_reasons_on_cpu() -> None:
    model = Tiny()
    assert "CUDA" in TrainStep(model, make_optimizer(model, "adamw"), LOSS, forward).why_not()
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    assert "SGD is not captured" in TrainStep(model, sgd, LOSS, forward).why_not()
    with pytest.raises(CaptureError, match="CUDA"):
        TrainStep(model, make_optimizer(model, "adamw"), LOSS, forward).capture(
            next(iter(TensorBatches(tensors(), B)))
        )
    with pytest.raises(ValueError, match="nonfinite must be one of"):
        TrainStep(model, sgd, LOSS, forward, nonfinite="ignore")
    other = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="amp must step the same optimizer"):
        TrainStep(model, sgd, LOSS, forward, AMPStep(other, "fp32"))


def test_static_inputs_refuse_other_shapes() -> None:
    batches = list(TensorBatches(tensors(20), 8, shuffle=False))
    static = StaticInputs(batches[0], torch.device("cpu"))
    assert static.load(batches[1]) and torch.equal(static.batch["x"], batches[1]["x"])
    assert not static.load(batches[2])  # the short last batch
    assert not static.load({"x": batches[0]["x"]})  # another structure
    assert torch.equal(static.batch["x"], batches[1]["x"])  # nothing copied


def test_schedule_apply_fills_a_tensor_lr_in_place() -> None:
    model = Tiny()
    lr = torch.tensor(0.5)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, foreach=False)
    schedule = WarmupCosineSchedule(1e-3, warmup=2, total=10, min_lr=1e-5)
    value = schedule.apply(optimizer, 3.25)
    assert optimizer.param_groups[0]["lr"] is lr and lr.item() == pytest.approx(value)


def test_make_capturable_converts_in_place() -> None:
    model = Tiny()
    optimizer = make_optimizer(model, "adamw")
    make_capturable(optimizer, torch.device("cpu"))
    group = optimizer.param_groups[0]
    assert group["capturable"] and isinstance(group["lr"], torch.Tensor)
    with pytest.raises(ValueError, match="SGD"):
        make_capturable(torch.optim.SGD(model.parameters(), lr=0.1), torch.device("cpu"))


def test_eval_step_matches_a_manual_evaluation() -> None:
    model = Tiny()
    batches = list(TensorBatches(tensors(), B, shuffle=False))
    step = EvalStep(model, LOSS, metrics=RankingMetrics(V), device="cpu", forward=forward)
    for batch in batches:
        step.run(batch)
    result = step.result()
    with torch.no_grad():
        losses = [float(LOSS(*forward(model, b, torch.device("cpu")))) for b in batches]
    assert result["batch_losses"] == pytest.approx(losses, rel=1e-6)
    assert result["loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-6)  # equal batches


# ---------------------------------------------------------------------------------- CUDA
PRECISIONS = ("fp32", "bf16", "fp16")
TOLERANCE = {"fp32": 1e-4, "bf16": 2e-2, "fp16": 2e-2}  # max |weight difference|
MATRIX = list(
    itertools.product(
        PRECISIONS, (1, 3), (0.5, None), ("adamw", "adagrad"), (False, True), ("raise", "skip")
    )
)


def _run(
    capture: bool, precision: str, k: int, clip: float | None, name: str, ema: bool, nonfinite: str
) -> tuple[TrainStep, nn.Module]:
    torch.manual_seed(0)
    device = torch.device("cuda")
    model = Tiny().to(device)
    fused = True if name == "adamw" else None
    optimizer = make_optimizer(model, name, fused=fused)
    amp = AMPStep(optimizer, precision, max_grad_norm=clip, accumulation_steps=k)
    average = EMA(model, decay=0.9) if ema else None
    step = TrainStep(model, optimizer, LOSS, forward, amp, ema=average, nonfinite=nonfinite)
    data = tensors(56, device="cuda")
    if nonfinite == "skip":
        data["f"][3 * B + 2] = float("nan")  # micro-batch 4: a NaN loss
    batches = list(TensorBatches(data, B, seed=1, shuffle=False))
    if capture:
        reason = step.why_not(example_batch=batches[0])
        if reason is not None:
            pytest.skip(f"not capturable here: {reason}")
        step.capture(batches[0])
        assert step.captured
    for i, batch in enumerate(batches):  # 7 micro-batches: k = 3 flushes the last one
        step(batch, ends_epoch=i == len(batches) - 1)
    torch.cuda.synchronize()
    return step, model


@needs_cuda
@pytest.mark.parametrize(("precision", "k", "clip", "name", "ema", "nonfinite"), MATRIX)
def test_eager_and_captured_steps_are_equivalent(
    precision: str, k: int, clip: float | None, name: str, ema: bool, nonfinite: str
) -> None:
    captured, captured_model = _run(True, precision, k, clip, name, ema, nonfinite)
    eager, eager_model = _run(False, precision, k, clip, name, ema, nonfinite)
    assert captured.eager_steps == 0
    counted = captured.stats.read()
    expected = eager.stats.read()
    for key in ("micro_batches", "update_steps", "updates", "fp16_overflows", "nonfinite_steps"):
        assert counted[key] == expected[key], key
    assert counted["update_steps"] == (7 if k == 1 else 3)
    if nonfinite == "skip":
        assert counted["nonfinite_steps"] >= 1
    assert captured.amp.micro_step == eager.amp.micro_step == 0
    tolerance = TOLERANCE[precision]
    for (key, a), b in zip(captured_model.state_dict().items(), eager_model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=tolerance, equal_nan=True, msg=key)
    if ema:
        assert captured.ema.num_updates == eager.ema.num_updates == counted["update_steps"]
    a_state = captured.optimizer.state_dict()["state"]
    b_state = eager.optimizer.state_dict()["state"]
    for index in a_state:
        assert float(a_state[index]["step"]) == float(b_state[index]["step"])
    if precision == "fp16":
        assert captured.amp.scaler.get_scale() == eager.amp.scaler.get_scale()


class Wrapper(nn.Module):
    """A stand-in for ``torch.compile``'s wrapper: the inner module as ``_orig_mod``."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self._orig_mod = inner
        self.calls = 0

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self._orig_mod(*args)


@needs_cuda
def test_the_captured_step_runs_the_model_it_was_given_not_the_unwrapped_one() -> None:
    """A torch.compile-d model stays compiled when captured (the graph records its kernels)."""
    device = torch.device("cuda")
    model = Wrapper(Tiny().to(device))
    optimizer = make_optimizer(model, "adamw", fused=True)
    step = TrainStep(model, optimizer, LOSS, forward, AMPStep(optimizer, "bf16"))
    batches = list(TensorBatches(tensors(32, device="cuda"), B, shuffle=False))
    step.capture(batches[0])
    assert step.captured and model.calls >= 1  # the warm-up and the capture ran the wrapper
    calls = model.calls
    for batch in batches:
        step(batch)
    assert model.calls == calls  # replays: no Python forward at all
    assert step.eager_steps == 0


@needs_cuda
def test_captured_eval_matches_eager_eval() -> None:
    device = torch.device("cuda")
    model = Tiny().to(device)
    batches = list(TensorBatches(tensors(64, device="cuda"), B, shuffle=False))
    results = []
    for capture in (True, False):
        step = EvalStep(
            model, LOSS, metrics=RankingMetrics(V, device=device), device=device, forward=forward
        )
        if capture:
            step.capture(batches[0])
            assert step.captured
        for batch in batches:
            step.run(batch)
        results.append(step.result())
    for key in ("loss", "acc@1", "mrr"):
        assert results[0][key] == pytest.approx(results[1][key], rel=1e-5), key
    assert results[0]["batch_losses"] == pytest.approx(results[1]["batch_losses"], rel=1e-5)


def test_an_empty_loader_is_named_not_blamed_on_the_metrics() -> None:
    from trainkit import evaluate

    model = Tiny()
    with pytest.raises(
        ValueError, match=r"saw no batch \(is the validation or test loader empty\?\)"
    ):
        evaluate(
            model, [], LOSS, metrics=RankingMetrics, device=torch.device("cpu"), forward=forward
        )
