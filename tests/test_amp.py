"""AMPStep against the seed's two training-step branches (CPU: fp32, bf16 and fp16)."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from trainkit import AMPStep, StepInfo


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))


def _batches(n: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randn(32, 8, generator=g), torch.randint(0, 4, (32,), generator=g)) for _ in range(n)
    ]


def _params(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("opt_name", ["adamw", "adagrad"])
def test_fp32_equals_seed_non_amp_branch_bit_for_bit(opt_name):
    ref_model = _model()
    model = copy.deepcopy(ref_model)

    def make_opt(m):
        if opt_name == "adamw":
            return torch.optim.AdamW(
                m.parameters(), lr=1e-2, betas=(0.9, 0.98), eps=1e-9, weight_decay=0.015
            )
        return torch.optim.Adagrad(m.parameters(), lr=0.15, initial_accumulator_value=0.1)

    ref_opt, opt = make_opt(ref_model), make_opt(model)
    max_norm = 0.05
    amp = AMPStep(opt, precision="fp32", max_grad_norm=max_norm)
    loss_fn = nn.CrossEntropyLoss()

    for x, y in _batches():
        # the seed's non-AMP branch
        ref_opt.zero_grad()
        ref_loss = loss_fn(ref_model(x), y)
        ref_loss.backward()
        ref_norm = torch.nn.utils.clip_grad_norm_(ref_model.parameters(), max_norm)
        ref_opt.step()
        assert ref_norm > max_norm  # so clipping really happened

        with amp.autocast():
            loss = loss_fn(model(x), y)
        assert loss.dtype == torch.float32
        info = amp.step(loss)

        assert isinstance(info, StepInfo)
        assert isinstance(info.grad_norm, torch.Tensor)
        assert info.grad_norm.dim() == 0
        assert torch.equal(info.grad_norm, ref_norm)
        assert info.skipped is False
        for p, q in zip(model.parameters(), ref_model.parameters()):
            assert torch.equal(p, q)
            assert p.grad is None  # zero_grad(set_to_none=True)


def test_fp32_without_clipping_equals_plain_step():
    ref_model = _model()
    model = copy.deepcopy(ref_model)
    ref_opt = torch.optim.SGD(ref_model.parameters(), lr=0.1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    amp = AMPStep(opt, precision="fp32")
    x, y = _batches(1)[0]

    ref_opt.zero_grad()
    nn.functional.cross_entropy(ref_model(x), y).backward()
    want_norm = torch.linalg.vector_norm(
        torch.stack([p.grad.norm() for p in ref_model.parameters()])
    )
    ref_opt.step()

    with amp.autocast():
        loss = nn.functional.cross_entropy(model(x), y)
    info = amp.step(loss)
    for p, q in zip(model.parameters(), ref_model.parameters()):
        assert torch.equal(p, q)
    if info.grad_norm is not None:  # reported even without clipping, if at all
        assert torch.allclose(info.grad_norm, want_norm, rtol=1e-5)


def test_clipping_reports_pre_clip_norm_and_clips():
    w = nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([w], lr=1.0)
    amp = AMPStep(opt, precision="fp32", max_grad_norm=1.0)
    loss = (w * torch.tensor([3.0, 4.0])).sum()  # gradient (3, 4), norm 5
    info = amp.step(loss)
    assert info.grad_norm.item() == pytest.approx(5.0)
    # clipped to norm 1: w = -(3, 4) / 5
    assert torch.allclose(w.detach(), torch.tensor([-0.6, -0.8]), atol=1e-6)
    assert w.grad is None


def test_auto_on_cpu_never_uses_fp16_or_a_scaler():
    model = _model()
    amp = AMPStep(torch.optim.SGD(model.parameters(), lr=0.1), precision="auto")
    assert amp.scaler is None
    x, y = _batches(1)[0]
    with amp.autocast():
        out = model(x)
    assert out.dtype in (torch.float32, torch.bfloat16)
    info = amp.step(nn.functional.cross_entropy(out.float(), y))
    assert info.skipped is False


def test_bf16_autocasts_without_scaler():
    model = _model()
    before = _params(model)
    amp = AMPStep(torch.optim.SGD(model.parameters(), lr=0.1), precision="bf16", device_type="cpu")
    assert amp.scaler is None
    x, y = _batches(1)[0]
    with amp.autocast():
        out = model(x)
        assert out.dtype == torch.bfloat16
        loss = nn.functional.cross_entropy(out.float(), y)
    info = amp.step(loss)
    assert info.skipped is False
    assert all(p.grad is None for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_fp32_has_no_scaler_and_autocast_is_a_no_op():
    model = _model()
    amp = AMPStep(torch.optim.SGD(model.parameters(), lr=0.1), precision="fp32")
    assert amp.scaler is None
    with amp.autocast():
        assert model(torch.randn(2, 8)).dtype == torch.float32
    assert amp.state_dict().get("scaler") is None


def test_fp16_uses_a_grad_scaler_and_matches_the_seed_amp_branch():
    ref_model = _model()
    model = copy.deepcopy(ref_model)
    ref_opt = torch.optim.AdamW(ref_model.parameters(), lr=1e-2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    amp = AMPStep(opt, precision="fp16", max_grad_norm=0.8, device_type="cpu")
    assert isinstance(amp.scaler, torch.amp.GradScaler)
    ref_scaler = torch.amp.GradScaler("cpu")

    for x, y in _batches():
        # the seed's AMP branch
        ref_opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16):
            ref_loss = nn.functional.cross_entropy(ref_model(x).float(), y) / 1000
        ref_scaler.scale(ref_loss).backward()
        ref_scaler.unscale_(ref_opt)
        ref_norm = torch.nn.utils.clip_grad_norm_(ref_model.parameters(), 0.8)
        ref_scaler.step(ref_opt)
        ref_scaler.update()

        with amp.autocast():
            out = model(x)
            assert out.dtype == torch.float16
            loss = nn.functional.cross_entropy(out.float(), y) / 1000
        info = amp.step(loss)

        assert info.skipped is False
        assert torch.equal(info.grad_norm, ref_norm)
        for p, q in zip(model.parameters(), ref_model.parameters()):
            assert torch.equal(p, q)
            assert p.grad is None
        assert amp.scaler.get_scale() == ref_scaler.get_scale()


def test_fp16_inf_gradient_is_skipped_and_parameters_unchanged():
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    amp = AMPStep(opt, precision="fp16", max_grad_norm=0.8, device_type="cpu")
    scale_before = amp.scaler.get_scale()
    before = _params(model)
    x, _ = _batches(1)[0]
    with amp.autocast():
        loss = model(x).float().mean() * float("inf")
    info = amp.step(loss)
    assert info.skipped is True
    for a, b in zip(before, model.parameters()):
        assert torch.equal(a, b)
        assert b.grad is None
    assert amp.scaler.get_scale() == scale_before * 0.5  # backoff after the skip
    assert opt.state_dict()["state"] == {}  # the optimizer never stepped

    # a finite step afterwards goes through
    x, y = _batches(1)[0]
    with amp.autocast():
        loss = nn.functional.cross_entropy(model(x).float(), y) / 1000
    info = amp.step(loss)
    assert info.skipped is False
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_skipped_step_leaves_lr_alone():
    # A schedule is driven by t, not by counting steps: AMPStep must not touch the lr.
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.123)
    amp = AMPStep(opt, precision="fp16", device_type="cpu")
    with amp.autocast():
        loss = model(torch.randn(2, 8)).float().sum() * float("nan")
    assert amp.step(loss).skipped is True
    assert [g["lr"] for g in opt.param_groups] == [0.123]


@pytest.mark.parametrize("bad", ["fp64", "float16", "", "AUTO", None])
def test_invalid_precision(bad):
    model = _model()
    with pytest.raises(ValueError, match="precision"):
        AMPStep(torch.optim.SGD(model.parameters(), lr=0.1), precision=bad)


def test_state_dict_round_trip_carries_the_scaler():
    model = _model()
    amp = AMPStep(torch.optim.SGD(model.parameters(), lr=0.1), precision="fp16", device_type="cpu")
    for _ in range(2):  # two skips: scale 65536 -> 16384
        with amp.autocast():
            loss = model(torch.randn(2, 8)).float().sum() * float("inf")
        assert amp.step(loss).skipped
    scale = amp.scaler.get_scale()
    assert scale == 16384.0

    buf = io.BytesIO()
    torch.save(amp.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)

    model2 = _model()
    amp2 = AMPStep(
        torch.optim.SGD(model2.parameters(), lr=0.1), precision="fp16", device_type="cpu"
    )
    assert amp2.scaler.get_scale() != scale
    amp2.load_state_dict(state)
    assert amp2.scaler.get_scale() == scale


def test_fp32_state_dict_round_trip():
    model = _model()
    amp = AMPStep(torch.optim.SGD(model.parameters(), lr=0.1), precision="fp32", max_grad_norm=2.0)
    buf = io.BytesIO()
    torch.save(amp.state_dict(), buf)
    buf.seek(0)
    amp2 = AMPStep(torch.optim.SGD(model.parameters(), lr=0.1), precision="fp32", max_grad_norm=2.0)
    amp2.load_state_dict(torch.load(buf, weights_only=True))
    assert amp2.scaler is None


# --------------------------------------------------------------------------- misuse refused or explained


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA"
)
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_cuda_precision_without_cuda_is_refused_at_construction(precision):
    optimizer = torch.optim.SGD(_model().parameters(), lr=0.1)
    with pytest.raises(ValueError, match="CUDA, which is not available"):
        AMPStep(optimizer, precision, device_type="cuda")


def test_loss_backward_called_first_is_explained():
    model = _model()
    amp = AMPStep(torch.optim.SGD(model.parameters(), lr=0.1), "fp32")
    x, y = _batches(1)[0]
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()  # the user's own backward, then amp.step(loss) runs another
    with pytest.raises(
        RuntimeError, match=r"did you call loss.backward\(\) before amp.step\(loss\)"
    ):
        amp.step(loss)


# --------------------------------------------------------------------------- gradient accumulation


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_accumulation_equals_one_step_on_the_whole_batch(precision):
    x, y = torch.cat([b[0] for b in _batches(4)]), torch.cat([b[1] for b in _batches(4)])
    whole, parts = _model(), _model()
    amp_whole = AMPStep(torch.optim.SGD(whole.parameters(), lr=0.5), precision, device_type="cpu")
    amp_parts = AMPStep(
        torch.optim.SGD(parts.parameters(), lr=0.5),
        precision,
        device_type="cpu",
        accumulation_steps=4,
    )
    with amp_whole.autocast():
        info_whole = amp_whole.step(nn.functional.cross_entropy(whole(x).float(), y))
    stepped = []
    for i in range(4):  # four micro-batches of 32, each loss a mean over its own batch
        with amp_parts.autocast():
            loss = nn.functional.cross_entropy(
                parts(x[32 * i : 32 * (i + 1)]).float(), y[32 * i : 32 * (i + 1)]
            )
        info = amp_parts.step(loss)
        stepped.append(info.stepped)
        if not info.stepped:
            assert all(p.grad is not None for p in parts.parameters())  # gradients are kept
    assert stepped == [False, False, False, True] and info_whole.stepped
    tolerance = 1e-6 if precision == "fp32" else 2e-3
    torch.testing.assert_close(info.grad_norm, info_whole.grad_norm, rtol=tolerance, atol=tolerance)
    for a, b in zip(parts.parameters(), whole.parameters()):
        torch.testing.assert_close(a, b, rtol=tolerance, atol=tolerance)
    assert all(p.grad is None for p in parts.parameters()) and amp_parts.micro_step == 0


def test_manual_backward_then_optimizer_step_equals_step():
    automatic, manual = _model(), _model()
    amp_auto = AMPStep(
        torch.optim.SGD(automatic.parameters(), lr=0.5),
        "fp32",
        max_grad_norm=0.5,
        accumulation_steps=2,
    )
    amp_manual = AMPStep(
        torch.optim.SGD(manual.parameters(), lr=0.5),
        "fp32",
        max_grad_norm=0.5,
        accumulation_steps=2,
    )
    for x, y in _batches(4):
        amp_auto.step(nn.functional.cross_entropy(automatic(x), y))
        amp_manual.backward(
            nn.functional.cross_entropy(manual(x), y)
        )  # like Lightning's manual_backward
        if amp_manual.micro_step == 2:
            assert amp_manual.optimizer_step().stepped
    for a, b in zip(automatic.parameters(), manual.parameters()):
        assert torch.equal(a, b)


def test_accumulation_position_is_in_the_state_dict():
    model = _model()
    amp = AMPStep(
        torch.optim.SGD(model.parameters(), lr=0.1), "fp16", device_type="cpu", accumulation_steps=3
    )
    x, y = _batches(1)[0]
    with amp.autocast():
        amp.step(nn.functional.cross_entropy(model(x).float(), y))
    buffer = io.BytesIO()
    torch.save(amp.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert state["micro_step"] == 1 and state["accumulation_steps"] == 3
    restored = AMPStep(
        torch.optim.SGD(model.parameters(), lr=0.1), "fp16", device_type="cpu", accumulation_steps=3
    )
    restored.load_state_dict(state)
    assert restored.micro_step == 1
    with pytest.raises(ValueError, match="accumulation_steps"):
        AMPStep(
            torch.optim.SGD(model.parameters(), lr=0.1), "fp16", device_type="cpu"
        ).load_state_dict(state)
    with pytest.raises(ValueError, match="'scaler'"):
        restored.load_state_dict({"precision": "fp16", "max_grad_norm": None})


@pytest.mark.parametrize("bad", [0, -1, 2.0, True, "2"])
def test_invalid_accumulation_steps(bad):
    with pytest.raises(ValueError, match="accumulation_steps"):
        AMPStep(torch.optim.SGD(_model().parameters(), lr=0.1), "fp32", accumulation_steps=bad)
