"""Ranking metrics for next-item prediction: Acc@k, MRR, NDCG@10 and weighted F1.

``RankingMetrics`` accumulates additive counters on the device of the scores (no host sync
per update); ``compute()`` syncs once. For data-parallel evaluation, all-reduce (SUM) the
vector returned by ``sums()`` across ranks and call ``RankingMetrics.compute_from_sums``.

Ties never favour the target. Every metric is its **expected value when equal scores are
ordered at random**: a target tied with ``g - 1`` other classes, below ``s`` classes, is at
each of the ranks ``s + 1 .. s + g`` with probability ``1/g``. So Acc@k counts the fraction
of those ranks that are ``<= k``, MRR averages ``1/rank`` over them, and a constant model over
C classes scores exactly chance (Acc@1 = 1/C). The F1 prediction follows the same rule: each
of ``m`` classes tied at the top is the prediction with weight ``1/m`` (docs/metrics.md says
why this rule and not the pessimistic one). Without ties everything is the plain rank.

A non-finite target score (NaN, +inf or -inf) ranks the target LAST (rank ``V``): a model
whose outputs went NaN scores 0, never 100 (see docs/metrics.md). NaN scores of other
classes count as -inf (they never outrank anything), and the F1 prediction ignores them.

Domain-neutral by default: "seen-only" accuracy is reported only when an ``unseen_id`` is
given (the GeoLife encoding uses 1); otherwise every sample counts the same.
"""

from __future__ import annotations

import torch

from trainkit._validate import check_int

__all__ = ["RankingMetrics", "target_ranks"]

# Layout of ``sums()``: these scalar counters, then the two seen counters when an
# ``unseen_id`` is given, then per-class support, predicted count and true positives
# (3 * num_classes entries).
_SCALARS = ("hits@1", "hits@5", "hits@10", "rr", "ndcg", "count")
_SEEN_SCALARS = ("hits@1_seen", "count_seen")
_TOP_K = 10  # the deepest rank any metric looks at (Acc@10, NDCG@10)


def _count_dtype(device: torch.device) -> torch.dtype:
    """float64 for exact counts, float32 where the device has no float64 (MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


def _greater_and_tied(
    scores: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: classes scoring above the target, and classes scoring equal (target included).

    A non-finite target score counts as below every other class: ``(V - 1, 1)``. NaN scores
    of other classes compare neither greater nor equal, so they count as below the target.
    """
    if not scores.is_floating_point():
        scores = scores.float()
    target_scores = scores.gather(1, targets.long().view(-1, 1))
    greater = (scores > target_scores).sum(dim=1)
    tied = (scores == target_scores).sum(dim=1)
    finite = torch.isfinite(target_scores.squeeze(1))
    greater = torch.where(finite, greater, torch.full_like(greater, scores.shape[1] - 1))
    tied = torch.where(finite, tied, torch.ones_like(tied))
    return greater, tied


