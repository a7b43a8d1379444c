"""trainkit.metrics against hand-computed values and a brute-force reference for ties."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trainkit.metrics import RankingMetrics, target_ranks

V = 12
LOG2_3 = math.log2(3)


def row(values: dict[int, float], fill: float = -1.0) -> list[float]:
    out = [fill] * V
    for k, v in values.items():
        out[k] = v
    return out


# Batch 1 (targets, ranks, top-1 predictions worked out by hand). A target tied with g - 1
# other classes below s classes is at each rank s+1 .. s+g with chance 1/g.
#   r0 target 1: 1 has the top score                        -> rank 1,  pred 1
#   r1 target 2: only class 1 scores higher                 -> rank 2,  pred 1
#   r2 target 3: classes 1, 2, 3 tie at the top             -> ranks 1, 2, 3 each with chance 1/3
#                                                              (expected rank 2), pred 1, 2, 3 at 1/3
#   r3 target 0: scores 0..11, every other class is higher  -> rank 12, pred 11 (past NDCG@10)
#   r4 target 4: classes 5..9 (five) score higher           -> rank 6,  pred 5..9 at 1/5 each
SCORES_1 = torch.tensor(
    [
        row({0: 0, 1: 5, 2: 3, 3: 1, 4: 2}),
        row({0: 0, 1: 5, 2: 3, 3: 1, 4: 2}),
        row({0: 0, 1: 1, 2: 1, 3: 1, 4: 0}),
        [float(i) for i in range(V)],
        row({4: 5, 5: 10, 6: 10, 7: 10, 8: 10, 9: 10}, fill=0.0),
    ]
)
TARGETS_1 = torch.tensor([1, 2, 3, 0, 4])
# Batch 2: r5 target 1 -> rank 1, pred 1;  r6 target 5 -> rank 1, pred 5.
SCORES_2 = torch.tensor([row({1: 3.0}), row({5: 2.0})])
TARGETS_2 = torch.tensor([1, 5])


def test_target_ranks_count_ties_half() -> None:
    # r2's target ties two other classes at the top: ranks 1, 2, 3 equally likely -> 2
    assert target_ranks(SCORES_1, TARGETS_1).tolist() == [1.0, 2.0, 2.0, 12.0, 6.0]
    assert target_ranks(SCORES_2, TARGETS_2).tolist() == [1.0, 1.0]
    assert target_ranks(torch.tensor([[0.0, 0.0, -1.0]]), torch.tensor([1])).tolist() == [1.5]


def test_hand_values_one_batch() -> None:
    m = RankingMetrics(num_classes=V, unseen_id=1)
    m.update(SCORES_1, TARGETS_1)
    r = m.compute()
    assert r["count"] == 5
    assert r["acc@1"] == pytest.approx(100 * (1 + 1 / 3) / 5)  # r0, and r2 one time in three
    assert r["acc@5"] == pytest.approx(60.0)  # r0, r1, r2
    assert r["acc@10"] == pytest.approx(80.0)  # all but rank 12
    r2_rr = (1 + 1 / 2 + 1 / 3) / 3
    assert r["mrr"] == pytest.approx(100 * (1 + 1 / 2 + r2_rr + 1 / 12 + 1 / 6) / 5)
    r2_ndcg = (1 + 1 / LOG2_3 + 1 / 2) / 3
    assert r["ndcg"] == pytest.approx(100 * (1 + 1 / LOG2_3 + r2_ndcg + 0 + 1 / math.log2(7)) / 5)
    # "seen" = target != 1: r1..r4, of which r2 is a top-1 hit one time in three
    assert r["count_seen"] == 4 and r["acc@1_seen"] == pytest.approx(100 * (1 / 3) / 4)
    # F1: predicted counts class 1: 1 + 1 + 1/3, classes 2 and 3: 1/3, 5..9: 1/5, 11: 1.
    # class 1: TP 1, support 1 -> 2 / (1 + 7/3) = 0.6; class 3: TP 1/3 -> (2/3) / (4/3) = 0.5;
    # classes 0, 2, 4: 0 -> weighted (0.6 + 0.5) / 5 = 0.22
    assert r["f1"] == pytest.approx(22.0)


def test_streaming_weighted_f1() -> None:
    m = RankingMetrics(unseen_id=1)
    m.update(SCORES_1, TARGETS_1)
    m.update(SCORES_2, TARGETS_2)
    r = m.compute()
    assert r["count"] == 7 and r["acc@1"] == pytest.approx(100 * (1 + 1 / 3 + 2) / 7)
    #   class 1: support 2, predicted 7/3 + 1, TP 2   -> F1 4 / (16/3) = 3/4
    #   class 5: support 1, predicted 1/5 + 1, TP 1   -> F1 2 / (11/5) = 10/11
    #   class 3: support 1, predicted 1/3, TP 1/3     -> F1 1/2
    #   classes 0, 2, 4: F1 0; classes 6..9, 11: support 0 (weight 0)
    assert r["f1"] == pytest.approx(100 * (2 * 3 / 4 + 10 / 11 + 1 / 2) / 7)
    assert r["acc@1_seen"] == pytest.approx(100 * (1 / 3 + 1) / 5)  # seen r1..r4, r6


def test_seen_mask_overrides_default() -> None:
    m = RankingMetrics(V, unseen_id=1)
    m.update(SCORES_1, TARGETS_1, seen_mask=torch.tensor([True, False, False, False, False]))
    r = m.compute()
    assert r["count_seen"] == 1 and r["acc@1_seen"] == pytest.approx(100.0)


def test_no_unseen_class_by_default() -> None:
    """Domain-neutral default: class 1 is an ordinary class and there is no seen-only metric."""
    m = RankingMetrics(V)
    targets = torch.tensor([1, 1, 2])
    m.update(torch.eye(V)[targets], targets)
    r = m.compute()
    assert r["count"] == 3 and r["acc@1"] == 100.0
    assert "acc@1_seen" not in r and "count_seen" not in r
    with pytest.raises(ValueError, match="seen_mask needs RankingMetrics\\(unseen_id=...\\)"):
        m.update(SCORES_2, TARGETS_2, seen_mask=torch.tensor([True, True]))
    with pytest.raises(ValueError, match="unseen_id must be an int >= 0, got -1"):
        RankingMetrics(V, unseen_id=-1)


@pytest.mark.parametrize("unseen_id", [None, 1])
def test_sums_merge_like_all_reduce(unseen_id: int | None) -> None:
    a = RankingMetrics(V, unseen_id=unseen_id)
    b = RankingMetrics(V, unseen_id=unseen_id)
    whole = RankingMetrics(V, unseen_id=unseen_id)
    a.update(SCORES_1, TARGETS_1)
    b.update(SCORES_2, TARGETS_2)
    whole.update(torch.cat([SCORES_1, SCORES_2]), torch.cat([TARGETS_1, TARGETS_2]))
    merged = RankingMetrics.compute_from_sums(a.sums() + b.sums())
    assert merged == pytest.approx(whole.compute())
    assert ("acc@1_seen" in merged) == (unseen_id is not None)


def test_empty_and_reset() -> None:
    m = RankingMetrics(V)
    r = m.compute()
    assert r["count"] == 0 and r["acc@1"] == 0.0 and r["f1"] == 0.0
    m.update(SCORES_1, TARGETS_1)
    m.reset()
    assert m.compute()["count"] == 0
    with pytest.raises(ValueError, match="num_classes"):
        RankingMetrics().sums()


def test_low_precision_scores_and_no_grad() -> None:
    m = RankingMetrics(V)
    scores = torch.log_softmax(SCORES_1, dim=1).to(torch.bfloat16).requires_grad_()
    m.update(scores, TARGETS_1)
    assert m.compute()["acc@1"] == pytest.approx(100 * (1 + 1 / 3) / 5)


def test_shape_errors() -> None:
    m = RankingMetrics(V)
    with pytest.raises(ValueError, match="scores must be"):
        m.update(torch.zeros(V), torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match="targets must be"):
        m.update(torch.zeros(2, V), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="expected num_classes"):
        m.update(torch.zeros(2, V + 1), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="num_classes"):
        RankingMetrics(0)
    with pytest.raises(ValueError, match="sums must be"):
        RankingMetrics.compute_from_sums(torch.zeros(5))
    with pytest.raises(ValueError, match="sums must be"):
        RankingMetrics.compute_from_sums(torch.zeros(6 + 3 + 1))  # neither layout


def test_valid_mask_drops_padding_rows() -> None:
    padded_scores = torch.cat([SCORES_1, torch.zeros(3, V)])
    padded_targets = torch.cat([TARGETS_1, torch.zeros(3, dtype=torch.long)])
    valid = torch.arange(8) < 5
    m, ref = RankingMetrics(V), RankingMetrics(V)
    m.update(padded_scores, padded_targets, valid=valid)
    ref.update(SCORES_1, TARGETS_1)
    assert m.compute() == pytest.approx(ref.compute())


# --------------------------------------------------------------------------------- ties


@pytest.mark.parametrize("num_classes", [2, 4, 7])
def test_a_constant_model_scores_chance(num_classes: int) -> None:
    """Every score equal: Acc@1 is 1/C and F1 is chance, never 100 %."""
    targets = torch.arange(num_classes).repeat(3)
    scores = torch.zeros(targets.shape[0], num_classes)
    m = RankingMetrics(num_classes)
    m.update(scores, targets)
    r = m.compute()
    assert r["acc@1"] == pytest.approx(100 / num_classes)
    assert r["acc@5"] == pytest.approx(100 * min(5, num_classes) / num_classes)
    harmonic = sum(1 / k for k in range(1, num_classes + 1))
    assert r["mrr"] == pytest.approx(100 * harmonic / num_classes)
    # each class: support 3, predicted 3 (1/C of every row), TP 3/C -> F1 1/C
    assert r["f1"] == pytest.approx(100 / num_classes)
    assert target_ranks(scores, targets).tolist() == [(num_classes + 1) / 2] * len(targets)


def test_bf16_ties_do_not_favour_the_target() -> None:
    """Two classes 0.1 % apart tie in bf16: each target is a hit one time in two, as in fp32
    on average over both targets, where the old optimistic rule gave bf16 100 %."""
    fp32 = torch.tensor([[1.0, 1.001, 0.0, 0.0], [1.0, 1.001, 0.0, 0.0]])
    targets = torch.tensor([0, 1])
    bf16 = fp32.to(torch.bfloat16)
    assert bf16[0, 0] == bf16[0, 1]  # the premise: bf16 cannot tell them apart
    results = {}
    for name, scores in (("fp32", fp32), ("bf16", bf16)):
        m = RankingMetrics(4)
        m.update(scores, targets)
        results[name] = m.compute()
    assert results["fp32"]["acc@1"] == pytest.approx(50.0)  # target 1 is a hit, target 0 not
    assert results["bf16"]["acc@1"] == pytest.approx(50.0)  # each is a hit half the time
    assert results["bf16"]["mrr"] == pytest.approx(results["fp32"]["mrr"])
    assert target_ranks(bf16, targets).tolist() == [1.5, 1.5]


def brute_force(scores: list[list[float]], targets: list[int]) -> dict[str, float]:
    """Average the metrics over every order of the classes used to break ties.

    Each permutation of the class ids is a tie-breaking order: sort by score (NaN as -inf),
    then by that order; a non-finite target score ranks last and is never a true positive.
    """
    num_classes = len(scores[0])
    orders = list(itertools.permutations(range(num_classes)))
    keys = ("acc@1", "acc@5", "acc@10", "mrr", "ndcg")
    totals = dict.fromkeys(keys, 0.0)
    support = [0.0] * num_classes
    predicted = [0.0] * num_classes
    true_pos = [0.0] * num_classes
    for values, target in zip(scores, targets, strict=True):
        sortable = [-math.inf if math.isnan(v) else v for v in values]
        support[target] += 1
        for tie_break in orders:
            ranked = sorted(range(num_classes), key=lambda c: (-sortable[c], tie_break[c]))
            finite = math.isfinite(values[target])
            rank = ranked.index(target) + 1 if finite else num_classes
            share = 1 / len(orders)
            totals["acc@1"] += share * (rank <= 1)
            totals["acc@5"] += share * (rank <= 5)
            totals["acc@10"] += share * (rank <= 10)
            totals["mrr"] += share / rank
            totals["ndcg"] += share * (1 / math.log2(rank + 1) if rank <= 10 else 0.0)
            predicted[ranked[0]] += share
            true_pos[target] += share * (ranked[0] == target and finite)
    count = len(targets)
    result = {key: 100 * totals[key] / count for key in keys}
    f1 = 0.0
    for c in range(num_classes):
        if support[c] + predicted[c] > 0:
            f1 += support[c] * 2 * true_pos[c] / (support[c] + predicted[c])
    result["f1"] = 100 * f1 / count
    return result


def brute_force_ranks(scores: list[list[float]], targets: list[int]) -> list[float]:
    """The mean rank of each target over every tie-breaking order (last if not finite)."""
    num_classes = len(scores[0])
    orders = list(itertools.permutations(range(num_classes)))
    means = []
    for values, target in zip(scores, targets, strict=True):
        if not math.isfinite(values[target]):
            means.append(float(num_classes))
            continue
        sortable = [-math.inf if math.isnan(v) else v for v in values]
        total = 0
        for tie_break in orders:
            ranked = sorted(range(num_classes), key=lambda c: (-sortable[c], tie_break[c]))
            total += ranked.index(target) + 1
        means.append(total / len(orders))
    return means


TIE_PRONE = st.sampled_from([-1.0, 0.0, 0.0, 0.5, 1.0, 1.001, math.nan, math.inf, -math.inf])


@st.composite
def tie_batches(draw: st.DrawFn) -> tuple[list[list[float]], list[int]]:
    num_classes = draw(st.integers(min_value=2, max_value=5))
    rows = draw(st.integers(min_value=1, max_value=5))
    scores = [[draw(TIE_PRONE) for _ in range(num_classes)] for _ in range(rows)]
    targets = [draw(st.integers(min_value=0, max_value=num_classes - 1)) for _ in range(rows)]
    return scores, targets


@given(tie_batches(), st.sampled_from([torch.float32, torch.bfloat16, torch.float64]))
@settings(max_examples=80, deadline=None)
def test_metrics_equal_the_average_over_every_tie_break(
    batch: tuple[list[list[float]], list[int]], dtype: torch.dtype
) -> None:
    values, target_list = batch
    scores = torch.tensor(values).to(dtype)  # bf16 turns 1.001 into 1.0: one more tie
    targets = torch.tensor(target_list)
    m = RankingMetrics(scores.shape[1])
    m.update(scores, targets)
    result = m.compute()
    expected = brute_force(scores.double().tolist(), target_list)
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, rel=1e-9, abs=1e-9), key
    assert result["count"] == len(target_list)
    ranks = target_ranks(scores, targets).tolist()
    assert ranks == pytest.approx(brute_force_ranks(scores.double().tolist(), target_list))


# ---------------------------------------------------------------------- non-finite scores


def test_all_nan_scores_score_zero_not_hundred() -> None:
    scores = torch.full((6, V), float("nan"))
    targets = torch.arange(1, 7)
    assert target_ranks(scores, targets).tolist() == [V] * 6  # ranked last, never first
    m = RankingMetrics(num_classes=V, unseen_id=1)
    m.update(scores, targets)
    r = m.compute()
    for key in ("acc@1", "acc@5", "acc@10", "f1", "acc@1_seen"):
        assert r[key] == 0.0, key
    assert r["mrr"] == pytest.approx(100 / V) and r["ndcg"] == 0.0  # rank V = 12 is past NDCG@10
    # the same counters all-reduced (here: summed by hand over two "ranks") give the same result
    assert RankingMetrics.compute_from_sums(m.sums() + m.sums())["acc@1"] == 0.0


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_target_score_is_never_a_hit(bad: float) -> None:
    scores = torch.tensor([row({1: bad}), row({2: 1.0})])
    targets = torch.tensor([1, 2])
    assert target_ranks(scores, targets).tolist() == [V, 1]
    m = RankingMetrics(num_classes=V)
    m.update(scores, targets)
    assert m.compute()["acc@1"] == pytest.approx(50.0)


def test_nan_in_other_classes_does_not_outrank_or_predict() -> None:
    scores = torch.tensor([row({0: float("nan"), 3: 2.0})])  # target 3 is the best finite score
    m = RankingMetrics(num_classes=V)
    m.update(scores, torch.tensor([3]))
    r = m.compute()
    assert r["acc@1"] == 100.0 and r["f1"] == 100.0  # argmax would have picked the NaN class 0
