"""One optimizer step under mixed precision, in one call (timm's ``NativeScaler`` idea).

``AMPStep`` does what the seed's ``train_epoch`` spells out in ten lines: backward (scaled
for fp16), ``unscale_``, ``clip_grad_norm_``, the optimizer step through the GradScaler,
``update`` and ``zero_grad(set_to_none=True)``. It returns the pre-clip gradient norm as a
tensor (no host sync forced) and whether the scaler skipped the update.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["AMPStep", "StepInfo"]

_PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class StepInfo:
    """What one :meth:`AMPStep.step` did.

    Attributes:
        grad_norm: Total gradient norm before clipping (a 0-d tensor on the parameters'
            device; reading it as a float forces a host sync, so do that sparingly).
        found_inf: 0-d tensor, nonzero when the GradScaler found inf/NaN gradients and
            skipped the update; None when no scaler is in use (fp32/bf16).
    """

    grad_norm: torch.Tensor
    found_inf: torch.Tensor | None = None

    @property
    def skipped(self) -> bool:
        """Whether the optimizer update was skipped (always False without a scaler)."""
        return bool(self.found_inf is not None and self.found_inf.item() != 0)


def _resolve_precision(precision: str, device_type: str) -> str:
    if precision != "auto":
        return precision
    if device_type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


class AMPStep:
    """Backward + unscale + clip + step + update + zero_grad, for fp32, bf16 or fp16.

    Usage::

        amp = AMPStep(optimizer, precision="auto", max_grad_norm=0.8)
        with amp.autocast():
            loss = criterion(model(x), y)
        info = amp.step(loss)

    Args:
        optimizer: The optimizer to step.
        precision: ``"fp32"``, ``"bf16"``, ``"fp16"`` or ``"auto"`` (bf16 on a CUDA device
            that supports it, fp32 otherwise). Only fp16 uses a GradScaler.
        max_grad_norm: Clip the global gradient norm to this value (seed: 0.8 proposed,
            2.0 original); None disables clipping (the norm is still reported).
        device_type: ``"cuda"`` or ``"cpu"``; default: the device of the first parameter.

    Raises:
        ValueError: unknown ``precision``, ``max_grad_norm <= 0``, an optimizer without
            parameters, or fp16 requested where no GradScaler exists for the device.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        precision: str = "auto",
        max_grad_norm: float | None = None,
        device_type: str | None = None,
    ) -> None:
        if precision not in _PRECISIONS:
            raise ValueError(f"precision must be one of {_PRECISIONS}, got {precision!r}")
        if max_grad_norm is not None and not (float(max_grad_norm) > 0 and float(max_grad_norm) < float("inf")):
            raise ValueError(f"max_grad_norm must be a finite number > 0 or None, got {max_grad_norm!r}")
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        if not self.params:
            raise ValueError("optimizer has no parameters")
        self.optimizer = optimizer
        self.device_type = device_type or self.params[0].device.type
        self.precision = _resolve_precision(precision, self.device_type)
        self.max_grad_norm = None if max_grad_norm is None else float(max_grad_norm)
        self.dtype = _DTYPES.get(self.precision, torch.float32)
        self.scaler: torch.amp.GradScaler | None = None
        if self.precision == "fp16":
            try:
                self.scaler = torch.amp.GradScaler(self.device_type)
            except Exception as exc:  # pragma: no cover - depends on the torch build
                raise ValueError(f"precision='fp16' needs a GradScaler for device {self.device_type!r}: {exc}") from exc

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """Autocast to the step's precision (a no-op for fp32)."""
        with torch.autocast(self.device_type, dtype=self.dtype, enabled=self.precision != "fp32"):
            yield

    def step(self, loss: torch.Tensor) -> StepInfo:
        """Backpropagate ``loss`` and update the parameters.

        Args:
            loss: A scalar loss computed under :meth:`autocast`.

        Returns:
            A :class:`StepInfo` with the pre-clip gradient norm and the skip flag.

        Raises:
            ValueError: ``loss`` is not a scalar tensor.
        """
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            raise ValueError(f"loss must be a scalar tensor, got {type(loss).__name__} {getattr(loss, 'shape', '')}")
        scaler = self.scaler
        if scaler is None:
            loss.backward()
        else:
            scaler.scale(loss).backward()
            scaler.unscale_(self.optimizer)
        grad_norm = self._clip_or_measure()
        found_inf: torch.Tensor | None = None
        if scaler is None:
            self.optimizer.step()
        else:
            found = scaler._found_inf_per_device(self.optimizer)  # recorded by unscale_
            found_inf = sum(v.to(grad_norm.device) for v in found.values()) if found else grad_norm.new_zeros(())
            scaler.step(self.optimizer)
            scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return StepInfo(grad_norm=grad_norm, found_inf=found_inf)

    def _clip_or_measure(self) -> torch.Tensor:
        grads = [p.grad for p in self.params if p.grad is not None]
        if not grads:
            return torch.zeros((), device=self.params[0].device)
        if self.max_grad_norm is not None:
            return torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        get_total_norm = getattr(torch.nn.utils, "get_total_norm", None)
        if get_total_norm is not None:
            return get_total_norm(grads)
        return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))

    def state_dict(self) -> dict[str, Any]:
        """Precision settings and the GradScaler's state (plain values)."""
        return {
            "precision": self.precision,
            "max_grad_norm": self.max_grad_norm,
            "scaler": None if self.scaler is None else self.scaler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the GradScaler's state saved by :meth:`state_dict`.

        Raises:
            ValueError: the saved precision differs from this step's precision.
        """
        if state["precision"] != self.precision:
            raise ValueError(f"saved precision {state['precision']!r} differs from this AMPStep's {self.precision!r}")
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])

    def __repr__(self) -> str:
        return f"AMPStep(precision={self.precision!r}, max_grad_norm={self.max_grad_norm!r}, device_type={self.device_type!r})"
