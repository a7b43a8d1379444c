"""CapturedStep / CapturedEval: the reasons, the eager twin on CPU, and capture on CUDA."""

from __future__ import annotations

import io
import math
from typing import Any

import pytest
import torch
from torch import nn

from trainkit import (
    CapturedEval,
    CapturedStep,
    LabelSmoothedNLLLoss,
    RankingMetrics,
    TensorBatches,
    WarmupCosineSchedule,
)
from trainkit.amp import AMPStep
from trainkit.captured import CaptureError, _StaticInputs, make_capturable

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
V, L, B = 23, 6, 8


class Tiny(nn.Module):
    """Embedding bag over a history + one float feature -> log-probabilities over V."""

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.emb = nn.Embedding(V, 16)
        self.feat = nn.Linear(1, 16)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(16, V)

    def forward(self, x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        h = self.emb(x).mean(dim=1) + self.feat(f.unsqueeze(1))
        return torch.log_softmax(self.out(self.drop(torch.tanh(h))).float(), dim=-1)


def forward(model: nn.Module, batch: dict[str, torch.Tensor], device: torch.device):
    return model(batch["x"].to(device), batch["f"].to(device)), batch["y"].to(device)


def tensors(n: int = 40, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "x": torch.randint(1, V, (n, L), generator=g),
        "f": torch.randn(n, generator=g),
        "y": torch.randint(1, V, (n,), generator=g),
    }


def setup(device: str = "cpu", dropout: float = 0.0, **opt):
    torch.manual_seed(0)
    model = Tiny(dropout).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01, **opt)
    return model, optimizer


LOSS = LabelSmoothedNLLLoss(0.03)


# ------------------------------------------------------------------ why_not (any device)
def test_why_not_names_the_reason() -> None:
    model, adamw = setup()
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    assert "SGD is not captured: only Adam, AdamW and Adagrad" in CapturedStep.why_not(model, sgd)
    assert "fp16 needs fused=True" in CapturedStep.why_not(model, adamw, precision="fp16")
    assert "skip" in CapturedStep.why_not(model, adamw, nonfinite="skip")
    assert "precision" in CapturedStep.why_not(model, adamw, precision="fp8")
    sparse = nn.Embedding(5, 3, sparse=True)
    assert "sparse" in CapturedStep.why_not(sparse, torch.optim.Adam(sparse.parameters()))
    short = TensorBatches(tensors(40), 16, device="cpu")
    padded = TensorBatches(tensors(40), 16, pad_to_full_batch=True, pad_values={"y": 0})
    if not CUDA:
        assert "CUDA" in CapturedStep.why_not(model, adamw)
        assert "CUDA" in CapturedEval.why_not(model)
    else:
        cuda_model, cuda_opt = setup("cuda")
        assert CapturedStep.why_not(cuda_model, cuda_opt, loader=padded) is None
        assert "last batch is short (8 of 16)" in CapturedStep.why_not(
            cuda_model, cuda_opt, loader=short
        )
    for reason in (
        CapturedStep.why_not(model, sgd),
        CapturedStep.why_not(model, adamw, precision="fp16"),
    ):
        assert "\n" not in reason


def test_capture_refused_leaves_optimizer_untouched() -> None:
    model, optimizer = setup(foreach=False)
    batch = next(iter(TensorBatches(tensors(), B)))
    step, reason = CapturedStep.try_create(model, optimizer, LOSS, forward, batch, precision="fp32")
    if CUDA:
        pytest.skip("on CUDA the CPU model is refused for its device; covered above")
    assert step is None and "CUDA" in reason
    with pytest.raises(CaptureError, match="CUDA"):
        CapturedStep(model, optimizer, LOSS, forward, batch, precision="fp32")
    assert optimizer.param_groups[0]["lr"] == 1e-2 and not optimizer.param_groups[0]["capturable"]


def test_bad_arguments_raise_value_error() -> None:
    model, optimizer = setup()
    batch = next(iter(TensorBatches(tensors(), B)))
    for kwargs, match in (
        ({"precision": "fp8"}, "precision"),
        ({"max_grad_norm": 0.0}, "max_grad_norm"),
        ({"nonfinite": "ignore"}, "nonfinite"),
        ({"warmup_steps": 0}, "warmup_steps"),
    ):
        with pytest.raises(ValueError, match=match):
            CapturedStep(model, optimizer, LOSS, forward, batch, capture=False, **kwargs)


