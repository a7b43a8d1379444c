"""PointerV45 (examples/pointer_v45_model.py): normalisation, pointer support, masking, grads."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import pointer_v45_model
from pointer_v45_model import PointerV45, lookup

V, U, L = 40, 6, 9


def make_batch(
    batch: int = 5, length: int = L, seed: int = 0
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Random right-padded batch with lengths 1..length."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, length + 1, (batch,), generator=g)
    lengths[0] = length
    valid = torch.arange(length).view(1, -1) < lengths.view(-1, 1)
    x = torch.randint(1, V, (batch, length), generator=g) * valid
    x_dict = {
        "time": torch.randint(0, 96, (batch, length), generator=g) * valid,
        "weekday": torch.randint(0, 7, (batch, length), generator=g) * valid,
        "diff": torch.randint(0, 8, (batch, length), generator=g) * valid,
        "duration": torch.randint(0, 96, (batch, length), generator=g) * valid,
        "user": torch.randint(1, U, (batch,), generator=g),
        "len": lengths,
    }
    return x, x_dict


@pytest.fixture
def model() -> PointerV45:
    torch.manual_seed(0)
    return PointerV45(
        V, U, d_model=32, nhead=4, num_layers=2, dim_feedforward=64, max_len=16
    ).eval()


def test_output_is_normalised(model: PointerV45) -> None:
    x, x_dict = make_batch()
    out = model(x, x_dict)
    assert out.shape == (5, V) and out.dtype == torch.float32
    torch.testing.assert_close(out.logsumexp(dim=1), torch.zeros(5), atol=1e-5, rtol=0)


def test_pointer_mass_only_on_history(model: PointerV45) -> None:
    x, x_dict = make_batch()
    parts = model.components(x, x_dict)
    torch.testing.assert_close(parts["pointer"].sum(dim=1), torch.ones(5))
    torch.testing.assert_close(parts["attention"].sum(dim=1), torch.ones(5))
    for b in range(x.shape[0]):
        history = set(x[b, : int(x_dict["len"][b])].tolist())
        outside = [v for v in range(V) if v not in history]
        assert parts["pointer"][b, outside].abs().max() == 0.0
        assert (parts["attention"][b, int(x_dict["len"][b]) :] == 0).all()
    # gate forced to 1: the final distribution is the pointer's
    with torch.no_grad():
        model.gate[-1].bias.fill_(100.0)
    parts = model.components(x, x_dict)
    torch.testing.assert_close(parts["log_probs"].exp(), parts["pointer"], atol=1e-6, rtol=0)


def test_padding_is_masked(model: PointerV45) -> None:
    x, x_dict = make_batch()
    reference = model(x, x_dict)
    pad = torch.arange(L).view(1, -1) >= x_dict["len"].view(-1, 1)
    noisy = {k: (v + 3 * pad if v.dim() == 2 else v) for k, v in x_dict.items()}
    torch.testing.assert_close(model(x + 5 * pad, noisy), reference)
    # extra padding columns change nothing either
    wider = {
        k: (torch.nn.functional.pad(v, (0, 4)) if v.dim() == 2 else v) for k, v in x_dict.items()
    }
    torch.testing.assert_close(
        model(torch.nn.functional.pad(x, (0, 4)), wider), reference, atol=1e-5, rtol=1e-5
    )


def test_gradients_flow() -> None:
    torch.manual_seed(0)
    model = PointerV45(V, U, d_model=32, nhead=4, num_layers=2, dim_feedforward=64, max_len=16)
    x, x_dict = make_batch(batch=16)
    loss = torch.nn.functional.nll_loss(model(x, x_dict), x[:, 0])
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    for name in (
        "loc_emb.weight",
        "pointer_query.weight",
        "pointer_key.weight",
        "position_bias",
        "gen_head.weight",
        "gate.0.weight",
        "input_proj.weight",
    ):
        assert model.get_parameter(name).grad.abs().sum() > 0, name
    assert model.loc_emb.weight.grad[0].abs().sum() == 0  # padding row


def test_lookup_is_an_embedding_lookup_with_its_gradient() -> None:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 10, (4, 7), generator=g)
    for shape in ((10, 3), (10,)):
        table = torch.randn(*shape, generator=g, requires_grad=True)
        reference = table.detach().clone().requires_grad_(True)
        weights = torch.randn(*ids.shape, *shape[1:], generator=g)
        (lookup(table, ids) * weights).sum().backward()
        expected = (
            torch.nn.functional.embedding(ids, reference) if len(shape) == 2 else reference[ids]
        )
        (expected * weights).sum().backward()
        assert torch.equal(lookup(table, ids), expected)
        torch.testing.assert_close(table.grad, reference.grad)


def test_model_equals_its_nn_embedding_formulation(monkeypatch: pytest.MonkeyPatch) -> None:
    """index_select lookups (one index_add backward) give the outputs and gradients of F.embedding."""
    x, x_dict = make_batch(batch=16)
    results = []
    for by_embedding in (False, True):
        if by_embedding:
            monkeypatch.setattr(
                pointer_v45_model,
                "lookup",
                lambda t, i: torch.nn.functional.embedding(i, t) if t.dim() == 2 else t[i],
            )
        torch.manual_seed(0)
        model = PointerV45(
            V, U, d_model=32, nhead=4, num_layers=2, dim_feedforward=64, max_len=16, dropout=0.0
        )
        out = model(x, x_dict)
        torch.nn.functional.nll_loss(out, x[:, 0]).backward()
        results.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0])
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b)


def test_small_shapes_and_autocast(model: PointerV45) -> None:
    x, x_dict = make_batch(batch=1, length=1)
    assert model(x, x_dict).shape == (1, V)
    x, x_dict = make_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, x_dict)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    torch.testing.assert_close(out.logsumexp(dim=1), torch.zeros(5), atol=1e-4, rtol=0)
    assert model.count_parameters() == sum(p.numel() for p in model.parameters())


def test_errors(model: PointerV45) -> None:
    x, x_dict = make_batch(length=17)
    with pytest.raises(ValueError, match="max_len"):
        model(x, x_dict)
    x, x_dict = make_batch()
    del x_dict["diff"]
    with pytest.raises(ValueError, match="diff"):
        model(x, x_dict)
    with pytest.raises(ValueError, match="d_model"):
        PointerV45(V, U, d_model=30)
    with pytest.raises(ValueError, match="dropout"):
        PointerV45(V, U, dropout=1.0)
