"""The seed's losses. All inputs are log-probabilities; padding is masked, never averaged in.

- ``masked_nll`` and ``coverage_loss``: the original pointer-generator's sequence losses
  (See et al. 2017, ``_mask_and_avg`` and ``_coverage_loss``): a mean over each sequence's
  valid steps, then a mean over the batch. NOT a per-token mean.
- ``LabelSmoothedNLLLoss``: the proposed pipeline's ``nn.CrossEntropyLoss(ignore_index=0,
  label_smoothing=0.03)`` applied to a model that already returns log-probabilities,
  computed directly on them (no second log-softmax).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["LabelSmoothedNLLLoss", "coverage_loss", "mask_and_avg", "masked_nll"]


def _check_targets(targets: torch.Tensor, valid: torch.Tensor, num_classes: int, what: str) -> None:
    """Refuse a target outside ``[0, num_classes)`` at a valid position (docs/losses.md).

    On CPU the check is nearly free (the tensors are already on the host) and raises
    ValueError naming the value. On an accelerator (or inside ``torch.compile``) a ValueError would need a host sync every call, so
    the check runs on the device (``torch._assert_async``): no sync, no graph break under
    capture, and a bad target fails at the next sync as a device-side assertion.
    """
    bad = valid & ((targets < 0) | (targets >= num_classes))
    if targets.device.type == "cpu" and not torch.compiler.is_compiling():
        if bool(bad.any()):
            where = tuple(int(i) for i in bad.nonzero()[0])
            raise ValueError(
                f"{what}: targets must be in [0, {num_classes}) at valid positions, got {int(targets[where])} "
                f"at position {list(where)}"
            )
    else:
        torch._assert_async(
            ~bad.any(),
            f"{what}: a target at a valid position is outside [0, {num_classes}) (docs/losses.md)",
        )


def mask_and_avg(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """See et al.'s ``_mask_and_avg``: mean over each sequence's valid steps, then over the batch.

    A sequence with no valid step is left out of the batch mean (See et al. would divide
    by zero there).

    Args:
        values: Per-step values, shape ``[B, T]``.
        mask: ``[B, T]``, nonzero (or True) at valid steps.

    Returns:
        A scalar tensor.

    Raises:
        ValueError: the shapes differ or are not 2-D.
    """
    if values.dim() != 2 or values.shape != mask.shape:
        raise ValueError(
            f"values and mask must both be [B, T]; got {tuple(values.shape)} and {tuple(mask.shape)}"
        )
    valid = mask != 0
    weights = mask.to(values.dtype)
    per_step = torch.where(valid, values, values.new_zeros(())) * weights
    lengths = weights.sum(dim=1)
    has_steps = lengths > 0
    per_sequence = per_step.sum(dim=1) / lengths.clamp(min=torch.finfo(values.dtype).tiny)
    per_sequence = torch.where(has_steps, per_sequence, per_sequence.new_zeros(()))
    return per_sequence.sum() / has_steps.sum().clamp(min=1).to(values.dtype)


def masked_nll(log_probs: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of the targets, averaged per sequence then per batch.

    Args:
        log_probs: ``[B, T, V]`` log-probabilities (e.g. ``log(final_dist)``).
        targets: ``[B, T]`` target ids (any id at padded steps; it is ignored).
        mask: ``[B, T]``, nonzero at valid decoder steps (the decoder padding mask).

    Returns:
        Scalar loss: ``mean_b( sum_t mask*(-log p(target)) / sum_t mask )``.

    Raises:
        ValueError: shapes do not match, or a target at a valid step is outside ``[0, V)``
            (CPU tensors; on an accelerator the same check is a device-side assertion that
            fails at the next sync, so that no host sync is added per call).
    """
    if log_probs.dim() != 3 or targets.shape != log_probs.shape[:2]:
        raise ValueError(
            f"log_probs must be [B, T, V] and targets [B, T]; got {tuple(log_probs.shape)} and {tuple(targets.shape)}"
        )
    _check_targets(targets, mask != 0, log_probs.shape[-1], "masked_nll")
    # padded steps may hold any id: clamp them so that gather stays in bounds
    safe_targets = targets.clamp(0, log_probs.shape[-1] - 1).long()
    gold = log_probs.gather(-1, safe_targets.unsqueeze(-1)).squeeze(-1)
    return mask_and_avg(-gold, mask)


