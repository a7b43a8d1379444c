"""Adagrad's update without a host sync, so that a CUDA graph can capture it.

torch's foreach Adagrad computes each step's learning rate on the host,
``-lr / (1 + (step.item() - 1) * lr_decay)``, and its fused kernel runs on CUDA only from
torch 2.13 on (2.11 refuses ``fused=True`` for CUDA parameters). :func:`adagrad_step` is the
same update as torch's foreach ``_multi_tensor_adagrad``, op for op, with the step counters
and the learning rate as device tensors: ``AMPStep.update`` runs it instead of
``optimizer.step()`` for a ``torch.optim.Adagrad`` that is not fused, so the original
recipe's step (Adagrad 0.15, accumulator 0.1) is captured like AdamW's. The optimizer keeps
torch's state layout (``sum``, ``step``), so its ``state_dict`` loads into a plain
``torch.optim.Adagrad`` and back.
"""

from __future__ import annotations

import torch

__all__ = ["adagrad_step"]


@torch.no_grad()
def adagrad_step(optimizer: torch.optim.Adagrad, skip: torch.Tensor | None = None) -> None:
    """Apply one Adagrad update to every parameter with a gradient, without a host sync.

    Per group: ``step += 1``; ``g = -grad`` if ``maximize``; ``g += weight_decay * p``;
    ``sum += g * g``; ``p += (-lr / (1 + (step - 1) * lr_decay)) * g / (sqrt(sum) + eps)``,
    computed with the foreach ops of torch's own implementation: bit-identical to it on CPU
    when ``lr_decay`` is 0 (the seed's setting); with a decay, torch computes the decayed LR
    from a float LR in float64 on the host, and this from the LR tensor on the device.
    The group's ``lr`` may be a float or a 0-d tensor on the parameters' device (what
    ``make_capturable`` leaves); state ``step`` tensors must be on that device for capture.

    Args:
        optimizer: A ``torch.optim.Adagrad``.
        skip: A 0-d bool tensor on the parameters' device; where True, parameters, sums
            and step counters keep their values (the device-side skip of a non-finite
            step, as a fused optimizer's ``found_inf``). None: always update.

    Raises:
        ValueError: ``optimizer`` is not an Adagrad, or a gradient is sparse.
    """
    if not isinstance(optimizer, torch.optim.Adagrad):
        raise ValueError(f"optimizer must be a torch.optim.Adagrad, got {type(optimizer).__name__}")
    for group in optimizer.param_groups:
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            continue
        grads: list[torch.Tensor] = [p.grad for p in params if p.grad is not None]
        if any(g.is_sparse for g in grads):
            raise ValueError(
                "adagrad_step does not take sparse gradients (torch's Adagrad does, eagerly)"
            )
        sums = [optimizer.state[p]["sum"] for p in params]
        steps = [optimizer.state[p]["step"] for p in params]
        lr, lr_decay, weight_decay, eps = (
            group["lr"],
            group["lr_decay"],
            group["weight_decay"],
            group["eps"],
        )
        if group.get("maximize", False):
            grads = list(torch._foreach_neg(grads))
        if skip is not None:  # keep the old values, restored below where ``skip`` holds
            kept = [t.clone() for t in params + sums + steps]
        torch._foreach_add_(steps, 1)
        if weight_decay != 0:
            grads = list(torch._foreach_add(grads, params, alpha=weight_decay))
        torch._foreach_addcmul_(sums, grads, grads, value=1)
        std = torch._foreach_sqrt(sums)
        torch._foreach_add_(std, eps)
        numerator: list[torch.Tensor]
        if lr_decay == 0:
            numerator = list(torch._foreach_mul(grads, -lr))  # -lr: a Python float or a 0-d tensor
        else:
            numerator = [g * (-lr / (1 + (step - 1) * lr_decay)) for g, step in zip(grads, steps)]
        torch._foreach_addcdiv_(params, numerator, std)
        if skip is not None:
            for tensor, old in zip(params + sums + steps, kept):
                tensor.copy_(torch.where(skip, old, tensor))
