"""Ranking metrics for next-item prediction: Acc@k, MRR, NDCG@10 and weighted F1.

``RankingMetrics`` accumulates additive counters on the device of the scores (no host sync
per update); ``compute()`` syncs once. For data-parallel evaluation, all-reduce (SUM) the
vector returned by ``sums()`` across ranks and call ``RankingMetrics.compute_from_sums``.

Rank of the target = 1 + number of classes whose score is STRICTLY greater than the
target's score, so ties are resolved in the target's favour (optimistic). Acc@k counts
``rank <= k``. The top-1 prediction used for F1 is ``argmax`` (the lowest index among tied
maxima), so with ties a sample may count as an Acc@1 hit yet predict another class for F1.

A non-finite target score (NaN, +inf or -inf) ranks the target LAST (rank ``V``): a model
whose outputs went NaN scores 0, never 100 (see docs/metrics.md). NaN scores of other
classes count as -inf (they never outrank anything), and the F1 prediction ignores them.
"""

from __future__ import annotations

import torch

__all__ = ["RankingMetrics", "target_ranks"]

# Layout of ``sums()``: these scalar counters, then per-class support, predicted count and
# true positives (3 * num_classes entries).
_SCALARS = ("hits@1", "hits@5", "hits@10", "rr", "ndcg", "count", "hits@1_seen", "count_seen")
UNSEEN_ID = 1  # targets equal to this id are "unseen" (not in the training vocabulary)


