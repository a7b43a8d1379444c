"""trainkit.metrics against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from trainkit.metrics import RankingMetrics, target_ranks

V = 12


def row(values: dict[int, float], fill: float = -1.0) -> list[float]:
    out = [fill] * V
    for k, v in values.items():
        out[k] = v
    return out


# Batch 1 (targets, ranks, top-1 predictions worked out by hand):
#   r0 target 1: 1 has the top score                        -> rank 1,  pred 1
#   r1 target 2: only class 1 scores higher                 -> rank 2,  pred 1
#   r2 target 3: classes 1, 2, 3 tie at the top             -> rank 1 (ties favour the target), pred 1 (argmax)
#   r3 target 0: scores 0..11, every other class is higher  -> rank 12, pred 11 (past NDCG@10)
#   r4 target 4: classes 5..9 (five) score higher           -> rank 6,  pred 5
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


def test_target_ranks_and_ties() -> None:
    assert target_ranks(SCORES_1, TARGETS_1).tolist() == [1, 2, 1, 12, 6]
    assert target_ranks(SCORES_2, TARGETS_2).tolist() == [1, 1]


def test_hand_values_one_batch() -> None:
    m = RankingMetrics(num_classes=V)
    m.update(SCORES_1, TARGETS_1)
    r = m.compute()
    assert r["count"] == 5
    assert r["acc@1"] == pytest.approx(40.0)  # r0, r2
    assert r["acc@5"] == pytest.approx(60.0)  # ranks 1, 2, 1
    assert r["acc@10"] == pytest.approx(80.0)  # all but rank 12
    assert r["mrr"] == pytest.approx(100 * (1 + 1 / 2 + 1 + 1 / 12 + 1 / 6) / 5)  # 55.0
    assert r["ndcg"] == pytest.approx(100 * (1 + 1 / math.log2(3) + 1 + 0 + 1 / math.log2(7)) / 5)
    # "seen" = target != 1: r1..r4, of which only r2 is a top-1 hit
    assert r["count_seen"] == 4 and r["acc@1_seen"] == pytest.approx(25.0)
    # F1: preds [1,1,1,11,5] vs targets [1,2,3,0,4]: class 1 P=1/3 R=1 F1=0.5 (support 1),
    # classes 0,2,3,4 F1=0 -> weighted (1*0.5)/5 = 0.1
    assert r["f1"] == pytest.approx(10.0)


def test_streaming_weighted_f1() -> None:
    m = RankingMetrics()
    m.update(SCORES_1, TARGETS_1)
    m.update(SCORES_2, TARGETS_2)
    r = m.compute()
    assert r["count"] == 7 and r["acc@1"] == pytest.approx(100 * 4 / 7)
    # preds [1,1,1,11,5,1,5], targets [1,2,3,0,4,1,5]:
    #   class 1: support 2, predicted 4, TP 2 -> P 1/2, R 1, F1 2/3
    #   class 5: support 1, predicted 2, TP 1 -> P 1/2, R 1, F1 2/3
    #   classes 0, 2, 3, 4: F1 0; class 11: support 0 (weight 0)
    #   weighted = (2 * 2/3 + 1 * 2/3) / 7 = 2/7   (sklearn f1_score average="weighted")
    assert r["f1"] == pytest.approx(100 * 2 / 7)
    assert r["acc@1_seen"] == pytest.approx(100 * 2 / 5)  # seen r1,r2,r3,r4,r6; hits r2, r6


def test_seen_mask_overrides_default() -> None:
    m = RankingMetrics(V)
    m.update(SCORES_1, TARGETS_1, seen_mask=torch.tensor([True, False, False, False, False]))
    r = m.compute()
    assert r["count_seen"] == 1 and r["acc@1_seen"] == pytest.approx(100.0)


def test_sums_merge_like_all_reduce() -> None:
    a, b, whole = RankingMetrics(V), RankingMetrics(V), RankingMetrics(V)
    a.update(SCORES_1, TARGETS_1)
    b.update(SCORES_2, TARGETS_2)
    whole.update(torch.cat([SCORES_1, SCORES_2]), torch.cat([TARGETS_1, TARGETS_2]))
    merged = RankingMetrics.compute_from_sums(a.sums() + b.sums())
    assert merged == pytest.approx(whole.compute())


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
    assert m.compute()["acc@1"] == pytest.approx(40.0)


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


def test_valid_mask_drops_padding_rows() -> None:
    padded_scores = torch.cat([SCORES_1, torch.zeros(3, V)])
    padded_targets = torch.cat([TARGETS_1, torch.zeros(3, dtype=torch.long)])
    valid = torch.arange(8) < 5
    m, ref = RankingMetrics(V), RankingMetrics(V)
    m.update(padded_scores, padded_targets, valid=valid)
    ref.update(SCORES_1, TARGETS_1)
    assert m.compute() == pytest.approx(ref.compute())


# ---------------------------------------------------------------------- non-finite scores


def test_all_nan_scores_score_zero_not_hundred() -> None:
    scores = torch.full((6, V), float("nan"))
    targets = torch.arange(1, 7)
    assert target_ranks(scores, targets).tolist() == [V] * 6  # ranked last, never first
    m = RankingMetrics(num_classes=V)
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
