"""The seed's two optimizers with their exact defaults: Adagrad (original) and AdamW (proposed)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

__all__ = ["OPTIMIZER_DEFAULTS", "build_optimizer", "check_optimizer_state"]

#: Seed defaults per optimizer name.
OPTIMIZER_DEFAULTS: dict[str, dict[str, Any]] = {
    # tf.train.AdagradOptimizer(0.15, initial_accumulator_value=0.1)
    "adagrad": {"lr": 0.15, "initial_accumulator_value": 0.1},
    # optim.AdamW(lr=3e-4, weight_decay=0.015, betas=(0.9, 0.98), eps=1e-9)
    "adamw": {"lr": 3e-4, "betas": (0.9, 0.98), "eps": 1e-9, "weight_decay": 0.015},
}
_CLASSES: dict[str, type[torch.optim.Optimizer]] = {
    "adagrad": torch.optim.Adagrad,
    "adamw": torch.optim.AdamW,
}
_NO_DECAY_MODULES = (
    nn.Embedding,
    nn.EmbeddingBag,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.modules.batchnorm._NormBase,
)


def _split_decay(model_or_params: nn.Module | Iterable[Any]) -> list[dict[str, Any]]:
    """Two param groups: decayed weights, and biases/norms/embeddings with weight_decay 0."""
    if isinstance(model_or_params, nn.Module):
        exempt: set[int] = set()
        for module in model_or_params.modules():
            if isinstance(module, _NO_DECAY_MODULES):
                exempt.update(id(p) for p in module.parameters(recurse=False))
        params = [p for p in model_or_params.parameters() if p.requires_grad]
    else:
        params = list(model_or_params)
        if params and not isinstance(params[0], torch.Tensor):
            raise ValueError(
                "decay_exempt=True needs a model or an iterable of tensors, not param groups"
            )
        exempt = set()
    decay = [p for p in params if p.dim() >= 2 and id(p) not in exempt]
    no_decay = [p for p in params if p.dim() < 2 or id(p) in exempt]
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(
    params_or_model: nn.Module | Iterable[Any],
    name: str,
    *,
    decay_exempt: bool = False,
    **overrides: Any,
) -> torch.optim.Optimizer:
    """Build the seed's Adagrad or AdamW with its defaults; keyword overrides win.

    ``"adagrad"``: ``torch.optim.Adagrad(lr=0.15, initial_accumulator_value=0.1)``.
    ``"adamw"``: ``torch.optim.AdamW(lr=3e-4, betas=(0.9, 0.98), eps=1e-9, weight_decay=0.015)``.
    Seed-faithful by default: weight decay on every parameter. When every parameter is on a
    CUDA device and no kernel choice is given, AdamW uses its fused kernel.

    Args:
        params_or_model: An ``nn.Module``, an iterable of parameters, or param groups.
        name: ``"adagrad"`` or ``"adamw"`` (case-insensitive).
        decay_exempt: Exempt biases, norm weights and embeddings from weight decay.
        **overrides: Any optimizer argument, e.g. ``lr=6.5e-4``.

    Returns:
        The optimizer.

    Raises:
        ValueError: unknown ``name``, no parameters, or ``decay_exempt=True`` with param groups.
    """
    key = str(name).lower()
    if key not in _CLASSES:
        raise ValueError(f"unknown optimizer name {name!r}; choose one of {sorted(_CLASSES)}")
    if decay_exempt:
        params: Any = _split_decay(params_or_model)
    elif isinstance(params_or_model, nn.Module):
        params = [p for p in params_or_model.parameters() if p.requires_grad]
    else:
        params = list(params_or_model)
    count = sum(len(g["params"]) if isinstance(g, dict) else 1 for g in params)
    if count == 0:
        raise ValueError("params_or_model has no parameters to optimize")
    kwargs = {**OPTIMIZER_DEFAULTS[key], **overrides}
    if (
        key == "adamw"
        and "fused" not in kwargs
        and "foreach" not in kwargs
        and _all_on_cuda(params)
    ):
        kwargs["fused"] = True
    return _CLASSES[key](params, **kwargs)


def _all_on_cuda(params: list[Any]) -> bool:
    tensors: list[torch.Tensor] = []
    for item in params:
        if isinstance(item, dict):
            tensors.extend(item["params"])
        elif isinstance(item, torch.Tensor):
            tensors.append(item)
    return bool(tensors) and all(t.is_cuda for t in tensors)


# settings that a torch version or a device may add to a param group without changing what it is
_INCIDENTAL = frozenset(
    {"foreach", "fused", "capturable", "differentiable", "maximize", "decoupled_weight_decay"}
)


def check_optimizer_state(optimizer: torch.optim.Optimizer, state: Any) -> None:
    """Refuse an optimizer ``state_dict`` of another optimizer type or parameter layout.

    torch's own ``load_state_dict`` accepts an Adagrad state into AdamW and fails later
    (``KeyError: 'betas'`` at the first step); this check fails first, in one line.

    Args:
        optimizer: The optimizer that will load ``state``.
        state: A saved ``optimizer.state_dict()``.

    Raises:
        ValueError: ``state`` is not an optimizer state, or its param groups differ in number,
            size or settings from ``optimizer``'s.
    """
    name = type(optimizer).__name__
    groups = state.get("param_groups") if isinstance(state, dict) and "state" in state else None
    if not isinstance(groups, list) or not all(isinstance(group, dict) for group in groups):
        raise ValueError(
            f"not a {name} optimizer state_dict: it lacks 'state' or a list of 'param_groups'"
        )
    if len(groups) != len(optimizer.param_groups):
        raise ValueError(
            f"optimizer state has {len(groups)} param groups, this {name} has {len(optimizer.param_groups)}"
        )
    for index, (saved, mine) in enumerate(zip(groups, optimizer.param_groups)):
        missing = sorted(set(mine) - set(saved) - _INCIDENTAL)
        extra = sorted(set(saved) - set(mine) - _INCIDENTAL)
        if missing or extra:
            raise ValueError(
                f"optimizer state is not a {name} state (another optimizer or recipe?): param group "
                f"{index} lacks {missing or 'nothing'} and has unknown {extra or 'nothing'}"
            )
        if len(saved.get("params", ())) != len(mine["params"]):
            raise ValueError(
                f"optimizer state's param group {index} has {len(saved.get('params', ()))} parameters, "
                f"this {name}'s has {len(mine['params'])}"
            )