# ------------------------------------------------------------ the eager twin on CPU
def test_eager_twin_equals_ampstep_and_sums_match() -> None:
    batches = list(TensorBatches(tensors(), B, seed=1))
    model_a, opt_a = setup()
    amp = AMPStep(opt_a, precision="fp32", max_grad_norm=0.5)
    losses, norms = [], []
    for batch in batches:
        log_probs, y = forward(model_a, batch, torch.device("cpu"))
        loss = LOSS(log_probs, y)
        losses.append(loss.item())
        norms.append(amp.step(loss).grad_norm.item())
    model_b, opt_b = setup()
    step = CapturedStep(
        model_b,
        opt_b,
        LOSS,
        forward,
        batches[0],
        precision="fp32",
        max_grad_norm=0.5,
        capture=False,
    )
    for batch in batches:
        step.run(batch)
    for a, b in zip(model_a.parameters(), model_b.parameters()):
        torch.testing.assert_close(a, b)
    loss_sum, norm_sum, overflow, finite = step.sums.tolist()
    assert finite == len(batches) and overflow == 0
    assert loss_sum == pytest.approx(sum(losses), rel=1e-5)
    assert norm_sum == pytest.approx(sum(norms), rel=1e-5)
    assert step.pop_nonfinite() == (0, None, len(batches))
    step.reset_sums()
    assert step.sums.abs().sum().item() == 0


def test_nonfinite_step_is_recorded_and_fused_skips_it() -> None:
    batches = list(TensorBatches(tensors(), B, shuffle=False))
    bad = {k: v.clone() for k, v in batches[1].items()}
    bad["f"][0] = float("nan")
    for fused in (False, True):
        model, optimizer = setup(fused=True) if fused else setup()
        step = CapturedStep(
            model, optimizer, LOSS, forward, batches[0], precision="fp32", capture=False
        )
        step.run(batches[0])
        before = [p.detach().clone() for p in model.parameters()]
        step.run(bad)
        after = [p.detach().clone() for p in model.parameters()]
        step.run(batches[2])
        if fused:  # the fused kernel's found_inf drops the update: the next step is fine again
            assert step.pop_nonfinite() == (1, 1, 3)
            assert step.sums[3].item() == 2  # finite steps
            assert all(torch.equal(a, b) for a, b in zip(before, after))
            assert all(torch.isfinite(p).all() for p in model.parameters())
        else:  # the NaN update reached the weights, so every later step is non-finite too
            assert step.pop_nonfinite() == (2, 1, 3)
            assert step.sums[3].item() == 1
            assert not all(torch.isfinite(p).all() for p in model.parameters())
        assert step.pop_nonfinite() == (0, None, 0)


def test_static_padding_changes_no_update() -> None:
    data = tensors(20)
    short = list(TensorBatches(data, 8, shuffle=False))[-1]
    padded = list(
        TensorBatches(data, 8, shuffle=False, pad_to_full_batch=True, pad_values={"y": 0})
    )[-1]
    assert short["y"].shape[0] == 4 and padded["y"].shape[0] == 8 and (padded["y"][4:] == 0).all()
    results = []
    for batch in (short, padded):
        model, optimizer = setup()
        step = CapturedStep(
            model,
            optimizer,
            LOSS,
            forward,
            batch,
            precision="fp32",
            max_grad_norm=1.0,
            capture=False,
        )
        step.run(batch)
        results.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)


def test_static_inputs_refuse_other_shapes() -> None:
    batches = list(TensorBatches(tensors(20), 8, shuffle=False))
    static = _StaticInputs(batches[0], torch.device("cpu"))
    assert static.load(batches[1]) and torch.equal(static.batch["x"], batches[1]["x"])
    assert not static.load(batches[2])  # the short last batch
    assert not static.load({"x": batches[0]["x"]})  # another structure
    assert torch.equal(static.batch["x"], batches[1]["x"])  # nothing copied


