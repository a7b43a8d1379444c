"""Model weights as a safetensors file, for sharing a trained model (docs/export.md).

A safetensors file holds tensors and string metadata only: loading it runs no pickle, so it
is safe to load from anyone. It holds the weights, not the training state; resume from the
``weights_only`` checkpoints of :class:`~trainkit.CheckpointManager` instead. Needs the
``safetensors`` extra (``pip install "trainkit-pt[safetensors]"``), imported on first use.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainkit.atomic import atomic_write
from trainkit.checkpoint import load_model_state

__all__ = ["load_safetensors", "save_safetensors"]

_MISSING = (
    "safetensors export needs the safetensors package: pip install 'trainkit-pt[safetensors]'"
)


def _safetensors_torch() -> Any:
    try:
        import safetensors.torch
    except ImportError as exc:
        raise ImportError(_MISSING) from exc
    return safetensors.torch


def save_safetensors(
    model_or_state: nn.Module | Mapping[str, torch.Tensor],
    path: str | os.PathLike[str],
    *,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write a model's weights (or a ``state_dict``) to ``path`` as safetensors, atomically.

    Tensors are copied to the CPU as contiguous, unshared tensors (tied weights are stored
    once per name), so any ``state_dict`` can be written.

    Args:
        model_or_state: A module (its ``state_dict()`` is written) or a mapping of names to tensors,
            e.g. ``EMA.model_state_dict()`` or a checkpoint's ``"model"`` entry.
        path: The file to write (``.safetensors`` by convention); its directory must exist.
        metadata: Extra string key/values stored in the header (``"format": "pt"`` is always set).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: ``model_or_state`` is neither a module nor a mapping of str to tensors, or
            ``metadata`` holds a non-string key or value.
        ImportError: the ``safetensors`` package is not installed.
    """
    if isinstance(model_or_state, nn.Module):
        state: Mapping[str, Any] = model_or_state.state_dict()
    elif isinstance(model_or_state, Mapping):
        state = model_or_state
    else:
        raise ValueError(
            f"model_or_state must be an nn.Module or a state_dict, got {type(model_or_state).__name__}"
        )
    bad = [
        repr(key)
        for key, value in state.items()
        if not isinstance(key, str) or not isinstance(value, torch.Tensor)
    ]
    if bad:
        raise ValueError(
            f"model_or_state must map names to tensors; not tensors: {', '.join(bad[:5])}"
        )
    header = {"format": "pt", **(metadata or {})}
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in header.items()):
        raise ValueError(f"metadata must map str to str, got {metadata!r}")
    st = _safetensors_torch()
    tensors = {key: value.detach().to("cpu").contiguous().clone() for key, value in state.items()}
    return atomic_write(path, st.save(tensors, metadata=header))


def load_safetensors(
    path: str | os.PathLike[str],
    model: nn.Module | None = None,
    *,
    device: str | torch.device = "cpu",
) -> dict[str, torch.Tensor]:
    """Read a safetensors file (no pickle), and load it into ``model`` when one is given.

    Args:
        path: A file written by :func:`save_safetensors` (or any safetensors file).
        model: A module to load the weights into, strictly (every key, every shape).
        device: Where to put the tensors.

    Returns:
        The tensors by name.

    Raises:
        ValueError: the file's keys or shapes do not match ``model`` (one line naming them).
        FileNotFoundError: ``path`` does not exist.
        ImportError: the ``safetensors`` package is not installed.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"no safetensors file at {os.fspath(path)!r}")
    st = _safetensors_torch()
    tensors: dict[str, torch.Tensor] = st.load_file(os.fspath(path), device=str(device))
    if model is not None:
        load_model_state(model, tensors)
    return tensors
