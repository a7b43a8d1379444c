"""One optimizer step under mixed precision, in one call (timm's ``NativeScaler`` idea).

``AMPStep`` does what the seed's ``train_epoch`` spells out in ten lines: backward (scaled
for fp16), ``unscale_``, ``clip_grad_norm_``, the optimizer step through the GradScaler,
``update`` and ``zero_grad(set_to_none=True)``. It returns the pre-clip gradient norm as a
tensor (no host sync forced) and whether the scaler skipped the update.

With ``accumulation_steps=k`` each call runs backward on ``loss / k`` and the optimizer
steps on every k-th call. ``backward`` + ``optimizer_step`` split the call in two for loops
that run their own backward (Lightning's ``manual_backward``); see docs/amp.md.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from trainkit._graph import is_fused
from trainkit._state import require_keys
from trainkit._validate import check_choice, check_float, check_int
from trainkit.capturable_adagrad import adagrad_step

__all__ = ["PRECISIONS", "AMPStep", "StepInfo", "resolve_precision"]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_AUTOCAST_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_DEVICE_TYPES = ("cpu", "cuda")


@dataclass
class StepInfo:
    """What one :meth:`AMPStep.step` did.

    Attributes:
        grad_norm: Total gradient norm before clipping (a 0-d tensor on the parameters'
            device; reading it as a float forces a host sync, so do that sparingly). A
            zero tensor when the call only accumulated gradients (``stepped`` False).
        found_inf: 0-d tensor, nonzero when the GradScaler found inf/NaN gradients and
            skipped the update; None when no scaler is in use (fp32/bf16) or no optimizer
            step was attempted.
        stepped: Whether this call ran the optimizer step (False on the calls that only
            accumulate gradients, with ``accumulation_steps > 1``).
    """

    grad_norm: torch.Tensor
    found_inf: torch.Tensor | None = None
    stepped: bool = True

    @property
    def skipped(self) -> bool:
        """Whether the scaler skipped the optimizer update (False without a scaler or a step)."""
        return bool(self.found_inf is not None and self.found_inf.item() != 0)


_BACKWARD_TWICE = (
    "AMPStep runs the backward pass itself, and this loss's graph was already used by a "
    "backward (did you call loss.backward() before amp.step(loss)?). Either drop your own "
    "loss.backward() and call amp.step(loss), or run backward yourself through "
    "amp.backward(loss) and then call amp.optimizer_step() (docs/amp.md)"
)


def resolve_precision(precision: str, device_type: str) -> str:
    """``"auto"`` -> ``"bf16"`` on a CUDA device that supports it, else ``"fp32"``; others as given."""
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
        accumulation_steps: Optimizer step every this many calls to :meth:`step`; each
            call runs backward on ``loss / accumulation_steps`` (default 1: every call).

    Raises:
        ValueError: unknown ``precision``, ``max_grad_norm <= 0``, an optimizer without
            parameters, ``accumulation_steps < 1``, fp16/bf16 on ``device_type="cuda"``
            where CUDA is not available, or fp16 where no GradScaler works for the device.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        precision: str = "auto",
        max_grad_norm: float | None = None,
        device_type: str | None = None,
        *,
        accumulation_steps: int = 1,
    ) -> None:
        check_choice("precision", precision, PRECISIONS)
        if max_grad_norm is not None:
            check_float("max_grad_norm", max_grad_norm, above=0)
        check_int("accumulation_steps", accumulation_steps, minimum=1)
        if device_type is not None:
            check_choice("device_type", device_type, _DEVICE_TYPES)
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        if not self.params:
            raise ValueError("optimizer has no parameters")
        self.optimizer = optimizer
        self.device_type = device_type or self.params[0].device.type
        self.precision = resolve_precision(precision, self.device_type)
        if (
            self.precision != "fp32"
            and self.device_type == "cuda"
            and not torch.cuda.is_available()
        ):
            raise ValueError(
                f"precision={self.precision!r} with device_type='cuda' needs CUDA, which is not available "
                "here; use device_type='cpu' or precision='fp32'"
            )
        self.max_grad_norm = None if max_grad_norm is None else float(max_grad_norm)
        self._foreach = True if self.device_type == "cuda" else None  # foreach kernels: CUDA
        self.accumulation_steps = accumulation_steps
        self.micro_step = 0  # backward passes since the last optimizer step
        self.dtype = _AUTOCAST_DTYPES[self.precision]
        self.scaler: torch.amp.GradScaler | None = None
        if self.precision == "fp16":
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # a disabled scaler is refused just below
                    self.scaler = torch.amp.GradScaler(self.device_type)
            except Exception as exc:  # pragma: no cover - depends on the torch build
                raise ValueError(
                    f"precision='fp16' needs a GradScaler for device {self.device_type!r}: {exc}"
                ) from exc
            if not self.scaler.is_enabled():
                raise ValueError(
                    f"precision='fp16' needs a working GradScaler for device {self.device_type!r}"
                )

    @contextlib.contextmanager
    def autocast(self, cache_enabled: bool = True) -> Iterator[None]:
        """Autocast to the step's precision (a no-op for fp32).

        Args:
            cache_enabled: torch's autocast weight-cast cache; a CUDA graph capture needs
                it off (the cache is unsafe under capture).
        """
        with torch.autocast(
            self.device_type,
            dtype=self.dtype,
            enabled=self.precision != "fp32",
            cache_enabled=cache_enabled,
        ):
            yield

    def step(self, loss: torch.Tensor) -> StepInfo:
        """Backpropagate ``loss``; update the parameters on every ``accumulation_steps``-th call.

        Args:
            loss: A scalar loss computed under :meth:`autocast` (the mean over this
                micro-batch; it is divided by ``accumulation_steps`` here).

        Returns:
            A :class:`StepInfo`: the pre-clip gradient norm, the skip flag and whether the
            optimizer stepped (``stepped`` False on the calls that only accumulate).

        Raises:
            ValueError: ``loss`` is not a scalar tensor.
            RuntimeError: the loss's graph was already used by a backward (explained).
        """
        self.backward(loss)
        if self.micro_step < self.accumulation_steps:
            return StepInfo(grad_norm=torch.zeros((), device=self.params[0].device), stepped=False)
        return self.optimizer_step()

    def backward(self, loss: torch.Tensor) -> None:
        """Run backward on ``loss / accumulation_steps`` (scaled for fp16), without stepping.

        The manual half of :meth:`step`, for loops that decide themselves when to step
        (Lightning's ``manual_backward``): call it once per micro-batch, then
        :meth:`optimizer_step`.

        Raises:
            ValueError: ``loss`` is not a scalar tensor.
            RuntimeError: the loss's graph was already used by a backward (explained).
        """
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            raise ValueError(
                f"loss must be a scalar tensor, got {type(loss).__name__} {getattr(loss, 'shape', '')}"
            )
        self.scaled_backward(loss)
        self.micro_step += 1

    def scaled_backward(self, loss: torch.Tensor) -> None:
        """Backward on ``loss / accumulation_steps`` (scaled for fp16); no counter, no check.

        The device work of :meth:`backward`, which a CUDA graph can record
        (:class:`~trainkit.train_step.TrainStep` keeps the accumulation position itself).

        Raises:
            RuntimeError: the loss's graph was already used by a backward (explained).
        """
        if self.accumulation_steps > 1:
            loss = loss / self.accumulation_steps
        if self.scaler is not None:
            loss = self.scaler.scale(loss)
        try:
            loss.backward()
        except RuntimeError as exc:
            if "backward through the graph a second time" in str(exc):
                raise RuntimeError(_BACKWARD_TWICE) from exc
            raise

    def optimizer_step(self, skip: torch.Tensor | None = None) -> StepInfo:
        """Unscale (fp16), clip, step the optimizer, update the scaler and zero the gradients.

        The second half of :meth:`step`; resets the accumulation position. With fp16 the
        gradients must come from :meth:`backward` (they are scaled).

        Args:
            skip: See :meth:`update`.

        Returns:
            A :class:`StepInfo` with ``stepped`` True.
        """
        info = self.update(skip)
        self.optimizer.zero_grad(set_to_none=True)
        self.micro_step = 0
        return info

    def update(self, skip: torch.Tensor | None = None) -> StepInfo:
        """Unscale (fp16), clip, step the optimizer and update the scaler; gradients stay.

        The device work of :meth:`optimizer_step`. It forces no host sync where the
        optimizer is fused (the skip is the kernel's ``found_inf``), an Adagrad
        (:func:`~trainkit.capturable_adagrad.adagrad_step` once its LR is a tensor, or
        whenever ``skip`` is given), or ``skip`` is None without fp16, so a CUDA graph can
        record it there.

        Args:
            skip: A 0-d bool tensor: where True (or where the gradient norm is not
                finite) the optimizer does not update: a non-finite step. fp16 ignores it: the GradScaler skips every step whose
                gradients are not finite. Other optimizers read it on the host (one sync).

        Returns:
            A :class:`StepInfo` with ``stepped`` True.
        """
        optimizer, scaler = self.optimizer, self.scaler
        if scaler is not None:
            scaler.unscale_(optimizer)
        grad_norm = self._clip_or_measure()
        if skip is not None and scaler is None:  # a non-finite gradient norm is skipped too
            skip = skip | ~torch.isfinite(grad_norm)
        found_inf: torch.Tensor | None = None
        if scaler is not None:
            found = scaler._found_inf_per_device(optimizer)  # recorded by unscale_
            if found:
                found_inf = sum(v.to(grad_norm.device) for v in found.values())
            else:
                found_inf = grad_norm.new_zeros(())
            scaler.step(optimizer)  # fused: found_inf handed to the kernel, no host sync
            scaler.update()
        elif is_fused(optimizer):
            if skip is None:
                optimizer.step()
            else:  # the fused kernel skips the update where found_inf is 1
                optimizer.found_inf = skip.float()  # type: ignore[attr-defined]
                try:
                    optimizer.step()
                finally:
                    del optimizer.found_inf  # type: ignore[attr-defined]
        elif isinstance(optimizer, torch.optim.Adagrad) and (
            skip is not None or isinstance(optimizer.param_groups[0]["lr"], torch.Tensor)
        ):
            # torch's foreach Adagrad reads its step counter on the host
            adagrad_step(optimizer, skip)
        elif skip is None or not bool(skip):  # the host reads skip: one sync
            optimizer.step()
        return StepInfo(grad_norm=grad_norm, found_inf=found_inf)

    def _clip_or_measure(self) -> torch.Tensor:
        grads = [p.grad for p in self.params if p.grad is not None]
        if not grads:
            return torch.zeros((), device=self.params[0].device)
        if self.max_grad_norm is not None:
            clipped: torch.Tensor = torch.nn.utils.clip_grad_norm_(
                self.params, self.max_grad_norm, foreach=self._foreach
            )
            return clipped
        get_total_norm = getattr(torch.nn.utils, "get_total_norm", None)
        if get_total_norm is not None:
            total: torch.Tensor = get_total_norm(grads, foreach=self._foreach)
            return total
        norm: torch.Tensor = torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])
        )
        return norm

    def state_dict(self) -> dict[str, Any]:
        """Precision settings, the accumulation position and the GradScaler's state (plain values).

        Accumulated gradients are not part of it: save at an accumulation boundary
        (``info.stepped``) for an exact resume.
        """
        return {
            "precision": self.precision,
            "max_grad_norm": self.max_grad_norm,
            "scaler": None if self.scaler is None else self.scaler.state_dict(),
            "accumulation_steps": self.accumulation_steps,
            "micro_step": self.micro_step,
        }

    def check_state_dict(self, state: Any) -> None:
        """Raise unless ``state`` fits this step; changes nothing (a resume checks first).

        Raises:
            ValueError: a key is missing, or the saved precision or ``accumulation_steps``
                differs from this step's, or the position is out of range.
        """
        require_keys(state, ("precision", "max_grad_norm", "scaler"), "AMPStep")
        if state["precision"] != self.precision:
            raise ValueError(
                f"saved precision {state['precision']!r} differs from this AMPStep's {self.precision!r}"
            )
        saved_k = state.get("accumulation_steps", 1)
        if saved_k != self.accumulation_steps:
            raise ValueError(
                f"saved accumulation_steps={saved_k!r} differs from this AMPStep's {self.accumulation_steps!r}"
            )
        # k: after k backward() calls and before optimizer_step() (the manual loop)
        check_int("micro_step", state.get("micro_step", 0), minimum=0, maximum=saved_k)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the GradScaler's state and the accumulation position saved by :meth:`state_dict`.

        Raises:
            ValueError: as :meth:`check_state_dict`, before anything changes.
        """
        self.check_state_dict(state)
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.micro_step = int(state.get("micro_step", 0))

    def __repr__(self) -> str:
        return (
            f"AMPStep(precision={self.precision!r}, max_grad_norm={self.max_grad_norm!r}, "
            f"device_type={self.device_type!r}, accumulation_steps={self.accumulation_steps!r})"
        )
