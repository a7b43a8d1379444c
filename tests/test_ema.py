"""``trainkit.ema.EMA``: the EMA formula, buffers, exact resume, and bad input."""

from __future__ import annotations

import io
import math
from typing import Any

import pytest
import torch
from torch import nn

from trainkit.ema import EMA


def train_steps(
    model: nn.Module, optimizer: torch.optim.Optimizer, ema: EMA, steps: int, start: int
) -> None:
    """``steps`` SGD steps on data derived from the step index, then ``ema.update()`` each."""
    for i in range(start, start + steps):
        generator = torch.Generator().manual_seed(i)
        x = torch.randn(8, 4, generator=generator)
        loss = model(x).pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.update()


def make(seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 2))
    return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def test_first_update_copies_then_average_follows_the_formula() -> None:
    model, optimizer = make()
    ema = EMA(model, decay=0.9)
    train_steps(model, optimizer, ema, 1, start=0)
    by_hand = [p.detach().clone() for p in model.parameters()]  # the first update copies
    assert all(torch.equal(a, b) for a, b in zip(ema.module.module.parameters(), by_hand))
    for i in range(1, 4):
        train_steps(model, optimizer, ema, 1, start=i)
        by_hand = [0.9 * a + 0.1 * p.detach() for a, p in zip(by_hand, model.parameters())]
    for averaged, hand in zip(ema.module.module.parameters(), by_hand):
        torch.testing.assert_close(averaged, hand, rtol=1e-6, atol=1e-7)
    assert not torch.equal(next(ema.module.module.parameters()), next(model.parameters()))
    assert ema.num_updates == 4


def test_buffers_are_averaged_too() -> None:
    model, optimizer = make()
    ema = EMA(model, decay=0.5)
    train_steps(model, optimizer, ema, 5, start=0)
    bn_model, bn_ema = model[1], ema.module.module[1]
    assert not torch.equal(bn_model.running_mean, bn_ema.running_mean)  # averaged, not copied
    assert bn_ema.running_mean.abs().sum() > 0  # and not left at init


def test_the_average_does_not_track_gradients_and_does_not_touch_the_model() -> None:
    model, _optimizer = make()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ema = EMA(model, decay=0.99)
    ema.update()
    assert all(not p.requires_grad for p in ema.module.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())


def test_model_state_dict_loads_into_the_plain_model() -> None:
    model, optimizer = make()
    ema = EMA(model, decay=0.8)
    train_steps(model, optimizer, ema, 4, start=0)
    fresh, _ = make(seed=1)
    fresh.load_state_dict(ema.model_state_dict())
    x = torch.randn(5, 4)
    fresh.eval()
    assert torch.equal(fresh(x), ema.module(x))


@pytest.mark.parametrize(("before", "after"), [(1, 5), (7, 6), (0, 4)])
def test_resume_is_bit_identical(before: int, after: int) -> None:
    # uninterrupted
    model, optimizer = make()
    ema = EMA(model, decay=0.95)
    train_steps(model, optimizer, ema, before + after, start=0)

    # interrupted after `before` steps: save everything, load into fresh objects, continue
    model_a, optimizer_a = make()
    ema_a = EMA(model_a, decay=0.95)
    train_steps(model_a, optimizer_a, ema_a, before, start=0)
    buffer = io.BytesIO()
    torch.save(
        {
            "model": model_a.state_dict(),
            "optimizer": optimizer_a.state_dict(),
            "ema": ema_a.state_dict(),
        },
        buffer,
    )
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    model_b, optimizer_b = make(seed=123)  # different initial weights: all must come from the state
    model_b.load_state_dict(saved["model"])
    optimizer_b.load_state_dict(saved["optimizer"])
    ema_b = EMA(model_b, decay=0.95)
    ema_b.load_state_dict(saved["ema"])
    assert ema_b.num_updates == before
    train_steps(model_b, optimizer_b, ema_b, after, start=before)

    assert ema_b.num_updates == ema.num_updates == before + after
    for key, value in ema.module.state_dict().items():
        assert torch.equal(value, ema_b.module.state_dict()[key]), key


def test_load_refuses_other_decay_and_foreign_state() -> None:
    model, _ = make()
    state = EMA(model, decay=0.9).state_dict()
    with pytest.raises(ValueError, match="decay=0.9"):
        EMA(model, decay=0.99).load_state_dict(state)
    with pytest.raises(ValueError, match="'module'"):
        EMA(model, decay=0.9).load_state_dict({"decay": 0.9})


@pytest.mark.parametrize("decay", [-0.1, 1.5, math.nan, math.inf, "0.9", True, None])
def test_bad_decay_raises_naming_it(decay: object) -> None:
    with pytest.raises(ValueError, match="decay"):
        EMA(nn.Linear(2, 2), decay=decay)  # type: ignore[arg-type]


def test_bad_model_raises() -> None:
    with pytest.raises(ValueError, match="model"):
        EMA({"weight": torch.zeros(2)}, decay=0.9)  # type: ignore[arg-type]


def test_device_keeps_the_average_there() -> None:
    ema = EMA(nn.Linear(2, 2), decay=0.9, device="cpu")
    assert all(p.device.type == "cpu" for p in ema.module.parameters())


# ------------------------------------------------------------- check, then change (issue 22)


def _weights(ema: EMA) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in ema.module.state_dict().items()}


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda module: {**module, "module.0.weight": torch.zeros(2, 2)}, "module.0.weight"),
        (lambda module: {**module, "module.2.bias": [0.0, 0.0]}, "module.2.bias"),
        (lambda module: {**module, "n_averaged": 3}, "n_averaged"),
        (
            lambda module: {k: v for k, v in module.items() if k != "module.1.running_mean"},
            "running_mean",
        ),
    ],
    ids=["wrong-shape", "not-a-tensor", "count-not-a-tensor", "missing"],
)
def test_a_state_of_another_model_is_one_line_naming_the_key_and_changes_nothing(
    change: Any, named: str
) -> None:
    model, optimizer = make()
    ema = EMA(model, decay=0.9)
    train_steps(model, optimizer, ema, 3, start=0)
    state = ema.state_dict()
    state = {**state, "module": change(dict(state["module"]))}
    before = _weights(ema)
    for call in (ema.load_state_dict, ema.check_state_dict):
        with pytest.raises(ValueError, match=named) as info:
            call(state)
        assert "\n" not in str(info.value)
    after = _weights(ema)
    assert all(torch.equal(after[key], value) for key, value in before.items())


def test_check_state_dict_accepts_its_own_state_and_refuses_another_decay() -> None:
    model, _ = make()
    ema = EMA(model, decay=0.9)
    ema.check_state_dict(ema.state_dict())
    with pytest.raises(ValueError, match="decay=0.5"):
        EMA(model, decay=0.5).check_state_dict(ema.state_dict())
    with pytest.raises(ValueError, match="decay"):
        ema.check_state_dict({**ema.state_dict(), "decay": "0.9"})