def target_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Return the expected 1-based rank of each target when ties are ordered at random.

    The rank is ``1 + #(scores > target score) + #(other scores == target score) / 2``: a
    target tied with one other class at the top ranks 1.5, and a constant model over 4
    classes ranks every target 2.5. Without ties it is the plain rank.

    Args:
        scores: [N, V] scores or log-probabilities (higher is better).
        targets: [N] class indices in ``[0, V)``.

    Returns:
        [N] floating-point ranks (float64; float32 on MPS) on the scores' device; ``V`` (last)
        where the target's score is not finite, so a NaN or infinite score is never a hit.

    Raises:
        ValueError: shapes do not match.
    """
    _check(scores, targets)
    greater, tied = _greater_and_tied(scores, targets)
    dtype = _count_dtype(scores.device)
    return 1.0 + greater.to(dtype) + (tied.to(dtype) - 1.0) / 2.0


def _check(scores: torch.Tensor, targets: torch.Tensor) -> None:
    if scores.dim() != 2:
        raise ValueError(f"scores must be [N, V], got shape {tuple(scores.shape)}")
    if targets.dim() != 1 or targets.shape[0] != scores.shape[0]:
        raise ValueError(f"targets must be [N={scores.shape[0]}], got shape {tuple(targets.shape)}")


class RankingMetrics:
    """Streaming Acc@1/5/10, MRR, NDCG@10, weighted F1, and Acc@1 on seen targets if asked.

    Ties are ordered at random in expectation (see the module docstring): a constant model
    scores chance, never more.

    Args:
        num_classes: Number of classes V (columns of the scores). None: taken from the
            first ``update``. Give it explicitly under data parallelism so every rank's
            ``sums()`` has the same length even if a rank saw no batch.
        device: Device of the counters; None: the device of the first scores.
        unseen_id: The class id of targets that were not seen in training (GeoLife: 1).
            When given, ``acc@1_seen`` and ``count_seen`` are reported over the other
            targets; None (default): no class is special and they are not reported.

    Raises:
        ValueError: ``num_classes < 1`` or ``unseen_id < 0``.
    """

    def __init__(
        self,
        num_classes: int | None = None,
        device: torch.device | str | None = None,
        unseen_id: int | None = None,
    ) -> None:
        if num_classes is not None:
            num_classes = check_int("num_classes", num_classes, minimum=1)
        if unseen_id is not None:
            unseen_id = check_int("unseen_id", unseen_id, minimum=0)
        self.num_classes = num_classes
        self.unseen_id = unseen_id
        self.device = torch.device(device) if device is not None else None
        self._sums: torch.Tensor | None = None
        if num_classes is not None and self.device is not None:
            self._allocate(num_classes, self.device)

    def _scalar_names(self) -> tuple[str, ...]:
        if self.unseen_id is None:
            return _SCALARS
        return _SCALARS + _SEEN_SCALARS

    def _allocate(self, num_classes: int, device: torch.device) -> None:
        size = len(self._scalar_names()) + 3 * num_classes
        self._sums = torch.zeros(size, dtype=_count_dtype(device), device=device)
        self.num_classes = num_classes
        self.device = device

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
            seen_mask: [N] bool, True for targets seen in training; default
                ``targets != unseen_id``. Only with an ``unseen_id``.
            valid: [N] bool, False for rows that are padding (e.g. a batch padded to a
                fixed size); those rows count nowhere. Default: every row counts.

        Raises:
            ValueError: shapes do not match, V differs from ``num_classes``, or a
                ``seen_mask`` without an ``unseen_id``.
        """
        _check(scores, targets)
        if self.num_classes is not None and scores.shape[1] != self.num_classes:
            raise ValueError(
                f"scores have {scores.shape[1]} classes, expected num_classes={self.num_classes}"
            )
        if seen_mask is not None and self.unseen_id is None:
            raise ValueError(
                "seen_mask needs RankingMetrics(unseen_id=...): without it no seen-only "
                "accuracy is kept"
            )
        if self._sums is None:
            self._allocate(scores.shape[1], self.device or scores.device)
        assert self._sums is not None and self.num_classes is not None
        device = self._sums.device
        dtype = self._sums.dtype
        scores = scores.to(device)
        targets = targets.to(device).long()
        weight = torch.ones(targets.shape, dtype=dtype, device=device)
        if valid is not None:
            weight = valid.to(device=device, dtype=dtype)

        greater, tied = _greater_and_tied(scores, targets)
        first = greater.to(dtype)  # the target is at ranks first + 1 .. first + size
        size = tied.to(dtype)
        # chance that the target is at rank r, for r = 1..10: [N, 10]
        ranks = torch.arange(1, _TOP_K + 1, dtype=dtype, device=device)
        inside = (ranks > first.unsqueeze(1)) & (ranks <= (first + size).unsqueeze(1))
        at_rank = inside.to(dtype) / size.unsqueeze(1)
        hit1 = at_rank[:, 0]
        hit5 = at_rank[:, :5].sum(dim=1)
        hit10 = at_rank.sum(dim=1)
        ndcg = (at_rank / torch.log2(ranks + 1.0)).sum(dim=1)
        # E[1/rank] = (H(first + size) - H(first)) / size, with H(n) = digamma(n + 1) + const
        spread_rr = (torch.digamma(first + size + 1.0) - torch.digamma(first + 1.0)) / size
        reciprocal_rank = torch.where(size == 1, 1.0 / (first + 1.0), spread_rr)
        counters = [
            (hit1 * weight).sum(),
            (hit5 * weight).sum(),
            (hit10 * weight).sum(),
            (reciprocal_rank * weight).sum(),
            (ndcg * weight).sum(),
            weight.sum(),
        ]
        if self.unseen_id is not None:
            if seen_mask is None:
                seen_mask = targets != self.unseen_id
            seen = seen_mask.to(device).to(dtype) * weight
            counters.append((hit1 * seen).sum())
            counters.append(seen.sum())

        # F1: each of the m classes tied at the top is the prediction with weight 1/m, so the
        # target is "predicted" exactly as often as it is an Acc@1 hit. NaN never predicts.
        top_scores = torch.where(torch.isnan(scores), float("-inf"), scores)
        is_top = top_scores == top_scores.max(dim=1, keepdim=True).values
        share = weight / is_top.sum(dim=1).to(dtype)
        per_class = torch.zeros(3, self.num_classes, dtype=dtype, device=device)
        per_class[0].scatter_add_(0, targets, weight)  # support
        per_class[1] = share @ is_top.to(dtype)  # predicted count
        per_class[2].scatter_add_(0, targets, hit1 * weight)  # true positives
        self._sums += torch.cat([torch.stack(counters), per_class.view(-1)])

    def sums(self) -> torch.Tensor:
        """Return a copy of the additive counters (all-reduce with SUM across ranks).

        The layout: six scalar counters, then two seen counters when ``unseen_id`` is
        given, then ``3 * num_classes`` per-class counters.

        Raises:
            ValueError: nothing was accumulated and ``num_classes``/``device`` are unknown.
        """
        if self._sums is None:
            if self.num_classes is None:
                raise ValueError(
                    "RankingMetrics saw no batch (is the validation or test loader empty?); "
                    "to report an empty evaluation, pass num_classes to RankingMetrics"
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
            ``acc@1, acc@5, acc@10, mrr, ndcg, f1`` in percent (0 when there is nothing to
            average) and the integer ``count``; with an ``unseen_id`` also ``acc@1_seen``
            (percent) and the integer ``count_seen``. ``f1`` is sklearn's
            ``f1_score(average="weighted")`` of the top-1 predictions: per-class
            ``2TP / (support + predicted)`` weighted by support, with tied top classes
            sharing the prediction.

        Raises:
            ValueError: ``sums`` is not a 1-D vector of the layout of ``sums()``.
        """
        rest = sums.numel() - len(_SCALARS)
        if sums.dim() != 1 or rest < 3 or rest % 3 == 1:
            raise ValueError(
                f"sums must be the 1-D vector from RankingMetrics.sums(), got shape {tuple(sums.shape)}"
            )
        names = _SCALARS if rest % 3 == 0 else _SCALARS + _SEEN_SCALARS
        values = sums.detach().double().cpu()
        scalar = dict(zip(names, values[: len(names)].tolist(), strict=True))
        num_classes = (values.numel() - len(names)) // 3
        support, predicted, true_pos = values[len(names) :].view(3, num_classes)
        count = scalar["count"]

        def pct(num: float, den: float) -> float:
            return 100.0 * num / den if den > 0 else 0.0

        denom = support + predicted
        per_class_f1 = torch.where(
            denom > 0, 2.0 * true_pos / denom.clamp(min=1e-300), torch.zeros_like(denom)
        )
        weighted_f1 = float((per_class_f1 * support).sum()) / count if count > 0 else 0.0
        result: dict[str, float] = {
            "acc@1": pct(scalar["hits@1"], count),
            "acc@5": pct(scalar["hits@5"], count),
            "acc@10": pct(scalar["hits@10"], count),
            "mrr": pct(scalar["rr"], count),
            "ndcg": pct(scalar["ndcg"], count),
            "f1": 100.0 * weighted_f1,
            "count": round(count),
        }
        if "count_seen" in scalar:
            seen = scalar["count_seen"]
            result["acc@1_seen"] = pct(scalar["hits@1_seen"], seen)
            result["count_seen"] = round(seen)
        return result