def test_schedule_apply_fills_a_tensor_lr_in_place() -> None:
    model, _ = setup()
    lr = torch.tensor(0.5)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, foreach=False)
    schedule = WarmupCosineSchedule(1e-3, warmup=2, total=10, min_lr=1e-5)
    value = schedule.apply(optimizer, 3.25)
    assert (
        optimizer.param_groups[0]["lr"] is lr
        and lr.item() == pytest.approx(value)
        and value == schedule(3.25)
    )
    plain = torch.optim.AdamW(model.parameters(), lr=0.5)
    schedule.apply(plain, 3.25)
    assert plain.param_groups[0]["lr"] == schedule(3.25)


def test_make_capturable_converts_in_place() -> None:
    model, optimizer = setup(foreach=False)
    LOSS(*forward(model, next(iter(TensorBatches(tensors(), B))), torch.device("cpu"))).backward()
    optimizer.step()
    make_capturable(optimizer, torch.device("cpu"))
    group = optimizer.param_groups[0]
    assert (
        group["capturable"]
        and isinstance(group["lr"], torch.Tensor)
        and group["lr"].item() == pytest.approx(1e-2)
    )
    with pytest.raises(ValueError, match="SGD"):
        make_capturable(torch.optim.SGD(model.parameters(), lr=0.1), torch.device("cpu"))
    adagrad = torch.optim.Adagrad(model.parameters(), lr=0.15, initial_accumulator_value=0.1)
    make_capturable(adagrad, torch.device("cpu"))
    group = adagrad.param_groups[0]
    assert (
        "capturable" not in group
        and isinstance(group["lr"], torch.Tensor)
        and group["lr"].item() == pytest.approx(0.15)
    )


@pytest.mark.parametrize(
    "options", [{}, {"lr_decay": 0.01, "weight_decay": 0.02}, {"maximize": True}]
)
def test_eager_twin_with_adagrad_is_bit_identical_to_torch_adagrad(options: dict) -> None:
    """The original recipe's optimizer through the step's own update (adagrad_step, LR as a tensor)."""
    batches = list(TensorBatches(tensors(), B, seed=1))
    weights = []
    for use_step in (False, True):
        torch.manual_seed(0)
        model = Tiny()
        optimizer = torch.optim.Adagrad(
            model.parameters(), lr=0.15, initial_accumulator_value=0.1, **options
        )
        if use_step:
            step = CapturedStep(
                model,
                optimizer,
                LOSS,
                forward,
                batches[0],
                precision="fp32",
                max_grad_norm=2.0,
                capture=False,
            )
            make_capturable(
                optimizer, torch.device("cpu")
            )  # what capture does: the LR becomes a tensor
            for batch in batches:
                step.run(batch)
            assert step.pop_nonfinite() == (0, None, len(batches))
        else:
            amp = AMPStep(optimizer, precision="fp32", max_grad_norm=2.0)
            for batch in batches:
                amp.step(LOSS(*forward(model, batch, torch.device("cpu"))))
        weights.append([p.detach().clone() for p in model.parameters()])
        assert optimizer.state[model.out.weight]["step"].item() == len(batches)
    for a, b in zip(
        *weights
    ):  # with lr_decay, torch computes the decayed LR in float64 from a float LR
        assert (
            torch.equal(a, b)
            if "lr_decay" not in options
            else torch.allclose(a, b, rtol=1e-6, atol=1e-7)
        )


def test_eager_eval_matches_manual_evaluation() -> None:
    model, _ = setup()
    loader = TensorBatches(
        tensors(30), 8, shuffle=False, pad_to_full_batch=True, pad_values={"y": 0}
    )
    ev = CapturedEval(
        model,
        forward,
        LOSS,
        next(iter(loader)),
        metrics=RankingMetrics(V),
        precision="fp32",
        capture=False,
    )
    result = ev.evaluate(loader)
    metrics, loss_sum, count, losses = RankingMetrics(V), 0.0, 0, []
    with torch.no_grad():
        for batch in TensorBatches(tensors(30), 8, shuffle=False):
            log_probs, y = forward(model, batch, torch.device("cpu"))
            loss = LOSS(log_probs, y).item()
            losses.append(loss)
            loss_sum += loss * len(y)
            count += len(y)
            metrics.update(log_probs, y)
    expected = metrics.compute()
    assert result["count"] == 30 == count
    assert result["loss"] == pytest.approx(loss_sum / count, rel=1e-6)
    assert result["acc@1"] == pytest.approx(expected["acc@1"]) and result["mrr"] == pytest.approx(
        expected["mrr"]
    )
    assert ev.batch_losses() == pytest.approx(losses, rel=1e-6)


