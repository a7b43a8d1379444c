"""The seed's losses against hand-computed references."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from trainkit import LabelSmoothedNLLLoss, coverage_loss, masked_nll

# --------------------------------------------------------------------------- masked_nll

# Probability tables for a batch of 2 sequences, 3 decoder steps, vocabulary of 4.
PROBS = [
    [[0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25], [0.7, 0.1, 0.1, 0.1]],
    [[0.5, 0.2, 0.2, 0.1], [0.4, 0.3, 0.2, 0.1], [0.05, 0.05, 0.1, 0.8]],
]
TARGETS = [[3, 0, 1], [0, 2, 3]]
MASK = [[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]]  # second sequence has one valid step


def _inputs(dtype=torch.float64):
    log_probs = torch.tensor(PROBS, dtype=dtype).log()
    return log_probs, torch.tensor(TARGETS), torch.tensor(MASK, dtype=dtype)


def test_masked_nll_hand_value_is_per_sequence_mean():
    log_probs, targets, mask = _inputs()
    # sequence 0: -(log 0.4 + log 0.25 + log 0.1) / 3; sequence 1: -log 0.5 / 1
    seq0 = -(math.log(0.4) + math.log(0.25) + math.log(0.1)) / 3
    seq1 = -math.log(0.5)
    want = (seq0 + seq1) / 2
    got = masked_nll(log_probs, targets, mask)
    assert got.dim() == 0
    assert got.item() == pytest.approx(want, rel=1e-12)
    # (0.9162907 + 1.3862944 + 2.3025851) / 3 = 1.5350567; (1.5350567 + 0.6931472) / 2
    assert got.item() == pytest.approx(1.1141020, rel=1e-7)

    # a per-token mean over the four valid tokens is a different number
    per_token = -(math.log(0.4) + math.log(0.25) + math.log(0.1) + math.log(0.5)) / 4
    assert abs(per_token - want) > 1e-3
    assert got.item() != pytest.approx(per_token, rel=1e-6)


def _loop_masked_nll(log_probs, targets, mask):
    per_seq = []
    for b in range(log_probs.shape[0]):
        total, n = 0.0, 0.0
        for t in range(log_probs.shape[1]):
            if mask[b, t] != 0:
                total += -float(log_probs[b, t, targets[b, t]]) * float(mask[b, t])
                n += float(mask[b, t])
        per_seq.append(total / n)
    return sum(per_seq) / len(per_seq)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(min_value=1, max_value=5),
    st.integers(min_value=1, max_value=6),
    st.integers(min_value=2, max_value=7),
    st.integers(min_value=0, max_value=2**31 - 1),
)
def test_masked_nll_matches_loop_reference(batch, steps, vocab, seed):
    g = torch.Generator().manual_seed(seed)
    log_probs = torch.randn(batch, steps, vocab, generator=g, dtype=torch.float64).log_softmax(-1)
    targets = torch.randint(0, vocab, (batch, steps), generator=g)
    lengths = torch.randint(1, steps + 1, (batch,), generator=g)
    mask = (torch.arange(steps)[None, :] < lengths[:, None]).to(torch.float64)
    got = masked_nll(log_probs, targets, mask).item()
    assert got == pytest.approx(_loop_masked_nll(log_probs, targets, mask), rel=1e-12)


def test_masked_nll_ignores_padding_content():
    log_probs, targets, mask = _inputs()
    base = masked_nll(log_probs, targets, mask)
    garbage = log_probs.clone()
    garbage[1, 1:] = -1e4  # padded steps of sequence 1
    garbage[1, 2, 0] = -math.inf  # log(0) at a padded step, as log_softmax can give
    other_targets = targets.clone()
    other_targets[1, 1:] = torch.tensor([3, 0])
    got = masked_nll(garbage, other_targets, mask)
    assert torch.isfinite(got)
    assert got.item() == pytest.approx(base.item(), rel=1e-12)


def test_masked_nll_gradient_flows_only_to_valid_gold_entries():
    log_probs, targets, mask = _inputs()
    log_probs.requires_grad_(True)
    masked_nll(log_probs, targets, mask).backward()
    grad = log_probs.grad
    assert torch.isfinite(grad).all()
    # d loss / d log_prob[b, t, target] = -1 / (len_b * B); everything else 0
    want = torch.zeros_like(grad)
    for t in range(3):
        want[0, t, TARGETS[0][t]] = -1 / (3 * 2)
    want[1, 0, TARGETS[1][0]] = -1 / (1 * 2)
    assert torch.allclose(grad, want, rtol=0, atol=1e-15)


# --------------------------------------------------------------------------- coverage_loss

ATTN = [
    [[0.5, 0.3, 0.2], [0.2, 0.2, 0.6], [0.1, 0.1, 0.8]],
    [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.3, 0.3, 0.4]],
]
COV_MASK = [[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]


def test_coverage_loss_hand_value():
    attn = torch.tensor(ATTN, dtype=torch.float64)
    mask = torch.tensor(COV_MASK, dtype=torch.float64)
    # sequence 0: step 0 costs 0 (coverage starts at zero);
    #   step 1: coverage (.5,.3,.2) -> min with (.2,.2,.6) = .2+.2+.2 = .6
    #   step 2: coverage (.7,.5,.8) -> min with (.1,.1,.8) = .1+.1+.8 = 1.0
    #   mean over 3 valid steps = 1.6 / 3
    # sequence 1: step 0 costs 0; step 1: coverage (1,0,0) -> min with (1,0,0) = 1
    #   step 2 is padding; mean over 2 valid steps = 0.5
    want = (1.6 / 3 + 0.5) / 2
    got = coverage_loss(attn, mask)
    assert got.dim() == 0
    assert got.item() == pytest.approx(want, rel=1e-12)
    assert got.item() == pytest.approx(0.5166666666666667, rel=1e-12)


def _loop_coverage(attn, mask):
    per_seq = []
    for b in range(attn.shape[0]):
        coverage = [0.0] * attn.shape[2]
        total, n = 0.0, 0.0
        for t in range(attn.shape[1]):
            cost = sum(min(float(attn[b, t, j]), coverage[j]) for j in range(attn.shape[2]))
            if mask[b, t] != 0:
                total += cost * float(mask[b, t])
                n += float(mask[b, t])
            coverage = [c + float(a) for c, a in zip(coverage, attn[b, t])]
        per_seq.append(total / n)
    return sum(per_seq) / len(per_seq)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(min_value=1, max_value=4),
    st.integers(min_value=1, max_value=6),
    st.integers(min_value=1, max_value=6),
    st.integers(min_value=0, max_value=2**31 - 1),
)
def test_coverage_loss_matches_loop_reference(batch, steps, src_len, seed):
    g = torch.Generator().manual_seed(seed)
    attn = torch.randn(batch, steps, src_len, generator=g, dtype=torch.float64).softmax(-1)
    lengths = torch.randint(1, steps + 1, (batch,), generator=g)
    mask = (torch.arange(steps)[None, :] < lengths[:, None]).to(torch.float64)
    got = coverage_loss(attn, mask).item()
    assert got == pytest.approx(_loop_coverage(attn, mask), rel=1e-12, abs=1e-15)


def test_coverage_loss_ignores_padded_steps():
    attn = torch.tensor(ATTN, dtype=torch.float64)
    mask = torch.tensor(COV_MASK, dtype=torch.float64)
    base = coverage_loss(attn, mask).item()
    changed = attn.clone()
    changed[1, 2] = torch.tensor([0.9, 0.05, 0.05])  # the padded step of sequence 1
    assert coverage_loss(changed, mask).item() == pytest.approx(base, rel=1e-12)


def test_total_loss_nll_plus_coverage_and_gradients():
    from trainkit import recipes

    cov_loss_wt = recipes.original().cov_loss_wt
    assert cov_loss_wt == 1.0
    log_probs, targets, mask = _inputs()
    log_probs.requires_grad_(True)
    attn_logits = torch.tensor(ATTN, dtype=torch.float64).log().requires_grad_(True)
    attn = attn_logits.softmax(-1)
    nll = masked_nll(log_probs, targets, mask)
    cov = coverage_loss(attn, mask)
    total = nll + cov_loss_wt * cov
    # nll as in test_masked_nll_hand_value_is_per_sequence_mean; coverage of sequence 0 is
    # 1.6 / 3 (see test_coverage_loss_hand_value), sequence 1 has one valid step costing 0
    want_nll = (-(math.log(0.4) + math.log(0.25) + math.log(0.1)) / 3 - math.log(0.5)) / 2
    assert total.item() == pytest.approx(want_nll + 1.0 * (1.6 / 3 + 0.0) / 2, rel=1e-12)
    total.backward()
    assert log_probs.grad is not None and torch.isfinite(log_probs.grad).all()
    assert attn_logits.grad is not None and torch.isfinite(attn_logits.grad).all()
    assert attn_logits.grad.abs().sum() > 0


# --------------------------------------------------------------------------- LabelSmoothedNLLLoss


def test_label_smoothed_defaults():
    loss = LabelSmoothedNLLLoss()
    assert loss.smoothing == 0.03
    assert loss.ignore_index == 0


def test_label_smoothed_hand_value():
    probs = torch.tensor([[0.1, 0.6, 0.3], [0.2, 0.2, 0.6], [0.5, 0.25, 0.25]], dtype=torch.float64)
    targets = torch.tensor([1, 0, 2])  # the middle row is padding (ignore_index 0)
    eps = 0.03
    row0 = (1 - eps) * -math.log(0.6) + eps * -(math.log(0.1) + math.log(0.6) + math.log(0.3)) / 3
    row2 = (1 - eps) * -math.log(0.25) + eps * -(math.log(0.5) + 2 * math.log(0.25)) / 3
    want = (row0 + row2) / 2
    got = LabelSmoothedNLLLoss(smoothing=0.03, ignore_index=0)(probs.log(), targets)
    assert got.item() == pytest.approx(want, rel=1e-6)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(min_value=1, max_value=16),
    st.integers(min_value=2, max_value=50),
    st.sampled_from([0.0, 0.03, 0.1, 0.5]),
    st.integers(min_value=0, max_value=2**31 - 1),
)
def test_label_smoothed_equals_cross_entropy_on_log_probs(batch, vocab, smoothing, seed):
    g = torch.Generator().manual_seed(seed)
    log_probs = (3 * torch.randn(batch, vocab, generator=g)).log_softmax(-1)
    targets = torch.randint(0, vocab, (batch,), generator=g)
    targets[0] = 1 + int(torch.randint(0, vocab - 1, (1,), generator=g))  # at least one real target
    ours = LabelSmoothedNLLLoss(smoothing=smoothing, ignore_index=0)(log_probs, targets)
    seed_ce = nn.CrossEntropyLoss(ignore_index=0, label_smoothing=smoothing)(log_probs, targets)
    assert ours.dim() == 0
    assert torch.allclose(ours.double(), seed_ce.double(), rtol=1e-5, atol=1e-6)


def test_label_smoothed_equals_seed_criterion_at_seed_settings():
    g = torch.Generator().manual_seed(7)
    log_probs = torch.randn(128, 300, generator=g).log_softmax(-1)
    targets = torch.randint(0, 300, (128,), generator=g)
    targets[:10] = 0
    ours = LabelSmoothedNLLLoss()(log_probs, targets)
    seed_ce = nn.CrossEntropyLoss(ignore_index=0, label_smoothing=0.03)(log_probs, targets)
    assert torch.allclose(ours, seed_ce, rtol=1e-5, atol=1e-6)


def test_label_smoothed_ignores_padding_targets_and_gradients_flow():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(6, 9, generator=g, requires_grad=True)
    targets = torch.tensor([4, 0, 2, 0, 8, 1])
    loss_fn = LabelSmoothedNLLLoss()
    loss = loss_fn(logits.log_softmax(-1), targets)
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    assert logits.grad[[0, 2, 4, 5]].abs().sum() > 0
    assert torch.equal(logits.grad[[1, 3]], torch.zeros(2, 9))

    # rows whose target is padding do not change the value, whatever they hold
    other = logits.detach().log_softmax(-1).clone()
    other[1] = torch.randn(9).log_softmax(-1)
    other[3] = -1e4
    assert loss_fn(other, targets).item() == pytest.approx(loss.item(), rel=1e-6)
    # and the value is the mean over the four real targets only
    real = loss_fn(logits.detach().log_softmax(-1)[[0, 2, 4, 5]], targets[[0, 2, 4, 5]])
    assert real.item() == pytest.approx(loss.item(), rel=1e-6)


def test_label_smoothed_does_not_renormalise():
    # Unnormalised input (like log(p + 1e-10) with sum p < 1): the loss uses the values as
    # given; CrossEntropyLoss would log-softmax them again.
    log_probs = torch.tensor([[math.log(0.25), math.log(0.25), math.log(0.25)]])
    targets = torch.tensor([1])
    got = LabelSmoothedNLLLoss(smoothing=0.03)(log_probs, targets).item()
    assert got == pytest.approx(math.log(4), rel=1e-6)  # -log 0.25, no log-softmax
    ce = nn.CrossEntropyLoss(ignore_index=0, label_smoothing=0.03)(log_probs, targets).item()
    assert ce == pytest.approx(math.log(3), rel=1e-6)  # re-normalised: a different number


# --------------------------------------------------------------------------- bad input is refused


def test_masked_nll_refuses_out_of_range_targets_at_valid_steps():
    log_probs, targets, mask = _inputs()  # V = 4
    bad = targets.clone()
    bad[0, 2] = 7  # a valid step: it used to be scored against class 3
    with pytest.raises(ValueError, match=r"got 7 at position \[0, 2\]"):
        masked_nll(log_probs, bad, mask)
    bad[0, 2] = -1
    with pytest.raises(ValueError, match="got -1"):
        masked_nll(log_probs, bad, mask)


def test_masked_nll_accepts_anything_at_masked_steps():
    log_probs, targets, mask = _inputs()
    padded = targets.clone()
    padded[1, 1:] = torch.tensor([10**9, -5])  # both steps are padding (mask 0)
    assert torch.equal(masked_nll(log_probs, padded, mask), masked_nll(log_probs, targets, mask))


def test_label_smoothed_refuses_out_of_range_targets_but_not_ignored_ones():
    log_probs = torch.randn(3, 5).log_softmax(-1)
    with pytest.raises(ValueError, match="got 5 at position"):
        LabelSmoothedNLLLoss()(log_probs, torch.tensor([1, 5, 2]))
    loss = LabelSmoothedNLLLoss(ignore_index=-100)(log_probs, torch.tensor([1, -100, 2]))
    assert torch.isfinite(loss)


def test_label_smoothed_keeps_float64_and_upcasts_half_precision():
    g = torch.Generator().manual_seed(0)
    log_probs = torch.randn(64, 1000, generator=g, dtype=torch.float64).log_softmax(-1)
    targets = torch.randint(1, 1000, (64,), generator=g)
    ours = LabelSmoothedNLLLoss()(log_probs, targets)
    reference = nn.CrossEntropyLoss(ignore_index=0, label_smoothing=0.03)(log_probs, targets)
    assert ours.dtype == torch.float64
    assert abs(ours.item() - reference.item()) < 1e-13  # float32 would be off by ~1e-7
    assert LabelSmoothedNLLLoss()(log_probs.to(torch.bfloat16), targets).dtype == torch.float32


def test_label_smoothed_from_logits_equals_cross_entropy_of_logits():
    g = torch.Generator().manual_seed(1)
    logits = 4 * torch.randn(32, 20, generator=g)
    targets = torch.randint(0, 20, (32,), generator=g)
    ours = LabelSmoothedNLLLoss(from_logits=True)(logits, targets)
    reference = nn.CrossEntropyLoss(ignore_index=0, label_smoothing=0.03)(logits, targets)
    assert torch.allclose(ours, reference, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["logits", "probabilities"])
def test_label_smoothed_check_log_probs_refuses_other_input(kind):
    g = torch.Generator().manual_seed(2)
    logits = 4 * torch.randn(8, 10, generator=g)
    targets = torch.randint(1, 10, (8,), generator=g)
    given = logits if kind == "logits" else logits.softmax(-1)
    with pytest.raises(ValueError, match="expects log-probabilities"):
        LabelSmoothedNLLLoss(check_log_probs=True)(given, targets)
    checked = LabelSmoothedNLLLoss(check_log_probs=True)(logits.log_softmax(-1), targets)
    assert torch.equal(checked, LabelSmoothedNLLLoss()(logits.log_softmax(-1), targets))
    seed_style = torch.log(logits.softmax(-1) + 1e-10)  # the seed's log(p + 1e-10) passes
    LabelSmoothedNLLLoss(check_log_probs=True)(seed_style.to(torch.bfloat16), targets)


def test_label_smoothed_from_logits_and_check_contradict():
    with pytest.raises(ValueError, match="from_logits"):
        LabelSmoothedNLLLoss(from_logits=True, check_log_probs=True)
