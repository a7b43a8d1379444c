"""EMA: an exponential moving average of a model's weights (docs/ema.md).

Built on :class:`torch.optim.swa_utils.AveragedModel` with
:func:`~torch.optim.swa_utils.get_ema_multi_avg_fn` (one fused ``lerp`` per device and
dtype), averaging the buffers too (``use_buffers=True``), so BatchNorm statistics follow
the averaged weights. Usable in any loop: call :meth:`EMA.update` after each optimizer
step and evaluate or save :attr:`EMA.module`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from trainkit._state import require_keys
from trainkit._validate import check_float
from trainkit.checkpoint import check_model_state

__all__ = ["EMA"]


class EMA:
    """Exponential moving average of ``model``'s parameters and buffers.

    After the first :meth:`update` the average equals the model; after each later one it is
    ``decay * average + (1 - decay) * model``.

    Args:
        model: The module being trained (pass the plain module, not a DDP wrapper).
        decay: Weight of the old average, in ``[0, 1]`` (0.999: a horizon of ~1000 steps).
        device: Where to keep the average (e.g. ``"cpu"`` to save GPU memory); ``None``
            keeps it on the model's device.

    Raises:
        ValueError: ``model`` is not an ``nn.Module`` or ``decay`` is not a number in ``[0, 1]``.
    """

    def __init__(
        self, model: nn.Module, decay: float = 0.999, *, device: str | torch.device | None = None
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.decay = check_float("decay", decay, minimum=0.0, maximum=1.0)
        self.model = model
        self.module = AveragedModel(
            model, device=device, multi_avg_fn=get_ema_multi_avg_fn(self.decay), use_buffers=True
        )
        self.module.requires_grad_(False)
        self.module.eval()

    @property
    def num_updates(self) -> int:
        """How many times :meth:`update` has run (restored by :meth:`load_state_dict`)."""
        return int(self.module.n_averaged.item())

    def update(self) -> None:
        """Fold the model's current weights into the average (call after each optimizer step)."""
        self.module.update_parameters(self.model)

    def model_state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights under the model's own keys: loadable into a fresh ``model``.

        Returns:
            A ``state_dict`` of the averaged copy (as ``model.state_dict()`` would name it).
        """
        return self.module.module.state_dict()

    def state_dict(self) -> dict[str, Any]:
        """``{"decay", "module"}``: the decay and the averaged weights with the update count.

        Returns:
            Plain values and tensors (``torch.load(weights_only=True)`` loads them).
        """
        return {"decay": self.decay, "module": self.module.state_dict()}

    def check_state_dict(self, state: Any) -> None:
        """Raise unless :meth:`load_state_dict` would accept ``state``; changes nothing.

        Args:
            state: What :meth:`state_dict` returned.

        Raises:
            ValueError: ``state`` is not an EMA state, was saved with another ``decay``, or its
                averaged weights do not fit this model (a key missing or extra, a non-tensor,
                another shape: one line naming the keys).
        """
        require_keys(state, ("decay", "module"), "EMA")
        decay = check_float("EMA state 'decay'", state["decay"], minimum=0.0, maximum=1.0)
        if decay != self.decay:
            raise ValueError(
                f"state was saved with decay={state['decay']!r}, this EMA has decay={self.decay!r}"
            )
        check_model_state(self.module, state["module"], "EMA state 'module'")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore an average saved by :meth:`state_dict`; later updates continue exactly.

        Args:
            state: What :meth:`state_dict` returned.

        Raises:
            ValueError: as :meth:`check_state_dict` (nothing is changed then).
        """
        self.check_state_dict(state)
        self.module.load_state_dict(state["module"])