# ----------------------------------------------------------------------------- CUDA
def cuda_loader(n: int = 64, seed: int = 0) -> TensorBatches:
    return TensorBatches(
        tensors(n, seed), B, seed=seed, device="cuda", pad_to_full_batch=True, pad_values={"y": 0}
    )


def train_twice(
    build: Any, loader: TensorBatches, **step_options: Any
) -> list[tuple[CapturedStep, nn.Module, Any]]:
    """Two epochs of the same seeded model and optimizer (``build()``): the eager twin, then captured."""
    runs = []
    for capture in (False, True):
        model, optimizer = build()
        step = CapturedStep(
            model,
            optimizer,
            LOSS,
            forward,
            next(iter(loader)),
            precision="fp32",
            capture=capture,
            **step_options,
        )
        for epoch in range(2):
            loader.set_epoch(epoch)
            for batch in loader:
                step.run(batch)
        runs.append((step, model, optimizer))
    for a, b in zip(runs[0][1].parameters(), runs[1][1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    return runs


@needs_cuda
def test_captured_step_matches_its_eager_twin() -> None:
    runs = train_twice(lambda: setup("cuda", fused=True), cuda_loader(), max_grad_norm=0.5)
    for step, _, _ in runs:
        assert step.eager_steps == 0 and step.pop_nonfinite() == (0, None, 16)
    _, model, optimizer = runs[1]
    assert optimizer.state[model.out.weight]["step"].item() == 16  # warm-up left no trace


@needs_cuda
def test_eager_batches_between_replays_match_the_eager_twin() -> None:
    """A short batch runs eagerly between replays: no gradient leaks from one path into the other."""
    loader = TensorBatches(tensors(44), B, seed=1, device="cuda")  # 5 full batches and a short one
    (eager, _, _), (captured, _, _) = train_twice(
        lambda: setup("cuda", fused=True), loader, max_grad_norm=0.5
    )
    assert (eager.eager_steps, captured.eager_steps) == (0, 2)


@needs_cuda
def test_adagrad_is_captured_and_matches_its_eager_twin() -> None:
    def build() -> tuple[nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(0)
        model = Tiny().cuda()
        return model, torch.optim.Adagrad(
            model.parameters(), lr=0.15, initial_accumulator_value=0.1
        )

    runs = train_twice(build, cuda_loader(), max_grad_norm=2.0)
    for (step, model, optimizer), capture in zip(runs, (False, True)):
        assert (
            step.captured == capture
            and step.eager_steps == 0
            and step.pop_nonfinite() == (0, None, 16)
        )
        assert optimizer.state[model.out.weight]["step"].item() == 16  # warm-up left no trace


@needs_cuda
def test_dropout_is_fresh_on_every_replay_and_lr_tensor_is_read() -> None:
    loader = cuda_loader()
    batch = next(iter(loader))
    model, optimizer = setup("cuda", dropout=0.5, fused=True)
    step = CapturedStep(model, optimizer, LOSS, forward, batch, precision="bf16")
    step.set_lr(0.0)
    optimizer.param_groups[0]["weight_decay"] = (
        0.0  # baked in at capture: lr 0 still means no change
    )
    weights = [p.detach().clone() for p in model.parameters()]
    losses = []
    for _ in range(3):
        step.reset_sums()
        step.run(batch)
        losses.append(step.sums[0].item())
    assert len(set(losses)) == 3  # a new dropout mask each replay
    assert all(
        torch.equal(a, b) for a, b in zip(weights, model.parameters())
    )  # lr 0 read from the tensor
    WarmupCosineSchedule(1e-2, warmup=0, total=10).apply(optimizer, 0)
    step.run(batch)
    assert not all(torch.equal(a, b) for a, b in zip(weights, model.parameters()))


@needs_cuda
def test_a_failed_capture_leaves_eager_steps_and_new_captures_working() -> None:
    """A host sync inside the step invalidates the capture: the caller gets CaptureError, and the
    eager step (dropout draws random numbers) and a later capture still run in the same process."""
    loader = cuda_loader()
    batch = next(iter(loader))
    model, optimizer = setup("cuda", dropout=0.5, fused=True)
    weights = [p.detach().clone() for p in model.parameters()]

    def syncing_loss(log_probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss = LOSS(log_probs, targets)
        float(loss)  # a host sync: fine eagerly, invalid under capture
        return loss

    step, reason = CapturedStep.try_create(
        model, optimizer, syncing_loss, forward, batch, precision="bf16"
    )
    assert step is None and reason is not None and reason.startswith("capture failed"), reason
    assert torch.cuda.current_stream() == torch.cuda.default_stream()
    assert all(
        torch.equal(a, b) for a, b in zip(weights, model.parameters())
    )  # the warm-up was undone
    eager = CapturedStep(
        model, optimizer, syncing_loss, forward, batch, precision="bf16", capture=False
    )
    for each in loader:
        eager.run(each)
    assert eager.pop_nonfinite() == (0, None, 8)
    captured = CapturedStep(model, optimizer, LOSS, forward, batch, precision="bf16")
    assert captured.captured
    losses = []
    for _ in range(2):
        captured.reset_sums()
        captured.run(batch)
        losses.append(captured.sums[0].item())
    assert (
        all(map(math.isfinite, losses)) and losses[0] != losses[1]
    )  # fresh dropout in each replay


@needs_cuda
def test_nonfinite_under_capture_is_skipped_and_located() -> None:
    loader = cuda_loader()
    batches = list(loader)
    model, optimizer = setup("cuda", fused=True)
    step = CapturedStep(
        model, optimizer, LOSS, forward, batches[0], precision="bf16", nonfinite="skip"
    )
    step.run(batches[0])
    bad = {k: v.clone() for k, v in batches[1].items()}
    bad["f"][3] = float("inf") * 0
    before = [p.detach().clone() for p in model.parameters()]
    step.run(bad)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    step.run(batches[2])
    assert step.pop_nonfinite() == (1, 1, 3)


@needs_cuda
def test_fp16_is_captured_with_a_fused_optimizer() -> None:
    loader = cuda_loader()
    model, optimizer = setup("cuda", fused=True)
    step = CapturedStep(
        model, optimizer, LOSS, forward, next(iter(loader)), precision="fp16", max_grad_norm=1.0
    )
    for batch in loader:
        step.run(batch)
    loss_sum, _, overflow, finite = step.sums.tolist()
    assert finite == len(loader) and overflow <= 1 and loss_sum > 0
    assert step.scaler is not None and step.scaler.get_scale() > 0


@needs_cuda
def test_resume_continues_from_the_restored_optimizer_state() -> None:
    loader = cuda_loader()
    batches = list(loader)
    model, optimizer = setup("cuda", fused=True)
    step = CapturedStep(model, optimizer, LOSS, forward, batches[0], precision="fp32")
    for batch in batches[:4]:
        step.run(batch)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    for batch in batches[4:]:
        step.run(batch)
    uninterrupted = [p.detach().clone() for p in model.parameters()]

    def load() -> (
        dict
    ):  # one load per optimizer: load_state_dict adopts the loaded tensors themselves
        buffer.seek(0)
        return torch.load(buffer, weights_only=True)

    # (a) a new step built after loading; (b) the old step, state loaded after its capture
    model_a, opt_a = setup("cuda", fused=True)
    saved = load()
    model_a.load_state_dict(saved["model"])
    opt_a.load_state_dict(saved["optimizer"])
    resumed = CapturedStep(model_a, opt_a, LOSS, forward, batches[0], precision="fp32")
    saved = load()
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    for batch in batches[4:]:
        resumed.run(batch)
        step.run(batch)
    for m in (model_a, model):
        for a, b in zip(uninterrupted, m.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for opt in (opt_a, optimizer):
        steps = opt.state[opt.param_groups[0]["params"][0]]["step"]
        assert steps.is_cuda and steps.item() == len(batches)


@needs_cuda
def test_adagrad_state_loaded_after_capture_continues_the_run() -> None:
    batches = list(cuda_loader())
    cuda = torch.device("cuda")
    torch.manual_seed(0)
    model = Tiny().cuda()
    foreach = torch.optim.Adagrad(
        model.parameters(), lr=0.15, initial_accumulator_value=0.1, foreach=True
    )
    amp = AMPStep(foreach, precision="fp32", max_grad_norm=2.0)
    buffer = io.BytesIO()
    for index, batch in enumerate(batches):
        if index == 4:
            torch.save({"model": model.state_dict(), "optimizer": foreach.state_dict()}, buffer)
        amp.step(LOSS(*forward(model, batch, cuda)))
    uninterrupted = [p.detach().clone() for p in model.parameters()]
    torch.manual_seed(1)
    resumed = Tiny().cuda()
    captured = torch.optim.Adagrad(resumed.parameters(), lr=0.15, initial_accumulator_value=0.1)
    step = CapturedStep(
        resumed, captured, LOSS, forward, batches[0], precision="fp32", max_grad_norm=2.0
    )
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed.load_state_dict(saved["model"])
    captured.load_state_dict(
        saved["optimizer"]
    )  # an eager run's state: CPU step counters, float LR
    for batch in batches[4:]:
        step.run(batch)
    for a, b in zip(uninterrupted, resumed.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    counter = captured.state[resumed.out.weight]["step"]
    assert counter.is_cuda and counter.item() == len(batches)
    assert step.eager_steps == 0


@needs_cuda
def test_captured_eval_matches_eager_eval() -> None:
    loader = TensorBatches(
        tensors(30), 8, shuffle=False, device="cuda", pad_to_full_batch=True, pad_values={"y": 0}
    )
    model, _ = setup("cuda", dropout=0.3)
    results = []
    for capture in (False, True):
        ev = CapturedEval(
            model,
            forward,
            LOSS,
            next(iter(loader)),
            metrics=RankingMetrics(V, device="cuda"),
            precision="fp32",
            capture=capture,
        )
        results.append((ev.evaluate(loader), ev.batch_losses()))
        assert ev.eager_batches == 0
    (eager, eager_losses), (captured, captured_losses) = results
    assert captured["count"] == 30
    for key in ("loss", "acc@1", "acc@5", "mrr", "f1"):
        assert captured[key] == pytest.approx(eager[key], rel=1e-5, abs=1e-6)
    assert captured_losses == pytest.approx(eager_losses, rel=1e-5)


# ------------------------------------------------------------- DDP (one gloo rank on CPU)
@pytest.fixture()
def one_rank_group():
    import socket

    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield dist
    dist.destroy_process_group()


def test_ddp_reasons_and_the_step_around_the_wrapped_module(one_rank_group) -> None:
    """A DDP model: the step runs the module, averages the gradients itself, and equals plain training."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    from trainkit.captured import _all_reduce_mean

    batches = list(TensorBatches(tensors(), B, seed=1))
    model, optimizer = setup()
    assert "over gloo: the gradient all-reduce in the graph needs NCCL" in CapturedStep.why_not(
        DDP(model), optimizer
    )
    unused = DDP(model, find_unused_parameters=True)
    assert "find_unused_parameters=True" in CapturedStep.why_not(unused, optimizer)
    parts = [torch.arange(6.0).view(2, 3), torch.ones(4)]
    _all_reduce_mean(parts, None)  # one rank: the mean is the tensor itself, reshaped back in place
    assert torch.equal(parts[0], torch.arange(6.0).view(2, 3)) and torch.equal(
        parts[1], torch.ones(4)
    )
    weights = []
    for wrap in (False, True):
        model, optimizer = setup()
        model.register_buffer(
            "counter", torch.zeros(1)
        )  # broadcast from rank 0 each step, as DDP's forward does
        stepped = DDP(model) if wrap else model
        step = CapturedStep(
            stepped,
            optimizer,
            LOSS,
            forward,
            batches[0],
            precision="fp32",
            max_grad_norm=0.5,
            capture=False,
        )
        assert len(step._broadcast) == wrap
        for batch in batches:
            step.run(batch)
        weights.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*weights):
        assert torch.equal(a, b)