def target_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Return the 1-based rank of each target, ``1 + #(scores > target score)``.

    Args:
        scores: [N, V] scores or log-probabilities (higher is better).
        targets: [N] class indices in ``[0, V)``.

    Returns:
        [N] int64 ranks on the scores' device; ``V`` (last) where the target's score is not
        finite, so a NaN or infinite score is never a hit.

    Raises:
        ValueError: shapes do not match.
    """
    _check(scores, targets)
    scores = scores.float()
    target_scores = scores.gather(1, targets.long().view(-1, 1))
    # NaN > x is False, so a NaN class never outranks the target; a NaN target is handled below
    rank = 1 + (scores > target_scores).sum(dim=1)
    return torch.where(
        torch.isfinite(target_scores.squeeze(1)), rank, torch.full_like(rank, scores.shape[1])
    )


def _check(scores: torch.Tensor, targets: torch.Tensor) -> None:
    if scores.dim() != 2:
        raise ValueError(f"scores must be [N, V], got shape {tuple(scores.shape)}")
    if targets.dim() != 1 or targets.shape[0] != scores.shape[0]:
        raise ValueError(f"targets must be [N={scores.shape[0]}], got shape {tuple(targets.shape)}")


class RankingMetrics:
    """Streaming Acc@1/5/10, MRR, NDCG@10, weighted F1 and Acc@1 on seen targets.

    Args:
        num_classes: Number of classes V (columns of the scores). None: taken from the
            first ``update``. Give it explicitly under data parallelism so every rank's
            ``sums()`` has the same length even if a rank saw no batch.
        device: Device of the counters; None: the device of the first scores.

    Raises:
        ValueError: ``num_classes < 1``.
    """

    def __init__(
        self, num_classes: int | None = None, device: torch.device | str | None = None
    ) -> None:
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.device = torch.device(device) if device is not None else None
        self._sums: torch.Tensor | None = None
        if num_classes is not None and self.device is not None:
            self._allocate(num_classes, self.device)

    def _allocate(self, num_classes: int, device: torch.device) -> None:
        dtype = torch.float32 if device.type == "mps" else torch.float64  # exact integer counts
        self._sums = torch.zeros(len(_SCALARS) + 3 * num_classes, dtype=dtype, device=device)
        self.num_classes, self.device = num_classes, device

    def reset(self) -> None:
        """Zero every counter."""
        if self._sums is not None:
            self._sums.zero_()

    @torch.no_grad()
    def update(
        self,
        scores: torch.Tensor,
        targets: torch.Tensor,
        seen_mask: torch.Tensor | None = None,
        valid: torch.Tensor | None = None,
    ) -> None:
        """Accumulate one batch (no host sync).

        Args:
            scores: [N, V] scores or log-probabilities.
            targets: [N] class indices.
            seen_mask: [N] bool, True for targets seen in training; default ``targets != 1``.
            valid: [N] bool, False for rows that are padding (e.g. a batch padded to a
                fixed size); those rows count nowhere. Default: every row counts.

        Raises:
            ValueError: shapes do not match, or V differs from ``num_classes``.
        """
        _check(scores, targets)
        if self.num_classes is not None and scores.shape[1] != self.num_classes:
            raise ValueError(
                f"scores have {scores.shape[1]} classes, expected num_classes={self.num_classes}"
            )
        if self._sums is None:
            self._allocate(scores.shape[1], self.device or scores.device)
        assert self._sums is not None and self.num_classes is not None
        scores, targets = scores.to(self._sums.device), targets.to(self._sums.device).long()
        if seen_mask is None:
            seen_mask = targets != UNSEEN_ID
        dtype = self._sums.dtype
        weight = torch.ones(targets.shape, dtype=dtype, device=self._sums.device)
        if valid is not None:
            weight = valid.to(device=self._sums.device, dtype=dtype)
        seen = seen_mask.to(self._sums.device).to(dtype) * weight

        rank = target_ranks(scores, targets).to(dtype)
        hit1 = (rank <= 1).to(dtype) * weight
        ndcg = torch.where(rank <= 10, 1.0 / torch.log2(rank + 1.0), torch.zeros_like(rank))
        scalars = torch.stack(
            [
                hit1.sum(),
                ((rank <= 5).to(dtype) * weight).sum(),
                ((rank <= 10).to(dtype) * weight).sum(),
                (weight / rank).sum(),
                (ndcg * weight).sum(),
                weight.sum(),
                (hit1 * seen).sum(),
                seen.sum(),
            ]
        )
        # per-class counts by scatter_add (CUDA bincount and boolean indexing would sync)
        # argmax treats NaN as the maximum: count NaN as -inf for the prediction, and a target
        # whose own score is not finite is never a true positive
        predicted = torch.nan_to_num(scores.float(), nan=float("-inf")).argmax(dim=1)
        target_finite = torch.isfinite(scores.gather(1, targets.view(-1, 1)).squeeze(1))
        correct = (predicted == targets) & target_finite
        per_class = torch.zeros(3, self.num_classes, dtype=dtype, device=rank.device)
        per_class[0].scatter_add_(0, targets, weight)  # support
        per_class[1].scatter_add_(0, predicted, weight)  # predicted count
        per_class[2].scatter_add_(0, targets, correct.to(dtype) * weight)  # true positives
        self._sums += torch.cat([scalars, per_class.view(-1)])

    def sums(self) -> torch.Tensor:
        """Return a copy of the additive counters (all-reduce with SUM across ranks).

        Raises:
            ValueError: nothing was accumulated and ``num_classes``/``device`` are unknown.
        """
        if self._sums is None:
            if self.num_classes is None:
                raise ValueError(
                    "no update yet and num_classes unknown: pass num_classes to RankingMetrics"
                )
            self._allocate(self.num_classes, self.device or torch.device("cpu"))
        assert self._sums is not None
        return self._sums.clone()

    def compute(self) -> dict[str, float]:
        """Return the metrics of everything accumulated (see ``compute_from_sums``)."""
        return self.compute_from_sums(self.sums())

    @staticmethod
    def compute_from_sums(sums: torch.Tensor) -> dict[str, float]:
        """Turn (possibly all-reduced) counters from ``sums()`` into metrics.

        Returns:
            ``acc@1, acc@5, acc@10, mrr, ndcg, f1, acc@1_seen`` in percent (0 when there is
            nothing to average), and the integers ``count`` and ``count_seen``.
            ``f1`` is sklearn's ``f1_score(average="weighted")`` of the top-1 predictions:
            per-class ``2TP / (support + predicted)`` weighted by support.

        Raises:
            ValueError: ``sums`` is not a 1-D vector of the layout of ``sums()``.
        """
        n = sums.numel() - len(_SCALARS)
        if sums.dim() != 1 or n < 3 or n % 3:
            raise ValueError(
                f"sums must be the 1-D vector from RankingMetrics.sums(), got shape {tuple(sums.shape)}"
            )
        values = sums.detach().double().cpu()
        scalar = dict(zip(_SCALARS, values[: len(_SCALARS)].tolist()))
        support, predicted, true_pos = values[len(_SCALARS) :].view(3, n // 3)
        count, seen = scalar["count"], scalar["count_seen"]

        def pct(num: float, den: float) -> float:
            return 100.0 * num / den if den > 0 else 0.0

        denom = support + predicted
        per_class_f1 = torch.where(
            denom > 0, 2.0 * true_pos / denom.clamp(min=1.0), torch.zeros_like(denom)
        )
        weighted_f1 = float((per_class_f1 * support).sum()) / count if count > 0 else 0.0
        return {
            "acc@1": pct(scalar["hits@1"], count),
            "acc@5": pct(scalar["hits@5"], count),
            "acc@10": pct(scalar["hits@10"], count),
            "mrr": pct(scalar["rr"], count),
            "ndcg": pct(scalar["ndcg"], count),
            "f1": 100.0 * weighted_f1,
            "acc@1_seen": pct(scalar["hits@1_seen"], seen),
            "count": int(count),
            "count_seen": int(seen),
        }
