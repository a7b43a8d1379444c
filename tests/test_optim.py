"""build_optimizer: the seed's Adagrad and AdamW with their exact defaults."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainkit import build_optimizer


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 3), nn.LayerNorm(3))


def _ids(opt: torch.optim.Optimizer) -> list[int]:
    return [id(p) for g in opt.param_groups for p in g["params"]]


def test_adagrad_defaults():
    model = _model()
    opt = build_optimizer(model, "adagrad")
    assert type(opt) is torch.optim.Adagrad
    assert len(opt.param_groups) == 1
    group = opt.param_groups[0]
    assert group["lr"] == 0.15
    assert group["initial_accumulator_value"] == 0.1
    assert sorted(_ids(opt)) == sorted(id(p) for p in model.parameters())
    # the accumulator really starts at 0.1 (tf.train.AdagradOptimizer(0.15, 0.1))
    for p in model.parameters():
        assert torch.equal(opt.state[p]["sum"], torch.full_like(p, 0.1))


def test_adamw_defaults():
    model = _model()
    opt = build_optimizer(model, "adamw")
    assert type(opt) is torch.optim.AdamW
    group = opt.param_groups[0]
    assert group["lr"] == 3e-4
    assert tuple(group["betas"]) == (0.9, 0.98)
    assert group["eps"] == 1e-9
    assert group["weight_decay"] == 0.015


def test_adamw_seed_faithful_decay_on_every_parameter():
    model = _model()
    opt = build_optimizer(model, "adamw")
    assert sorted(_ids(opt)) == sorted(id(p) for p in model.parameters())
    for group in opt.param_groups:
        assert group["weight_decay"] == 0.015


def test_overrides_win():
    model = _model()
    opt = build_optimizer(model, "adamw", lr=6.5e-4)
    group = opt.param_groups[0]
    assert group["lr"] == 6.5e-4
    assert tuple(group["betas"]) == (0.9, 0.98)  # the rest keep the seed's values
    assert group["eps"] == 1e-9
    assert group["weight_decay"] == 0.015

    opt = build_optimizer(model, "adamw", weight_decay=0.0, betas=(0.8, 0.9), eps=1e-8)
    group = opt.param_groups[0]
    assert (group["weight_decay"], tuple(group["betas"]), group["eps"], group["lr"]) == (
        0.0,
        (0.8, 0.9),
        1e-8,
        3e-4,
    )

    opt = build_optimizer(model, "adagrad", lr=0.05, initial_accumulator_value=0.2)
    assert opt.param_groups[0]["lr"] == 0.05
    assert opt.param_groups[0]["initial_accumulator_value"] == 0.2


def test_unknown_name_lists_the_names():
    with pytest.raises(ValueError) as excinfo:
        build_optimizer(_model(), "sgd")
    msg = str(excinfo.value)
    assert "sgd" in msg
    assert "adagrad" in msg
    assert "adamw" in msg


@pytest.mark.parametrize("how", ["generator", "list"])
def test_accepts_an_iterable_of_params(how):
    model = _model()
    params = model.parameters() if how == "generator" else list(model.parameters())
    opt = build_optimizer(params, "adamw")
    assert type(opt) is torch.optim.AdamW
    assert sorted(_ids(opt)) == sorted(id(p) for p in model.parameters())
    assert opt.param_groups[0]["weight_decay"] == 0.015


def test_model_and_params_give_the_same_update():
    m1 = _model()
    m2 = _model()
    o1 = build_optimizer(m1, "adamw", lr=1e-2)
    o2 = build_optimizer(m2.parameters(), "adamw", lr=1e-2)
    x = torch.tensor([[1, 2, 3]])
    for m, o in ((m1, o1), (m2, o2)):
        m(x).sum().backward()
        o.step()
    for p, q in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p, q)


def test_adagrad_step_matches_the_adagrad_rule():
    # G = 0.1 + g^2; w -= 0.15 * g / (sqrt(G) + eps)
    w = nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = build_optimizer([w], "adagrad")
    (w * torch.tensor([0.5, 3.0])).sum().backward()
    opt.step()
    g = torch.tensor([0.5, 3.0])
    want = torch.tensor([1.0, -2.0]) - 0.15 * g / ((0.1 + g * g).sqrt() + 1e-10)
    assert torch.allclose(w.detach(), want, rtol=1e-6)


def test_decay_exempt_opt_in():
    model = _model()  # Embedding(10, 4), Linear(4, 3), LayerNorm(3)
    emb, lin, norm = model[0], model[1], model[2]
    opt = build_optimizer(model, "adamw", decay_exempt=True)
    decay_of = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert sorted(decay_of) == sorted(id(p) for p in model.parameters())
    assert decay_of[id(lin.weight)] == 0.015
    for p in (lin.bias, emb.weight, norm.weight, norm.bias):
        assert decay_of[id(p)] == 0.0


def test_decay_exempt_without_parameters_is_refused():
    import pytest
    import torch

    from trainkit import build_optimizer

    frozen = torch.nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no parameters"):
        build_optimizer(frozen, "adamw", decay_exempt=True)
    with pytest.raises(ValueError, match="no parameters"):
        build_optimizer([], "adagrad")
