"""The seed's two training pipelines as plain data.

Every number in the seed's summary tables lives here once. ``original()`` is the TF1
pointer-generator pipeline (See et al.), ``proposed()`` the PyTorch pointer_v45 pipeline.
The example and the Trainer read these; ``tests/test_recipes.py`` checks each number.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["Recipe", "original", "proposed", "by_name", "NAMES"]

NAMES = ("original", "proposed")


@dataclass(frozen=True)
class Recipe:
    """All settings of one training pipeline.

    Attributes:
        name: ``"original"`` or ``"proposed"``.
        framework: What the seed ran it on.
        optimizer: ``build_optimizer`` name (``"adagrad"`` or ``"adamw"``).
        lr: Base learning rate.
        lr_range: Range of learning rates the seed quotes.
        betas, eps, weight_decay: AdamW settings (None for Adagrad).
        initial_accumulator_value: Adagrad's initial accumulator (None for AdamW).
        schedule: ``"fixed"`` or ``"warmup_cosine"``.
        warmup_epochs, schedule_epochs, min_lr: The warmup + cosine schedule.
        grad_clip: Global gradient-norm clip.
        loss: ``"masked_nll"`` or ``"label_smoothed_nll"``.
        label_smoothing, ignore_index: The proposed loss's settings.
        coverage_optional, cov_loss_wt: The original's optional coverage loss and its weight.
        selection: ``"running_average"`` (eval process) or ``"early_stopping"``.
        running_avg_decay, running_avg_clip: The running-average rule.
        patience, min_epochs: The early-stopping rule.
        precision: ``"fp32"`` or ``"auto"`` (AMP).
        amp: Whether the pipeline uses mixed precision.
        checkpoint_every_seconds, checkpoint_keep: Time-based checkpoints (original).
        best_name: File name of the best model.
        non_finite_loss: What a non-finite loss does (``"raise"``).
        loop: ``"infinite"`` (user stops it) or ``"epochs"``.
        epochs, batch_size, seed: The proposed GeoLife training config.
    """

    name: str
    framework: str
    optimizer: str
    lr: float
    lr_range: tuple[float, float]
    betas: tuple[float, float] | None
    eps: float | None
    weight_decay: float | None
    initial_accumulator_value: float | None
    schedule: str
    warmup_epochs: int | None
    schedule_epochs: int | None
    min_lr: float | None
    grad_clip: float
    loss: str
    label_smoothing: float
    ignore_index: int | None
    coverage_optional: bool
    cov_loss_wt: float | None
    selection: str
    running_avg_decay: float | None
    running_avg_clip: float | None
    patience: int | None
    min_epochs: int | None
    precision: str
    amp: bool
    checkpoint_every_seconds: float | None
    checkpoint_keep: int
    best_name: str
    non_finite_loss: str
    loop: str
    epochs: int
    batch_size: int
    seed: int

    def optimizer_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``build_optimizer(model, self.optimizer, **kwargs)``."""
        if self.optimizer == "adagrad":
            return {"lr": self.lr, "initial_accumulator_value": self.initial_accumulator_value}
        return {"lr": self.lr, "betas": self.betas, "eps": self.eps, "weight_decay": self.weight_decay}

    def to_dict(self) -> dict[str, Any]:
        """All fields as a plain dict (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def replace(self, **changes: Any) -> Recipe:
        """A copy with some fields changed.

        Raises:
            ValueError: a field name that does not exist.
        """
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown recipe field(s): {sorted(unknown)}")
        return dataclasses.replace(self, **changes)


def original() -> Recipe:
    """The TF1 pointer-generator pipeline (seed: "Original Training Pipeline")."""
    return Recipe(
        name="original",
        framework="TensorFlow 1.x",
        optimizer="adagrad",
        lr=0.15,
        lr_range=(0.15, 0.15),
        betas=None,
        eps=None,
        weight_decay=None,
        initial_accumulator_value=0.1,
        schedule="fixed",
        warmup_epochs=None,
        schedule_epochs=None,
        min_lr=None,
        grad_clip=2.0,
        loss="masked_nll",
        label_smoothing=0.0,
        ignore_index=None,
        coverage_optional=True,
        cov_loss_wt=1.0,
        selection="running_average",
        running_avg_decay=0.99,
        running_avg_clip=12.0,
        patience=None,
        min_epochs=None,
        precision="fp32",
        amp=False,
        checkpoint_every_seconds=60.0,
        checkpoint_keep=3,
        best_name="bestmodel.pt",
        non_finite_loss="raise",
        loop="infinite",
        epochs=50,
        batch_size=128,
        seed=42,
    )


def proposed() -> Recipe:
    """The PyTorch pointer_v45 pipeline (seed: "Proposed Training Pipeline")."""
    return Recipe(
        name="proposed",
        framework="PyTorch",
        optimizer="adamw",
        lr=6.5e-4,
        lr_range=(3e-4, 6.5e-4),
        betas=(0.9, 0.98),
        eps=1e-9,
        weight_decay=0.015,
        initial_accumulator_value=None,
        schedule="warmup_cosine",
        warmup_epochs=5,
        schedule_epochs=50,
        min_lr=1e-6,
        grad_clip=0.8,
        loss="label_smoothed_nll",
        label_smoothing=0.03,
        ignore_index=0,
        coverage_optional=False,
        cov_loss_wt=None,
        selection="early_stopping",
        running_avg_decay=None,
        running_avg_clip=None,
        patience=5,
        min_epochs=8,
        precision="auto",
        amp=True,
        checkpoint_every_seconds=None,
        checkpoint_keep=3,
        best_name="best.pt",
        non_finite_loss="raise",
        loop="epochs",
        epochs=50,
        batch_size=128,
        seed=42,
    )


def by_name(name: str) -> Recipe:
    """Return ``original()`` or ``proposed()`` by name.

    Raises:
        ValueError: unknown name.
    """
    if name == "original":
        return original()
    if name == "proposed":
        return proposed()
    raise ValueError(f"unknown recipe {name!r}; choose one of {NAMES}")