def coverage_loss(attn: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """See et al.'s coverage loss: attention that repeats earlier attention is penalised.

    Coverage starts at zero; step ``t`` costs ``sum_l min(attn_t, coverage_t)``, then
    ``coverage += attn_t``. Per-step costs are averaged like :func:`masked_nll`. The
    original total loss is ``nll + cov_loss_wt * coverage`` with ``cov_loss_wt = 1.0``.

    Args:
        attn: ``[B, T, L]`` attention distributions over the ``L`` source positions.
        mask: ``[B, T]``, nonzero at valid decoder steps.

    Returns:
        Scalar coverage loss.

    Raises:
        ValueError: shapes do not match.
    """
    if attn.dim() != 3 or mask.shape != attn.shape[:2]:
        raise ValueError(
            f"attn must be [B, T, L] and mask [B, T]; got {tuple(attn.shape)} and {tuple(mask.shape)}"
        )
    # coverage before step t = attn_0 + ... + attn_{t-1}: a cumulative sum shifted by one step
    coverage = torch.cumsum(attn, dim=1)
    coverage = torch.cat([torch.zeros_like(attn[:, :1]), coverage[:, :-1]], dim=1)
    per_step = torch.minimum(attn, coverage).sum(dim=-1)
    return mask_and_avg(per_step, mask)


class LabelSmoothedNLLLoss(nn.Module):
    """Label-smoothed NLL on LOG-PROBABILITIES: the seed's ``CrossEntropyLoss(ignore_index=0,
    label_smoothing=0.03)`` on a model that returns ``log(final_probs + 1e-10)``.

    The input must be log-probabilities (``log_softmax`` output). Logits or probabilities
    give a wrong loss without an error unless ``from_logits=True`` (logits) or
    ``check_log_probs=True`` (refuses input whose ``logsumexp`` is not 0) is passed.

    For each non-ignored target ``y`` over ``V`` classes:
    ``loss = (1 - s) * (-log_probs[y]) + s * mean_v(-log_probs[v])``, then the mean over
    non-ignored targets (``reduction="mean"``), exactly as ``nn.CrossEntropyLoss`` computes
    it when its input is already normalised. No log-softmax is re-applied.

    Args:
        smoothing: Label smoothing ``s`` in ``[0, 1)`` (seed: 0.03).
        ignore_index: Target id that contributes nothing (seed: 0, the padding id).
        reduction: ``"mean"`` (over non-ignored targets; 0 when there are none),
            ``"sum"`` or ``"none"`` (per target, 0 at ignored ones).
        from_logits: The input is raw logits: apply ``log_softmax`` first (then the loss
            is exactly ``nn.CrossEntropyLoss(label_smoothing=s)`` of the logits).
        check_log_probs: Verify on every call that each non-ignored row's ``logsumexp``
            is 0 (within 1e-3, or 5e-2 for fp16/bf16 input) and raise otherwise. Costs a
            reduction over ``V`` and one host sync per call; meant for debugging.

    Raises:
        ValueError: ``smoothing`` outside ``[0, 1)``, unknown ``reduction``, or both
            ``from_logits`` and ``check_log_probs``.
    """

    def __init__(
        self,
        smoothing: float = 0.03,
        ignore_index: int = 0,
        reduction: str = "mean",
        *,
        from_logits: bool = False,
        check_log_probs: bool = False,
    ) -> None:
        super().__init__()
        if not (0.0 <= float(smoothing) < 1.0):
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing!r}")
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        if from_logits and check_log_probs:
            raise ValueError(
                "from_logits=True and check_log_probs=True contradict each other: pick one"
            )
        self.smoothing = float(smoothing)
        self.ignore_index = int(ignore_index)
        self.reduction = reduction
        self.from_logits = bool(from_logits)
        self.check_log_probs = bool(check_log_probs)

    def forward(self, log_probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Compute the loss.

        Computed in float32 (fp16/bf16 input is upcast) or float64 (kept as float64).

        Args:
            log_probs: ``[..., V]`` log-probabilities (logits with ``from_logits=True``).
            targets: ``[...]`` class ids (the leading shapes match).

        Returns:
            The reduced loss (a scalar), or per-target losses for ``reduction="none"``.

        Raises:
            ValueError: shapes do not match; a non-ignored target is outside ``[0, V)``
                (CPU; a device-side assertion on accelerators, see :func:`masked_nll`);
                with ``check_log_probs``, input that is not log-probabilities.
        """
        if log_probs.shape[:-1] != targets.shape:
            raise ValueError(
                f"log_probs must be [..., V] with targets [...]; got {tuple(log_probs.shape)} and {tuple(targets.shape)}"
            )
        low_precision = log_probs.dtype in (torch.float16, torch.bfloat16)
        log_probs = log_probs.to(torch.promote_types(log_probs.dtype, torch.float32))
        keep = targets != self.ignore_index
        _check_targets(targets, keep, log_probs.shape[-1], "LabelSmoothedNLLLoss")
        if self.from_logits:
            log_probs = torch.log_softmax(log_probs, dim=-1)
        elif self.check_log_probs:
            self._verify_log_probs(log_probs, keep, 5e-2 if low_precision else 1e-3)
        safe_targets = torch.where(keep, targets, torch.zeros_like(targets)).long()
        nll = -log_probs.gather(-1, safe_targets.unsqueeze(-1)).squeeze(-1)
        smooth = -log_probs.mean(dim=-1)
        per_target = (1.0 - self.smoothing) * nll + self.smoothing * smooth
        per_target = torch.where(keep, per_target, per_target.new_zeros(()))
        if self.reduction == "none":
            return per_target
        total = per_target.sum()
        if self.reduction == "sum":
            return total
        return total / keep.sum().clamp(min=1).to(total.dtype)

    @staticmethod
    def _verify_log_probs(log_probs: torch.Tensor, keep: torch.Tensor, tolerance: float) -> None:
        error = torch.logsumexp(log_probs.detach(), dim=-1).abs()
        error = torch.where(keep, error, error.new_zeros(()))
        worst = float(error.max()) if error.numel() else 0.0
        if not worst <= tolerance:  # also catches NaN
            raise ValueError(
                f"LabelSmoothedNLLLoss expects log-probabilities (logsumexp over the last dim = 0), "
                f"but a row has |logsumexp| = {worst:.4g}; pass log_softmax output, or logits with "
                "from_logits=True"
            )

    def extra_repr(self) -> str:
        return (
            f"smoothing={self.smoothing}, ignore_index={self.ignore_index}, reduction={self.reduction!r}, "
            f"from_logits={self.from_logits}, check_log_probs={self.check_log_probs}"
        )
